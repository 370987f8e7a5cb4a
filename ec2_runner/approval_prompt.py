"""Claude Code's permission question, asked on the run's terminal (``APPROVAL=escalate``).

``claude -p`` never asks a person: a tool its permission mode does not allow is denied (only
``permission_denials`` says so). Its hook for headless runs is ``--permission-prompt-tool``, an MCP
tool it calls for each such decision. This is that tool, as a tiny MCP server on stdio (stdlib only;
Claude Code starts it with ``--mcp-config``): it prints Kiro-style ``Allow this action? [y/n]:`` on
the controlling terminal, which is the runner's pty, reads the answer from it, and tells Claude Code
allow or deny. The runner's Claude Code rules see the question in the pty and hand it to a person
(:mod:`ec2_runner.escalation`); the answer the runner types comes back here. End of input is a no.

Run as ``python -I approval_prompt.py``; nothing here imports the runner.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

SERVER = "aipm"
TOOL = "approve"
QUESTION = "Allow this action? [y/n]:"
PROTOCOL = "2024-11-05"
DETAIL_CHARS = 300


def describe(tool: str, args: Any) -> str:
    """What the tool would do, in a line: its command, path or URL, else its arguments."""
    detail: Any = ""
    if isinstance(args, dict):
        detail = args.get("command") or args.get("file_path") or args.get("url") or args
    text = detail if isinstance(detail, str) else json.dumps(detail, ensure_ascii=False)
    text = " ".join(text.split())[:DETAIL_CHARS]
    return f"Using tool: {tool}" + (f" ({text})" if text else "")


def ask(tool: str, args: Any) -> bool:
    """The question on the terminal; True when the answer is yes. No terminal: no."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    try:
        os.write(fd, f"\n{describe(tool, args)}\n{QUESTION} ".encode())
        answer = b""
        while not answer.endswith(b"\n") and len(answer) < 256:
            chunk = os.read(fd, 256)  # the terminal's line discipline hands over a whole line
            if not chunk:
                break
            answer += chunk
    except OSError:
        return False
    finally:
        os.close(fd)
    return answer.decode(errors="replace").strip().lower() in ("y", "yes")


def decide(params: dict[str, Any]) -> dict[str, Any]:
    """A ``tools/call`` of the approval tool: Claude Code's permission decision, as its text."""
    raw = params.get("arguments")
    args: dict[str, Any] = raw if isinstance(raw, dict) else {}
    tool = str(args.get("tool_name") or "?")
    given = args.get("input") if isinstance(args.get("input"), dict) else {}
    if ask(tool, given):
        decision: dict[str, Any] = {"behavior": "allow", "updatedInput": given}
    else:
        decision = {"behavior": "deny", "message": f"a person did not allow {tool}"}
    return {"content": [{"type": "text", "text": json.dumps(decision)}]}


def answer(request: dict[str, Any]) -> dict[str, Any] | None:
    """The reply to one JSON-RPC message (None for a notification)."""
    method, ident = request.get("method"), request.get("id")
    raw = request.get("params")
    params: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if ident is None:
        return None
    if method == "initialize":
        result: dict[str, Any] = {
            "protocolVersion": str(params.get("protocolVersion") or PROTOCOL),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": SERVER, "version": "1"},
        }
    elif method == "tools/list":
        schema = {
            "type": "object",
            "properties": {
                "tool_name": {"type": "string"},
                "input": {"type": "object"},
                "tool_use_id": {"type": "string"},
            },
            "required": ["tool_name", "input"],
        }
        result = {
            "tools": [
                {"name": TOOL, "description": "Ask the person at the run's terminal", "inputSchema": schema}
            ]
        }
    elif method == "tools/call" and params.get("name") == TOOL:
        result = decide(params)
    elif method == "ping":
        result = {}
    else:
        return {"jsonrpc": "2.0", "id": ident, "error": {"code": -32601, "message": f"no method {method}"}}
    return {"jsonrpc": "2.0", "id": ident, "result": result}


def main() -> int:
    for line in sys.stdin:
        try:
            request = json.loads(line)
        except ValueError:
            continue
        reply = answer(request) if isinstance(request, dict) else None
        if reply is not None:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
