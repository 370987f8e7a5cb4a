"""Kiro's failure rules and the generic exit verdict, on runs made up in memory: no pty, no process."""

from __future__ import annotations

import pytest

from ec2_runner.headless import exit_kind, judge_exit, last_meaningful_line
from ec2_runner.kiro import CREDITS, KiroRules
from ec2_runner.ptydriver import PtyRun, Stop
from shared.models import ErrorKind

pytestmark = pytest.mark.unit

CREDITS_LINE = "\u25b8 Credits: 0.04 \u2022 Time: 1s\n"


def ended(output: str, exit_code: int | None = 0, signal: int | None = None) -> PtyRun:
    run = PtyRun(exit_code=exit_code, signal=signal)
    run.keep(output)
    return run


@pytest.mark.parametrize(
    ("output", "line"),
    [
        ("> working\nerror: boom\n\n\u25b8 Credits: 0.1 \u2022 Time: 1s\n", "error: boom"),
        ("only line", "only line"),
        ("text\n> \n  \n", "text"),
        ("", ""),
    ],
)
def test_last_meaningful_line_skips_prompts_and_credits(output: str, line: str) -> None:
    """The error names the agent's last real words, not its prompt or (Kiro's) bill."""
    assert last_meaningful_line(output, noise=CREDITS) == line


def test_authentication_failed_with_exit_zero_fails_under_kiros_rules_only() -> None:
    """The same output and exit 0: Kiro's rules fail it, the exit verdict alone passes it."""
    output = "Authentication failed.\n"
    rules = KiroRules()

    assert rules(output, 0.0) is None
    assert rules.judge(ended(output)) == (False, "agent authentication failed (check KIRO_API_KEY)")
    assert judge_exit(ended(output)) == (True, None)


def test_authentication_message_after_a_finished_turn_is_not_a_failure() -> None:
    """An agent that finished its turn (credits line) merely quoted the words."""
    output = "Authentication failed.\n" + CREDITS_LINE
    rules = KiroRules()
    rules(output, 0.0)

    assert rules.judge(ended(output)) == (True, None)


def test_approval_question_is_answered_no_and_names_the_tool() -> None:
    """A tool-approval question ends the run at once: answered "n", the error naming the tool."""
    rules = KiroRules()
    text = "Using tool: fs_write\nAllow this action? Use 't' to trust (always allow) this tool. [y/n/t]:"

    stop = rules(text, 0.0)

    assert stop == Stop(
        "agent asked for approval to use tool 'fs_write'; run with --trust-all-tools or trust the tool",
        answer="n",
    )


def test_device_login_stops_at_once_without_a_login_timeout() -> None:
    """A device login waits for a person; with no AGENT_LOGIN_TIMEOUT the run stops as soon as it shows."""
    assert KiroRules()("Open this URL: https://view.awsapps.com/start/#/device\n", 0.0) == Stop(
        "agent is not logged in"
    )


def test_device_login_waits_for_the_login_timeout_then_stops() -> None:
    """With a login timeout the watcher lets a person log in for that long, then stops the run."""
    rules = KiroRules(login_timeout=5.0)
    text = "Confirm the following code in the browser\nCode: ABCD-EFGH\n"

    assert rules(text, 100.0) is None
    assert rules(text, 104.9) is None
    assert rules(text, 105.0) == Stop("agent is not logged in")


def test_a_login_that_succeeds_in_time_is_no_failure() -> None:
    """A login that succeeds within the timeout clears it: the run goes on however long it takes."""
    rules = KiroRules(login_timeout=5.0)
    text = "Code: ABCD-EFGH\n"

    assert rules(text, 100.0) is None
    assert rules(text + "Logged in successfully\n", 101.0) is None
    assert rules(text + "Logged in successfully\n", 200.0) is None
    assert rules.logged_in and rules.login_seen is None


def test_kiros_exit_codes_have_their_meanings_under_kiros_rules_only() -> None:
    """Exit 3 and 4 mean something to Kiro; to any other command they are exit codes like others."""
    run = ended("error: Failed to start required MCP server 'x'\n", exit_code=3)

    assert KiroRules().judge(run) == (False, "a required MCP server failed to start (exit 3)")
    assert judge_exit(run) == (False, "agent failed (exit 3): error: Failed to start required MCP server 'x'")


def test_trouble_without_a_finished_turn_is_a_failure_even_with_exit_zero() -> None:
    """'Having trouble responding' and no credits line: Kiro never finished, whatever its exit code."""
    output = "Kiro is having trouble responding right now.\n"
    rules = KiroRules()
    rules(output, 0.0)

    assert rules.trouble and rules.stalled
    assert rules.judge(ended(output)) == (
        False,
        "agent failed (exit 0): agent is having trouble responding",
    )
    assert judge_exit(ended(output)) == (True, None)


def test_a_stopped_run_keeps_the_reason_it_was_stopped() -> None:
    """A run the driver stopped (timeout, should_stop) fails with that reason, under any rules."""
    run = ended("Authentication failed.\n")
    run.error = "agent timed out after 1 s"
    rules = KiroRules()
    rules(run.output, 0.0)

    assert rules.judge(run) == (False, "agent timed out after 1 s")
    assert judge_exit(run) == (False, "agent timed out after 1 s")


def test_a_run_killed_by_a_signal_says_which() -> None:
    """A process that ended by a signal (no exit code) fails naming the signal."""
    assert judge_exit(ended("", exit_code=None, signal=9)) == (False, "agent was killed by signal SIGKILL")


def test_each_verdict_has_the_kind_its_error_names() -> None:
    """``kind`` follows ``judge``: none for a success, the stop's own kind for a stopped run (even
    with 'Authentication failed.' in it), the credential for an auth failure, an exit otherwise
    (a stall that exits 0, a signal)."""
    stall = "Kiro is having trouble responding right now.\n"
    stopped = ended("Authentication failed.\n")
    stopped.error, stopped.kind = "agent timed out after 1 s", ErrorKind.AGENT_TIMEOUT
    cases = [
        ("done\n" + CREDITS_LINE, ended("done\n" + CREDITS_LINE), None),
        ("Authentication failed.\n", ended("Authentication failed.\n"), ErrorKind.AGENT_AUTH_FAILED),
        (stall, ended(stall), ErrorKind.AGENT_EXIT),
        ("", ended("", exit_code=None, signal=9), ErrorKind.AGENT_EXIT),
        ("Authentication failed.\n", stopped, ErrorKind.AGENT_TIMEOUT),
    ]
    for seen, run, kind in cases:
        rules = KiroRules()
        rules(seen, 0.0)
        assert rules.kind(run) is kind, (seen, run)
    assert (
        exit_kind(ended("", exit_code=0)) is None
        and exit_kind(ended("", exit_code=2)) is ErrorKind.AGENT_EXIT
    )


def test_a_watchers_stop_carries_its_kind() -> None:
    """The login and approval stops say their kinds (the driver writes them on the run)."""
    login = KiroRules()("Open this URL: https://view.awsapps.com/start/#/device\n", 0.0)
    approval = KiroRules()("Using tool: fs_write\nAllow this action? [y/n/t]:", 0.0)
    assert login is not None and login.kind is ErrorKind.AGENT_NOT_LOGGED_IN
    assert approval is not None and approval.kind is ErrorKind.APPROVAL_REQUIRED
