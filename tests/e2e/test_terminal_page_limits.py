"""The terminal page in headless Chromium through API Gateway's connection limits, shortened: the
local stack's gateway closes a connection idle for 2 s (API Gateway: 10 minutes) and, in the second
test, one open for 3 s (2 hours); the page pings every 0.5 s (its ``keepaliveSeconds``), and the
runner pings every 0.5 s and moves to a new connection 1.5 s into each one (``WS_KEEPALIVE_SECONDS``,
``WS_MAX_CONNECTION_SECONDS``, ``WS_MOVE_AHEAD_SECONDS``). One stack and one browser for the module;
each test leaves a screenshot in its tmp dir."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.browser import chromium_path
from tests.fixtures import FAKE_AGENT_COMMAND, FAKE_KIRO, unique

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

if chromium_path() is None:
    pytest.skip("needs Debian's chromium (`make browser`)", allow_module_level=True)
pytest.importorskip("playwright.sync_api")

from tests.e2e.page_support import KIRO_PROMPT, PageUnderTest, branch, chromium_browser  # noqa: E402

IDLE_TIMEOUT = 2.0
MAX_DURATION = 3.0
KEEPALIVE = 0.5
AWS_MAX_DURATION = 7200.0


@pytest.fixture(scope="module")
def stack(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from local.stack import LocalStack

    s = LocalStack(
        tmp_path_factory.mktemp("page-limits"),
        runners=1,
        stack_name=unique("pgl"),
        endpoint_url=moto_endpoint,
        reconcile_seconds=3600,
        gateway_port=0,
        gateway_limits={"idle_timeout": IDLE_TIMEOUT},
        runner_env={
            "AGENT": "kiro",
            "AGENT_COMMAND": FAKE_AGENT_COMMAND,
            "AGENT_INTERACTIVE_COMMAND": f"{FAKE_KIRO} chat --wrap never",
            "FAKE_KIRO_HOME": str(tmp_path_factory.mktemp("kiro-home")),
            "SQS_WAIT_SECONDS": "1",
            "TERMINAL_GIT_STATUS": "false",
            "WS_KEEPALIVE_SECONDS": str(KEEPALIVE),
            "WS_MAX_CONNECTION_SECONDS": str(MAX_DURATION),
            "WS_MOVE_AHEAD_SECONDS": str(MAX_DURATION / 2),
        },
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from chromium_browser()


@pytest.fixture
def tab(browser: Any, stack: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[PageUnderTest]:
    t = PageUnderTest(browser, stack, tmp_path, request.node.name)
    try:
        yield t
    finally:
        t.close()


def open_page(tab: PageUnderTest, b: str) -> None:
    tab.goto(f"token={tab.token(b)}&keepalive={KEEPALIVE}")
    tab.wait_text(KIRO_PROMPT, timeout=30)


def test_the_page_stays_connected_through_five_idle_timeouts_without_typing(tab: PageUnderTest) -> None:
    """Nobody types for five idle timeouts: the page's keepalive holds its one connection open (the
    gateway closes nothing for idleness, the runner's pings hold its side), and the session answers."""
    gateway = tab.stack.gateway
    open_page(tab, branch())
    mine = set(gateway.connection_ids_of("browser"))
    idle_closed = gateway.closed_by_limit.get("idle timeout", 0)
    # when: five idle timeouts pass without a keystroke
    tab.idle(5 * IDLE_TIMEOUT + 0.5)
    # then: the same connection, never closed for idleness, and the session still answers on it
    assert len(tab.sockets) == 1 and not tab.sockets[0].is_closed()
    assert mine <= set(gateway.connection_ids_of("browser"))
    assert gateway.closed_by_limit.get("idle timeout", 0) == idle_closed
    assert tab.status.startswith("feature/")
    tab.say("after-five-idle-timeouts")
    assert len(tab.sockets) == 1


def test_output_survives_three_maximum_durations_on_both_sides_once_and_in_order(tab: PageUnderTest) -> None:
    """The gateway closes every connection 3 s after it opened: the runner moves to a new connection
    before each mark and the page reconnects after each of its own, while the agent prints a line
    every 0.25 s for 10 s. xterm's buffer holds every line once, in order."""
    gateway = tab.stack.gateway
    open_page(tab, branch())
    runner_connections = gateway.connections_by_role.get("runner", 0)
    gateway.set_durations(max_connection_seconds=MAX_DURATION)
    try:
        # when: ten seconds of output across the marks
        line = "[fake:sleep=10] [fake:nochange]"
        tab.type(line)
        tab.page.keyboard.press("Enter")
        tab.wait(lambda: f"you said: {line}" in tab.text, "the end of the output", 60)
    finally:
        gateway.set_durations(max_connection_seconds=AWS_MAX_DURATION)
    # then: three maximum durations and more on both sides
    assert gateway.connections_by_role.get("runner", 0) - runner_connections >= 3
    assert len(tab.sockets) >= 4 and gateway.closed_by_limit.get("connection duration limit", 0) >= 3
    # and every line of output once, in order
    steps = [int(n) for n in re.findall(r"working\.\.\. step (\d+)", tab.text)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 30
    assert tab.text.count("Nothing in this task needs a change") == 1
    assert tab.text.count("interactive chat") == 1
    assert "session ended" not in tab.text
