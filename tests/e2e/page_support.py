"""What the terminal page's browser tests share: a tab of the page (``PageUnderTest``), the module's
headless Chromium, and small helpers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.browser import BUFFER_TEXT_JS, launch
from shared import tokens
from tests.fixtures import unique

KIRO_PROMPT = "> "


def chromium_browser() -> Iterator[Any]:
    """One headless Chromium for a test module (a module-scoped fixture yields from this)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = launch(pw)
        try:
            yield b
        finally:
            b.close()


class PageUnderTest:
    """One tab of the terminal page, with what the tests read: the status line, xterm's buffer, and
    every WebSocket the page opened."""

    def __init__(self, browser: Any, stack: Any, tmp_path: Path, name: str) -> None:
        self.context = browser.new_context(viewport={"width": 1000, "height": 600})
        self.page = self.context.new_page()
        self.stack = stack
        self.shot = tmp_path / f"{name}.png"
        self.sockets: list[Any] = []
        self.page.on("websocket", lambda ws: self.sockets.append(ws))

    def token(
        self, branch: str, *, read_only: bool = False, ttl: int = 300, secret: str | None = None
    ) -> str:
        key = secret or self.stack.config.env["TOKEN_SECRET"]
        return tokens.mint(key, sub="page-tester", branch=branch, read_only=read_only, ttl=ttl)

    def goto(self, query: str) -> None:
        self.page.goto(f"{self.stack.config.page_url}?{query}")

    def open(self, branch: str, **kw: Any) -> None:
        self.goto(f"token={self.token(branch, **kw)}")
        self.wait_text(KIRO_PROMPT)

    @property
    def status(self) -> str:
        return self.page.inner_text("#status")

    @property
    def text(self) -> str:
        return self.page.evaluate(BUFFER_TEXT_JS)

    def js(self, expr: str) -> Any:
        return self.page.evaluate(expr)

    def wait(self, predicate: Any, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                self.page.screenshot(path=self.shot)
                raise AssertionError(f"{what} not seen; status {self.status!r}; text {self.text[-400:]!r}")
            self.idle(0.05)

    def idle(self, seconds: float) -> None:
        """Wait while Playwright delivers the page's events (a plain sleep would hold them back)."""
        self.page.wait_for_timeout(seconds * 1000)

    def wait_text(self, needle: str, timeout: float = 20.0) -> None:
        self.page.wait_for_function("() => window.aipmTerminal && window.aipmTerminal.session.sessionId")
        self.wait(lambda: needle in self.text, f"{needle!r} in the terminal", timeout)

    def type(self, text: str) -> None:
        self.page.locator(".xterm-helper-textarea").focus()
        self.page.keyboard.type(text)

    def say(self, line: str) -> None:
        """Type ``line`` and Enter to the fake Kiro, and wait for its answer."""
        self.type(line)
        self.page.keyboard.press("Enter")
        self.wait_text(f"you said: {line}")

    def close(self) -> None:
        self.page.screenshot(path=self.shot)
        self.context.close()


def branch() -> str:
    return f"feature/{unique('page')}"


def user_lines(kiro_home: Path) -> list[str]:
    """Every line a user sent to a fake Kiro session, from its conversations (on the runner's side)."""
    lines = []
    for path in sorted((kiro_home / "conversations").glob("*.jsonl")):
        for raw in path.read_text().splitlines():
            record = json.loads(raw)
            if record["role"] == "user":
                lines.append(record["text"])
    return lines
