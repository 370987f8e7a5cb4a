"""Terminal echo and output throughput through the local API Gateway stand-in.

Browser -> gateway -> $default Lambda (relay) -> the runner's WebSocket -> pty -> runner -> gateway
-> browser, every hop real: the relay handlers in-process as the gateway calls them, the connections
table in moto over HTTP, a real runner process (its terminal service runs bash in a pty over a git
worktree of the local stack's remote).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from websockets.asyncio.client import connect

from local.deploy import deploy
from local.gateway import LocalGateway
from shared import frames as fr
from shared import tokens

SHELL = ["/bin/bash", "--norc", "--noprofile"]


class _Browser:
    def __init__(self, ws: object) -> None:
        self.ws = ws
        self.reasm = fr.SeqReassembler()
        self.text = ""
        self.session_id: str | None = None

    async def pump_until(self, done: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done(self):  # type: ignore[operator]
            try:
                raw = await asyncio.wait_for(self.ws.recv(), max(deadline - time.monotonic(), 0.001))  # type: ignore[attr-defined]
            except TimeoutError:
                raise TimeoutError(
                    f"no progress after {timeout} s: next seq {self.reasm.next_seq}, "
                    f"held back {sorted(self.reasm._pending)[:5]}, text tail {self.text[-80:]!r}"
                ) from None
            frame = fr.decode(raw, role="runner")
            if isinstance(frame, fr.OpenedFrame):
                self.session_id = frame.session_id
                self.text += "".join(self.reasm.start(frame.next_seq))
            elif isinstance(frame, fr.OutputFrame):
                self.text += "".join(self.reasm.push(frame.seq, frame.data))

    async def type(self, data: str) -> None:
        await self.ws.send(fr.encode(fr.InputFrame(session_id=self.session_id, data=data)))  # type: ignore[attr-defined]


def measure(
    endpoint: str,
    workdir: Path,
    start_runner: Callable[[dict[str, str]], subprocess.Popen],
    echo_samples: int = 30,
    burst_bytes: int = 5_000_000,
) -> dict:
    """Echo latencies (s) of single keystrokes and the throughput (bytes/s) of a burst of output,
    with the runner in its own process (``start_runner(env)``), as on its own machine in AWS."""
    res = deploy(endpoint, "us-east-1", stack_name="aipm-bench-term")
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "CONNECTIONS_TABLE": str(res.connections_table),
        "TOKEN_SECRET": "bench-token-secret-0123456789abcdef",
        "RUNNER_SECRET": "bench-runner-secret-0123456789abcdef",
        # the keystrokes below come faster than a person types (one every ~12 ms): the relay's
        # per-connection input throttle (50 frames/s by default) would refuse some of them
        "WS_INPUT_RATE": "1000",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    gw = LocalGateway(env, port=0).start()
    runner = start_runner(
        {
            "WS_URL": gw.ws_url,
            "RUNNER_SECRET": env["RUNNER_SECRET"],
            "AGENT_INTERACTIVE_COMMAND": " ".join(SHELL),
            "TERMINAL_GIT_STATUS": "false",
            "TERMINAL_RESUME": "never",  # a shell has no conversation to resume
            "PS1": "$ ",  # the session's shell inherits it through the agent's environment
        }
    )
    try:
        deadline = time.monotonic() + 30
        while not gw.max_message_by_role.get("runner"):  # the runner's hello has reached the relay
            if time.monotonic() > deadline or runner.poll() is not None:
                raise RuntimeError("the runner never connected to the gateway")
            time.sleep(0.02)
        token = tokens.mint(env["TOKEN_SECRET"], sub="bench", branch="bench/terminal", ttl=300)
        got = asyncio.run(_scenario(gw.ws_url, token, echo_samples, burst_bytes))
        page_token = tokens.mint(env["TOKEN_SECRET"], sub="bench", branch="bench/page", ttl=300)
        got["page"] = _page_burst(gw.page_url, page_token, burst_bytes)
        return got
    finally:
        runner.terminate()
        runner.wait(timeout=30)
        gw.stop()


def _page_burst(page_url: str, token: str, burst: int) -> dict:
    """The same burst rendered by the terminal page (xterm.js) in headless Chromium: from the Enter
    key (the command already echoed) to the first animation frame whose xterm buffer holds the end
    marker. ``{"error": why}`` when there is no browser to run it in."""
    from local.browser import chromium_path, launch

    if chromium_path() is None:
        return {"error": "no chromium (make browser)"}
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {"error": "no playwright (make venv)"}
    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.goto(f"{page_url}?token={token}")
            page.wait_for_function(_BUFFER_ENDS_WITH, arg="$ ", timeout=30000)
            page.locator(".xterm-helper-textarea").focus()
            # the command goes in as one paste (one input frame, as the socket-level row sends it) and
            # is echoed in full before the clock starts: the row times the burst, not the typing
            command = f"head -c {burst} /dev/zero | tr '\\0' y; echo; echo END-OF-BURST"
            page.keyboard.insert_text(command)
            page.wait_for_function(_BUFFER_ENDS_WITH, arg=command, timeout=30000)
            t0 = time.perf_counter()
            page.keyboard.press("Enter")
            page.wait_for_function(_BUFFER_HAS, arg="\nEND-OF-BURST", polling="raf", timeout=120000)
            return {"seconds": time.perf_counter() - t0}
        finally:
            browser.close()


# the last rows of the page's xterm buffer (wrapped rows joined), checked on each animation frame
_LAST_ROWS = """(() => {
  const buf = window.aipmTerminal && window.aipmTerminal.terminal.buffer.active;
  if (!buf) return "";
  let text = "";
  for (let i = Math.max(0, buf.length - 60); i < buf.length; i++) {
    const line = buf.getLine(i);
    text += (line.isWrapped ? "" : "\\n") + line.translateToString(true);
  }
  return text;
})()"""
_BUFFER_HAS = f"(needle) => {_LAST_ROWS}.includes(needle)"
_BUFFER_ENDS_WITH = f"(end) => {_LAST_ROWS}.trimEnd().endsWith(end.trim())"


async def _scenario(ws_url: str, token: str, samples: int, burst: int) -> dict:
    async with connect(f"{ws_url}?token={token}", max_size=None, ping_interval=None) as ws:
        b = _Browser(ws)
        await ws.send(fr.encode(fr.OpenFrame(branch="bench/terminal", cols=200, rows=50)))
        await b.pump_until(lambda x: x.text.endswith("$ "), 20)
        echoes = []
        for i in range(samples):
            key = "abcdefghij"[i % 10]
            seen = len(b.text)
            t0 = time.perf_counter()
            await b.type(key)
            await b.pump_until(lambda x, s=seen, k=key: k in x.text[s:], 10)
            echoes.append(time.perf_counter() - t0)
        await b.type("\x15")  # Ctrl-U: clear the typed line
        command = f"head -c {burst} /dev/zero | tr '\\0' y; echo; echo END-OF-BURST\r"
        seen = len(b.text)
        t0 = time.perf_counter()
        await b.type(command)
        await b.pump_until(lambda x, s=seen: "\nEND-OF-BURST" in x.text[s:], 120)
        elapsed = time.perf_counter() - t0
        received = b.text[seen:].count("y")
    return {"echo": echoes, "burst_seconds": elapsed, "burst_bytes": received}
