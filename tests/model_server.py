"""A scripted model server for the real agent CLIs (Claude Code, Codex): a small honest program.

It speaks enough of the Anthropic Messages API (``POST /v1/messages``) and the OpenAI Responses API
(``POST /v1/responses``), streaming (SSE), to play a scripted turn sequence in which the model uses
the CLI's own tools (write a file, edit it, run a command) and then finishes. It listens on TCP
(``127.0.0.1``) and, optionally, on a unix socket: a CLI in a network namespace of its own reaches it
through the runner's egress bridge (``ec2_runner/egress.py bridge``), which forwards a loopback port
inside the namespace to that socket.

Which script plays is said by the prompt: the task's details carry ``[script:NAME]``. The server is
stateless per conversation (the request carries the whole conversation: the step is the number of
model turns since the last prompt), except for the counts a script keys on (a 429 for the first
requests of a task). Every request is recorded (``requests``) so a test can see what a CLI sent,
e.g. that a resumed session sent the earlier turns.

Scripts (``SCRIPTS``): ``clean_edit``, ``no_changes``, ``unauthorized`` (401), ``rate_limited``
(429 for a task's first requests, then ``clean_edit``), ``stream_cut`` (the stream stops mid-turn),
``turn_limit`` (the model never finishes), ``needs_approval`` (a tool the CLI would ask a person
about), ``denied_tool`` (a tool the permission mode denies), ``refine`` (answers what it remembers).
"""

from __future__ import annotations

import argparse
import json
import re
import socketserver
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MARKER = re.compile(r"\[script:([a-z_]+)\]")
CLEAN_FILE = "hello.txt"
CLEAN_CONTENT = "hello from the scripted model\n"
EDITED_CONTENT = "hello from the scripted model, edited\n"
# how many requests of a task the rate_limited script refuses with 429 before it plays clean_edit
RATE_LIMITED_REQUESTS = 1


@dataclass(frozen=True)
class Step:
    """One model turn: a tool call (``tool``: write, edit, run, fetch), a final text, or a fault."""

    tool: str | None = None
    args: dict[str, str] = field(default_factory=dict)
    text: str = ""
    status: int = 200  # an HTTP error instead of a turn
    cut: bool = False  # the stream stops in the middle of this turn


WRITE = Step("write", {"path": CLEAN_FILE, "content": CLEAN_CONTENT})
EDIT = Step("edit", {"path": CLEAN_FILE, "old": "model\n", "new": "model, edited\n"})
RUN = Step("run", {"command": f"cat {CLEAN_FILE}"})
DONE = Step(text="Done: hello.txt is written and edited.")
CLEAN = [WRITE, EDIT, RUN, DONE]

SCRIPTS: dict[str, list[Step]] = {
    "clean_edit": CLEAN,
    "no_changes": [Step(text="I looked: nothing needs to change.")],
    "unauthorized": [Step(status=401)],
    "rate_limited": CLEAN,  # after the 429s (see ModelServer.rate_limited)
    "stream_cut": [WRITE, Step(text="I am halfway through my answ", cut=True)],
    # a tool call every turn, never a final answer: only the CLI's turn limit ends it
    "turn_limit": [WRITE, *[Step("run", {"command": f"echo turn {i}"}) for i in range(1, 60)]],
    # a tool no headless permission mode lets run without a person (a web fetch)
    "needs_approval": [WRITE, Step("fetch", {"url": "http://127.0.0.1:9/approve-me"}), DONE],
    # a command the adapter's permission mode denies outright
    "denied_tool": [WRITE, Step("run", {"command": "rm -rf /tmp/aipm-denied"}), DONE],
    "refine": [Step(text="I remember: {earlier}")],
}


@dataclass
class Seen:
    """One request as the server saw it."""

    api: str  # "anthropic" | "openai"
    path: str
    script: str | None
    step: int
    prompt: str
    conversation: list[str]  # the texts of every user message, oldest first
    headers: dict[str, str]


class ModelServer:
    """The scripted server: ``start()`` listens on ``127.0.0.1:port`` (0: any free port) and on
    ``unix_socket`` when given; ``close()`` stops it."""

    def __init__(self, port: int = 0, unix_socket: Path | None = None) -> None:
        self.requests: list[Seen] = []
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._servers: list[socketserver.BaseServer] = []
        self._port = port
        self.unix_socket = unix_socket

    @property
    def port(self) -> int:
        return int(self._servers[0].server_address[1])  # type: ignore[index]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ModelServer:
        handler = _handler_for(self)
        tcp = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        tcp.daemon_threads = True
        self._servers.append(tcp)
        if self.unix_socket is not None:
            self.unix_socket.unlink(missing_ok=True)
            unix = _UnixHTTPServer(str(self.unix_socket), handler)
            self._servers.append(unix)
        for server in self._servers:
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        if self.unix_socket is not None:
            self.unix_socket.unlink(missing_ok=True)

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def seen(self, script: str | None = None, task: str | None = None) -> list[Seen]:
        """The recorded requests of ``script`` (and of the task whose prompt names ``task``)."""
        with self._lock:
            return [
                r
                for r in self.requests
                if (script is None or r.script == script)
                and (task is None or any(task in text for text in r.conversation))
            ]

    # -- what to answer

    def answer(self, api: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> Step:
        conversation, step = (_anthropic_turns if api == "anthropic" else _openai_turns)(body)
        prompt = conversation[-1] if conversation else ""
        found = MARKER.search(prompt) or next(
            (m for m in map(MARKER.search, conversation) if m is not None), None
        )
        script = found.group(1) if found else None
        seen = Seen(api, path, script, step, prompt, conversation, headers)
        with self._lock:
            self.requests.append(seen)
            count = self._counts[prompt] = self._counts.get(prompt, 0) + 1
        if script is None or script not in SCRIPTS:
            return Step(text="No [script:NAME] in the prompt: nothing to do.")
        if script == "rate_limited" and count <= RATE_LIMITED_REQUESTS:
            return Step(status=429)
        steps = SCRIPTS[script]
        chosen = steps[min(step, len(steps) - 1)]
        if script == "refine":
            earlier = " | ".join(t[:80] for t in conversation[:-1]) or "nothing"
            return Step(text=chosen.text.format(earlier=earlier))
        return chosen


# -- reading a conversation


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    out = []
    for part in content if isinstance(content, list) else []:
        if isinstance(part, dict) and part.get("type") in ("text", "input_text") and part.get("text"):
            out.append(str(part["text"]))
    return out


def _anthropic_turns(body: dict[str, Any]) -> tuple[list[str], int]:
    """(user prompts, model turns since the last prompt). A tool result is a user message without
    text; Claude Code also puts a ``role: system`` entry and reminders in the list."""
    prompts: list[str] = []
    since = 0
    for message in body.get("messages", []):
        role = message.get("role")
        if role == "assistant":
            since += 1
        elif role == "user":
            texts = [t for t in _texts(message.get("content")) if not t.startswith("<system-reminder>")]
            if texts:
                prompts.append("\n".join(texts))
                since = 0
    return prompts, since


def _openai_turns(body: dict[str, Any]) -> tuple[list[str], int]:
    prompts: list[str] = []
    since = 0
    items = body.get("input", [])
    for item in items if isinstance(items, list) else []:
        kind = item.get("type", "message")
        if kind in ("function_call", "custom_tool_call") or (
            kind == "message" and item.get("role") == "assistant"
        ):
            since += 1
        elif kind == "message" and item.get("role") == "user":
            texts = [t for t in _texts(item.get("content")) if not t.lstrip().startswith("<")]
            if texts:
                prompts.append("\n".join(texts))
                since = 0
    return prompts, since


# -- speaking each API


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _anthropic_tool(step: Step, cwd: str) -> tuple[str, dict[str, Any]]:
    def absolute(path: str) -> str:
        return path if path.startswith("/") else f"{cwd.rstrip('/')}/{path}"

    if step.tool == "write":
        return "Write", {"file_path": absolute(step.args["path"]), "content": step.args["content"]}
    if step.tool == "edit":
        return "Edit", {
            "file_path": absolute(step.args["path"]),
            "old_string": step.args["old"],
            "new_string": step.args["new"],
        }
    if step.tool == "fetch":
        return "WebFetch", {"url": step.args["url"], "prompt": "what does it say?"}
    return "Bash", {"command": step.args["command"], "description": "run a command"}


def _anthropic_events(step: Step, body: dict[str, Any]) -> Iterator[bytes]:
    msg_id = f"msg_{uuid.uuid4().hex[:20]}"
    model = body.get("model", "claude-scripted")
    usage = {"input_tokens": 10, "output_tokens": 1}
    yield _sse(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage,
            },
        },
    )
    yield _sse("ping", {"type": "ping"})
    if step.tool:
        name, args = _anthropic_tool(step, _claude_cwd(body))
        block = {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:20]}", "name": name, "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(args)}
        stop_reason = "tool_use"
    else:
        block = {"type": "text", "text": ""}
        delta = {"type": "text_delta", "text": step.text}
        stop_reason = "end_turn"
    yield _sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
    yield _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
    if step.cut:
        return
    yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
    yield _sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": 5},
        },
    )
    yield _sse("message_stop", {"type": "message_stop"})


def _claude_cwd(body: dict[str, Any]) -> str:
    """The working directory Claude Code states in its system prompt (its Write tool wants absolute
    paths)."""
    system = body.get("system")
    texts = _texts(system) if not isinstance(system, str) else [system]
    for message in body.get("messages", []):
        texts += _texts(message.get("content"))
    for text in texts:
        m = re.search(r"(?:Primary working directory|Working directory):\s*(\S+)", text)
        if m:
            return m.group(1)
    return "."


def _openai_item(step: Step) -> dict[str, Any]:
    call_id = f"call_{uuid.uuid4().hex[:20]}"
    if step.tool in ("write", "edit"):
        path = step.args["path"]
        if step.tool == "write":
            body = "".join(f"+{line}\n" for line in step.args["content"].splitlines())
            patch = f"*** Begin Patch\n*** Add File: {path}\n{body}*** End Patch\n"
        else:
            old, new = step.args["old"].rstrip("\n"), step.args["new"].rstrip("\n")
            old_line = CLEAN_CONTENT.rstrip("\n")
            new_line = old_line.replace(old, new)
            patch = f"*** Begin Patch\n*** Update File: {path}\n@@\n-{old_line}\n+{new_line}\n*** End Patch\n"
        return {
            "type": "custom_tool_call",
            "id": f"ctc_{call_id}",
            "call_id": call_id,
            "name": "apply_patch",
            "input": patch,
            "status": "completed",
        }
    if step.tool == "fetch":
        command = f"curl -s {step.args['url']}"
        args = {"cmd": command, "sandbox_permissions": "require_escalated", "justification": "fetch the page"}
        return {
            "type": "function_call",
            "id": f"fc_{call_id}",
            "call_id": call_id,
            "name": "exec_command",
            "arguments": json.dumps(args),
            "status": "completed",
        }
    if step.tool == "run":
        return {
            "type": "function_call",
            "id": f"fc_{call_id}",
            "call_id": call_id,
            "name": "exec_command",
            "arguments": json.dumps({"cmd": step.args["command"]}),
            "status": "completed",
        }
    return {
        "type": "message",
        "id": f"msg_{call_id}",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": step.text, "annotations": []}],
    }


def _openai_events(step: Step, body: dict[str, Any]) -> Iterator[bytes]:
    resp_id = f"resp_{uuid.uuid4().hex[:20]}"
    yield _sse("response.created", {"type": "response.created", "response": {"id": resp_id}})
    item = _openai_item(step)
    yield _sse(
        "response.output_item.added",
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "status": "in_progress"}},
    )
    if item["type"] == "message":
        yield _sse(
            "response.output_text.delta",
            {
                "type": "response.output_text.delta",
                "output_index": 0,
                "content_index": 0,
                "item_id": item["id"],
                "delta": step.text,
            },
        )
    if step.cut:
        return
    yield _sse(
        "response.output_item.done", {"type": "response.output_item.done", "output_index": 0, "item": item}
    )
    usage = {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 15,
    }
    yield _sse(
        "response.completed", {"type": "response.completed", "response": {"id": resp_id, "usage": usage}}
    )


_ERRORS = {
    401: ("authentication_error", "invalid x-api-key"),
    429: ("rate_limit_error", "rate limited: slow down"),
}


def _handler_for(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:  # Claude Code's connectivity check
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            self._json(404, {"error": {"type": "not_found_error", "message": "not here"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self._json(400, {"error": {"type": "invalid_request_error", "message": "not JSON"}})
                return
            path = self.path.split("?", 1)[0]
            if path.endswith("/messages/count_tokens"):
                self._json(200, {"input_tokens": 10})
                return
            if path.endswith("/messages"):
                api = "anthropic"
            elif path.endswith("/responses"):
                api = "openai"
            else:
                self._json(404, {"error": {"type": "not_found_error", "message": f"no {path}"}})
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            step = server.answer(api, path, body, headers)
            if step.status != 200:
                kind, message = _ERRORS.get(step.status, ("api_error", "scripted failure"))
                error = {"type": "error", "error": {"type": kind, "message": message}}
                if api == "openai":
                    error = {"error": {"type": kind, "message": message, "code": kind}}
                self._json(step.status, error, {"retry-after": "0"} if step.status == 429 else {})
                return
            if not body.get("stream"):
                if step.cut:  # the connection drops before any answer
                    self.close_connection = True
                    return
                self._json(200, _non_streaming(api, step, body))
                return
            events = _anthropic_events(step, body) if api == "anthropic" else _openai_events(step, body)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                for chunk in events:
                    self.wfile.write(chunk)
                    self.wfile.flush()
            except OSError:
                pass

        def _json(self, status: int, payload: dict[str, Any], extra: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _non_streaming(api: str, step: Step, body: dict[str, Any]) -> dict[str, Any]:
    text = step.text or "ok"
    if api == "anthropic":
        return {
            "id": f"msg_{uuid.uuid4().hex[:20]}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "claude-scripted"),
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 5},
        }
    return {
        "id": f"resp_{uuid.uuid4().hex[:20]}",
        "object": "response",
        "status": "completed",
        "output": [_openai_item(Step(text=text))],
    }


class _UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[Any, Any]:
        request, _ = super().get_request()
        return request, ("127.0.0.1", 0)  # BaseHTTPRequestHandler wants a (host, port) address


def main(argv: list[str] | None = None) -> int:
    """Run the server by itself: ``python -m tests.model_server [--port P] [--unix PATH]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--unix", type=Path)
    args = parser.parse_args(argv)
    server = ModelServer(args.port, args.unix).start()
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
