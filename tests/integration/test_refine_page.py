"""The terminal page's module (web/aipm-terminal.js), run under Node against the real local gateway."""

from __future__ import annotations

import json
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


def test_a_large_paste_goes_in_frames_under_32_kb_and_arrives_whole(
    moto_endpoint: str, table: str, tmp_path: Path
) -> None:
    """Input is split by UTF-8 bytes (multi-byte characters and JSON escapes counted), so a paste
    over API Gateway's frame limit reaches the pty whole and in order."""
    with (
        running_gateway(moto_endpoint, table) as gw,
        running_runner(gw, lambda: session_manager(tmp_path)),
    ):
        page = Page(gw.ws_url, browser_token(branch="feature/paste"))
        try:
            page.wait(lambda p: "$ " in p.text, what="the shell prompt")
            # 42 KB of multi-byte characters and JSON escapes in one keystroke event
            body = 'é€"\\' * 6000
            page.type(f"printf '%s' '{body}' | wc -c; echo done-$((2*21))\r")
            page.wait(lambda p: "done-42" in p.text, 30, what="the command's answer")
            # as JSON.stringify wrote them: UTF-8, no spaces
            sent = [
                json.dumps(f, ensure_ascii=False, separators=(",", ":")).encode() for f in page.sent("input")
            ]
            assert len(sent) >= 2 and max(len(s) for s in sent) < 32 * 1024
            assert "".join(f["data"] for f in page.sent("input")).count(body) == 1
            assert f"{len(body.encode())}\r\n" in page.text
        finally:
            page.close()


def test_the_page_pings_on_its_keepalive_interval(moto_endpoint: str, table: str, tmp_path: Path) -> None:
    """A ``ping`` every ``keepaliveSeconds`` (300 s by default, inside API Gateway's 10-minute idle
    timeout); the session goes on meanwhile."""
    with (
        running_gateway(moto_endpoint, table) as gw,
        running_runner(gw, lambda: session_manager(tmp_path)),
    ):
        page = Page(gw.ws_url, browser_token(branch="feature/keepalive"), keepaliveSeconds=0.3)
        try:
            page.wait(lambda p: len(p.sent("ping")) >= 3, what="three pings")
            assert page.sent("ping")[0] == {"action": "ping"}
            page.type("echo alive-$((6*7))\r")
            page.wait(lambda p: "alive-42" in p.text, what="the command's answer")
            assert "ping" not in page.text  # answered with a pong, which the page ignores
        finally:
            page.close()


def test_the_page_renews_its_token_before_it_expires(moto_endpoint: str, table: str, tmp_path: Path) -> None:
    """With a token URL, the page fetches a fresh token ahead of ``exp`` and moves the session to a
    new connection (opened, resumed, then the old one closed): same session, no output twice, and
    its keystrokes numbered on from one connection to the next."""
    with (
        running_gateway(moto_endpoint, table) as gw,
        running_runner(gw, lambda: session_manager(tmp_path)),
    ):
        gw.demo_tokens = True
        # a 4-second token: renewed half-way (60 s ahead, or half its life when shorter)
        page = Page(gw.ws_url, "", tokenUrl=f"{gw.page_url}token?branch=feature/renew&ttl=4")
        try:
            page.wait(lambda p: "$ " in p.text, what="the shell prompt")
            page.type("echo first-$((3*5))\r")
            page.wait(lambda p: "first-15" in p.text, what="the first answer")
            page.wait(lambda p: p.connects >= 3, 20, what="two renewals")
            page.type("echo second-$((4*5))\r")
            page.wait(lambda p: "second-20" in p.text, what="the answer on the renewed connection")
            assert page.text.count("first-15\r\n") == 1
            assert len(page.sent("open")) == 1 and page.sent("resume")
            assert "session ended" not in page.text and "refused" not in page.status
            # the keystrokes are numbered on across the connections, under one writer id
            inputs = page.sent("input")
            assert [f["seq"] for f in inputs] == list(range(1, len(inputs) + 1))
            assert len({f["writer"] for f in inputs}) == 1 and len(inputs[0]["writer"]) == 32
        finally:
            page.close()
