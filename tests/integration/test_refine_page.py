"""The terminal page's module (web/aipm-terminal.js), run under Node against the real local gateway."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from shared import tokens
from tests.fixtures import wait_until
from tests.integration.refine_support import (
    Page,
    Partition,
    browser_token,
    ring_holds,
    running_gateway,
    running_runner,
    session_manager,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(40)]


def _node_has_websocket() -> bool:
    if shutil.which("node") is None:
        return False
    probe = ["node", "--experimental-websocket", "--no-warnings", "-e", "process.exit(WebSocket ? 0 : 1)"]
    return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0


if not _node_has_websocket():
    pytest.skip("needs Node.js with a WebSocket client (node >= 20.10)", allow_module_level=True)


def test_page_with_a_refused_token_says_so_and_stops(moto_endpoint: str, table: str) -> None:
    """A token the authorizer refuses (forged here) is reported once and never retried; an expired
    one is recognised before connecting at all."""
    with running_gateway(moto_endpoint, table) as gw:
        forged = tokens.mint("another-secret-0123456789abcdef", sub="u", branch="feature/x", ttl=300)
        page = Page(gw.ws_url, forged)
        try:
            page.wait(lambda p: "refused" in p.status, what="the refusal shown")
            shown_at = time.monotonic()
            # the old page reconnected after 0.5 s, 1 s, 2 s...: give it longer than that to try
            while time.monotonic() - shown_at < 2.5:
                assert page.connects == 1 and "refused" in page.status
                time.sleep(0.1)
            assert "reload the page with a fresh token" in page.text
        finally:
            page.close()
        expired = tokens.mint(gw.token_secret or "", sub="u", branch="feature/x", ttl=1, now=time.time() - 60)
        page = Page(gw.ws_url, expired)
        try:
            page.wait(lambda p: "expired" in p.status, what="the expiry shown")
            assert page.connects == 0
        finally:
            page.close()


def test_page_resumes_when_the_runner_comes_back(moto_endpoint: str, table: str, tmp_path: Path) -> None:
    """The runner's connection is cut: the page hears ``runner_gone``, holds what the user types, and
    resumes from its last seq once the runner is back, so nothing is lost and the keystrokes run."""
    with (
        running_gateway(moto_endpoint, table) as gw,
        Partition(gw.ws_port) as link,
        running_runner(gw, lambda: session_manager(tmp_path), ws_url=link.url(gw.ws_url)) as svc,
    ):
        page = Page(gw.ws_url, browser_token(branch="feature/page"))
        try:
            page.wait(lambda p: "$ " in p.text, what="the shell prompt")
            page.type("sleep 0.5; echo during-$((3*5))\r")
            page.wait(lambda p: "during-$((3*5))" in p.text, what="the command's echo")
            # when
            link.cut()
            page.wait(lambda p: "runner went away" in p.status, what="runner_gone shown")
            page.type("echo back-$((6*7))\r")
            assert svc.sessions is not None
            sessions = svc.sessions
            wait_until(lambda: ring_holds(sessions, "during-15"), 10, what="output while the runner is away")
            link.heal()
            # then
            page.wait(lambda p: "back-42" in p.text, 30, what="the held keystrokes run after the resume")
            assert page.sent("resume"), "the page never sent resume"
            assert page.text.count("during-15\r\n") == 1
            assert "session ended" not in page.text
        finally:
            page.close()
