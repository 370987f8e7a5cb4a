"""The terminal page (web/index.html and its module, xterm.js vendored) in headless Chromium against
the local stack, with the fake Kiro as the session's agent. One browser for the module; each test has
a page (a fresh context) of its own and a branch of its own, and leaves a screenshot in its tmp dir."""

from __future__ import annotations

import re
import secrets
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.browser import chromium_path
from shared import tokens
from tests.fixtures import FAKE_AGENT_COMMAND, FAKE_KIRO, AwsCli, unique, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

if chromium_path() is None:
    pytest.skip("needs Debian's chromium (`make browser`)", allow_module_level=True)
pytest.importorskip("playwright.sync_api")

from tests.e2e.page_support import KIRO_PROMPT, PageUnderTest, branch, chromium_browser, user_lines  # noqa: E402


@pytest.fixture(scope="module")
def kiro_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kiro-home")


@pytest.fixture(scope="module")
def stack(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory, kiro_home: Path) -> Iterator[Any]:
    from local.stack import LocalStack

    s = LocalStack(
        tmp_path_factory.mktemp("page"),
        runners=1,
        stack_name=unique("pg"),
        endpoint_url=moto_endpoint,
        reconcile_seconds=3600,
        gateway_port=0,
        runner_env={
            "AGENT": "kiro",
            "AGENT_COMMAND": FAKE_AGENT_COMMAND,
            "AGENT_INTERACTIVE_COMMAND": f"{FAKE_KIRO} chat --wrap never",
            "FAKE_KIRO_HOME": str(kiro_home),
            "SQS_WAIT_SECONDS": "1",
        },
    )
    s.start()
    try:
        deadline = time.monotonic() + 30
        while not s.gateway.connection_ids_of("runner"):
            assert time.monotonic() < deadline, "the runner never connected to the gateway"
            time.sleep(0.05)
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


def test_the_page_loads_only_from_its_own_origin(tab: PageUnderTest) -> None:
    """xterm.js, its CSS and the module come from the page's origin: nothing else is asked for."""
    origin = tab.stack.config.page_url.rstrip("/")
    asked: list[str] = []
    tab.page.on("request", lambda r: asked.append(r.url))
    tab.open(branch())
    assert any(u.endswith("/vendor/xterm.mjs") for u in asked)
    outside = [u for u in asked if not (u.startswith(origin) or u.startswith(origin.replace("http", "ws")))]
    assert outside == []


def test_a_typed_command_shows_its_output(tab: PageUnderTest) -> None:
    tab.open(branch())
    assert "interactive chat" in tab.text
    tab.say(f"hello from chromium {secrets.token_hex(3)}")
    assert "connected" in tab.status or "feature/" in tab.status


def test_resizing_the_window_resizes_the_pty(tab: PageUnderTest) -> None:
    tab.open(branch())
    before = tab.js("[aipmTerminal.terminal.rows, aipmTerminal.terminal.cols]")
    # when
    tab.page.set_viewport_size({"width": 640, "height": 420})
    tab.wait(
        lambda: tab.js("[aipmTerminal.terminal.rows, aipmTerminal.terminal.cols]") != before, "the refit"
    )
    rows, cols = tab.js("[aipmTerminal.terminal.rows, aipmTerminal.terminal.cols]")
    tab.type("stty size")
    tab.page.keyboard.press("Enter")
    # then: the agent's tty has the page's new size
    tab.wait_text(f"\n{rows} {cols}\n")
    assert (rows, cols) != tuple(before)


def test_a_reload_resumes_the_session_with_its_output_once(tab: PageUnderTest) -> None:
    b = branch()
    mark = f"before-reload-{secrets.token_hex(3)}"
    tab.open(b)
    tab.say(mark)
    seen = tab.text.count(mark)
    # when
    tab.page.reload()
    tab.wait_text(f"you said: {mark}")
    tab.say("after-reload")  # output comes in seq order: the replay is all in once this is
    # then
    assert tab.text.count(mark) == seen
    assert tab.text.count("interactive chat") == 1
    assert "session ended" not in tab.text


def test_a_dropped_connection_comes_back_by_itself(tab: PageUnderTest) -> None:
    tab.open(branch())
    tab.say("before-the-drop")
    gateway = tab.stack.gateway
    mine = set(gateway.connection_ids_of("browser"))
    # when: the gateway closes the browser's connection (as API Gateway does at its limits)
    for cid in mine:
        req = urllib.request.Request(f"{gateway.management_url}/@connections/{cid}", method="DELETE")
        urllib.request.urlopen(req, timeout=10).close()
    # then
    tab.wait(lambda: len(tab.sockets) >= 2, "a second WebSocket")
    tab.wait(lambda: set(gateway.connection_ids_of("browser")) - mine, "the page connected again")
    tab.say("after-the-drop")
    assert tab.text.count("you said: before-the-drop") == 1


def test_a_100_kb_paste_arrives_intact_and_in_order(tab: PageUnderTest, kiro_home: Path) -> None:
    tab.open(branch())
    tag = secrets.token_hex(4)
    lines = [f"paste-{tag}-{i:04d} " + secrets.token_hex(44) for i in range(1000)]  # ~100 KB
    text = "\n".join(lines) + "\n"
    assert len(text.encode()) >= 100_000
    sent: list[int] = []
    tab.sockets[-1].on("framesent", lambda payload: sent.append(len(str(payload).encode())))
    # when: a real paste event on xterm's textarea
    tab.page.evaluate(
        """(text) => {
          const dt = new DataTransfer();
          dt.setData("text/plain", text);
          const area = document.querySelector(".xterm-helper-textarea");
          const paste = { clipboardData: dt, bubbles: true, cancelable: true };
          area.dispatchEvent(new ClipboardEvent("paste", paste));
        }""",
        text,
    )
    # then: the agent got every line, in order, and every frame was under API Gateway's 32 KB
    tab.wait(lambda: f"you said: {lines[-1]}" in tab.text, "the last pasted line answered", 60)
    got = [line for line in user_lines(kiro_home) if line.startswith(f"paste-{tag}-")]
    assert got == lines
    assert sent and max(sent) < 32 * 1024


def test_a_read_only_watcher_sees_output_and_its_keystrokes_are_refused(
    tab: PageUnderTest, browser: Any, stack: Any, tmp_path: Path, kiro_home: Path
) -> None:
    b = branch()
    tab.open(b)
    watcher = PageUnderTest(browser, stack, tmp_path, "read-only-watcher")
    try:
        watcher.open(b, read_only=True)
        assert "read-only" in watcher.status
        # when
        tab.say("seen-by-the-watcher")
        watcher.wait_text("you said: seen-by-the-watcher")
        watcher.type("typed-by-the-watcher")
        watcher.page.keyboard.press("Enter")
        watcher.wait_text("read-only")
        tab.say("after-the-watcher-typed")  # the session has handled everything sent before this
        # then
        assert "typed-by-the-watcher" not in tab.text
        assert not any("typed-by-the-watcher" in line for line in user_lines(kiro_home))
    finally:
        watcher.close()


def test_an_expired_token_says_so_and_never_connects(tab: PageUnderTest) -> None:
    key = tab.stack.config.env["TOKEN_SECRET"]
    expired = tokens.mint(key, sub="u", branch=branch(), ttl=1, now=time.time() - 120)
    tab.goto(f"token={expired}")
    tab.wait(lambda: "expired" in tab.status, "the expiry message")
    assert tab.sockets == []


def test_a_forged_token_says_so_once_and_does_not_retry(tab: PageUnderTest) -> None:
    forged = tab.token(branch(), secret="not-the-gateways-secret-0123456789abcdef")
    tab.goto(f"token={forged}")
    tab.wait(lambda: "refused" in tab.status, "the refusal")
    shown_at = time.monotonic()
    # the old page reconnected after 0.5 s, 1 s, 2 s...: watch for longer than that
    while time.monotonic() - shown_at < 2.5:
        assert len(tab.sockets) == 1 and "refused" in tab.status
        tab.idle(0.1)
    assert "fresh token" in tab.text


def test_a_page_whose_script_cannot_start_says_why(tab: PageUnderTest) -> None:
    tab.page.route("**/vendor/xterm.mjs", lambda route: route.abort())
    tab.goto(f"token={tab.token(branch())}")
    tab.page.wait_for_function(
        "() => document.getElementById('status').textContent.includes('could not start')"
    )
    assert "loading" not in tab.status
    assert tab.sockets == []


def test_the_demo_page_fetches_its_own_token(tab: PageUnderTest) -> None:
    """``?branch=B``: the page asks the local stack's ``/token`` for its token, as a frontend's page
    asks its backend."""
    tab.goto(f"branch={branch()}")
    tab.wait_text(KIRO_PROMPT)
    tab.say("with-a-fetched-token")


# -- watch a task (the "Generate Code & PR" button's progress) -----------------------------------------


def test_watching_a_task_shows_its_output_while_it_runs_and_its_final_status(
    stack: Any, tab: PageUnderTest
) -> None:
    """``?watch=ID`` opened before the task exists: the page waits (``no_session``, opened again),
    then shows the run's output from its first line while the row is still ``processing``, then the
    final ``task`` frame's status with the pushed commit, and connects no more after it."""
    cli = AwsCli(stack.config.endpoint_url, stack.config.table_name)
    task_id = unique("watch")
    # given: the page watches a task that is not running yet
    tab.goto(f"watch={task_id}")
    tab.wait(lambda: "waiting" in tab.status or "not running" in tab.status, "the page waiting for the run")
    # when: the backend submits it (the fake agent works 4 s, printing a step every 0.25 s)
    cli.put_task(task_id, f"feature/{task_id}", details="[fake:sleep=4]")
    tab.wait(lambda: "working... step 3" in tab.text, "the run's output", 60)
    status_while_shown = cli.read(task_id)["status"]
    text = tab.text
    # then: its output from the run's start, before the task ended
    assert status_while_shown == "processing"
    assert text.index("kiro-cli (fake, for tests)") < text.index("working... step 1")
    assert f"watching task {task_id}" in tab.status
    # and its final status, with the commit the row holds
    tab.wait(lambda: "task complete" in tab.status, "the final status", 60)
    row = cli.read(task_id)
    assert row["status"] == "complete"
    assert f"pushed {row['commitSha'][:12]}" in tab.status and f"pushed {row['commitSha'][:12]}" in tab.text
    assert tab.js("aipmTerminal.session.task.status") == "complete"
    steps = [int(n) for n in re.findall(r"working\.\.\. step (\d+)", tab.text)]
    assert steps == list(range(1, len(steps) + 1))  # every line once, in order
    # and it stops there: no reconnect, no open again
    sockets = len(tab.sockets)
    tab.idle(3.5)  # longer than the page's 2.5 s retry of a watch
    assert len(tab.sockets) == sockets and tab.js("aipmTerminal.session.state") == "ended"


def test_watching_a_task_that_fails_shows_its_error_and_kind(stack: Any, tab: PageUnderTest) -> None:
    cli = AwsCli(stack.config.endpoint_url, stack.config.table_name)
    task_id = unique("watchfail")
    cli.put_task(task_id, f"feature/{task_id}", details="[fake:sleep=3] [fake:exit=1]")
    tab.goto(f"watch={task_id}")
    tab.wait(lambda: "task failed" in tab.status, "the failure", 60)
    row = cli.read(task_id)
    assert row["status"] == "failed"
    assert f"[{row['errorKind']}]" in tab.status and row["errorKind"] == "agent_exit"
    assert "task failed [agent_exit]" in tab.text
    assert tab.page.eval_on_selector("#status", "e => e.className") == "bad"
    assert tab.js("aipmTerminal.session.readOnly") is True


def test_a_watch_of_a_task_that_already_ended_ends_with_its_rows_status(
    stack: Any, tab: PageUnderTest
) -> None:
    """A task that ended before the page could watch it has no run to open (``no_session``): the
    module asks ``taskStatus`` while it waits (the demo page: the local stack's ``/task-status``, as a
    frontend asks its backend) and ends with the row's status."""
    cli = AwsCli(stack.config.endpoint_url, stack.config.table_name)
    task_id = unique("ended")
    cli.put_task(task_id, f"feature/{task_id}")
    row = wait_until(lambda: (r := cli.read(task_id)).get("status") == "complete" and r, 60, what="the task")
    # when
    tab.goto(f"watch={task_id}")
    tab.wait(lambda: "task complete" in tab.status, "the row's end")
    # then
    assert f"task complete: pushed {row['commitSha'][:12]}" in tab.text
    assert tab.js("[aipmTerminal.session.state, aipmTerminal.session.task.status]") == ["ended", "complete"]
