"""The fleet's decisions without AWS: when a heartbeat record counts as live, gone or stopped, the
record's DynamoDB shape, and when the login gate asks the agent again."""

from __future__ import annotations

import logging

import pytest

from ec2_runner.headless import LoginStatus
from ec2_runner.login_gate import LoginGate
from shared.models import from_dynamodb
from shared.runners import GONE_AFTER_BEATS, Liveness, RunnerRecord, RunnerState

pytestmark = pytest.mark.unit


def record(last_seen: float, state: RunnerState = RunnerState.RUNNING, beat: float = 10.0) -> RunnerRecord:
    return RunnerRecord(
        runner_id="r-1",
        host="host-a",
        version="0.1.0",
        agent="kiro",
        agent_logged_in=True,
        agent_login="logged in",
        state=state,
        slots_busy=1,
        slots_total=2,
        tasks=["task-1"],
        started_at=last_seen - 100,
        last_seen=last_seen,
        heartbeat_seconds=beat,
        expires_at=int(last_seen + 3600),
    )


def test_a_record_is_live_until_it_missed_its_beats_then_gone() -> None:
    now = 1_000_000.0
    assert record(now - 5).liveness(now) is Liveness.LIVE
    assert record(now - GONE_AFTER_BEATS * 10).liveness(now) is Liveness.LIVE
    assert record(now - GONE_AFTER_BEATS * 10 - 1).liveness(now) is Liveness.GONE


def test_a_runner_that_said_goodbye_is_stopped_not_gone() -> None:
    now = 1_000_000.0
    assert record(now - 9999, RunnerState.STOPPED).liveness(now) is Liveness.STOPPED


def test_a_record_reads_back_from_its_dynamodb_item_as_it_was_written() -> None:
    written = record(1_000_000.5)
    item = written.item()
    assert item["fleet"] == {"S": "runners"} and item["agentLoggedIn"] == {"BOOL": True}
    assert item["tasks"] == {"L": [{"S": "task-1"}]}
    assert RunnerRecord.model_validate(from_dynamodb(item)) == written


class ScriptedAgent:
    """Answers the login check from a list, and counts how often it was asked."""

    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers)
        self.asked = 0

    def login_status(self) -> LoginStatus:
        self.asked += 1
        ok = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return LoginStatus(logged_in=ok, detail="logged in" if ok else "not logged in")


def test_the_gate_asks_the_agent_once_per_interval_and_opens_when_it_is_logged_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    agent = ScriptedAgent(False, True)
    gate = LoginGate(agent, recheck_seconds=60, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="ec2_runner.login_gate")

    assert gate.ready() is False and agent.asked == 1
    now[0] = 59.0
    assert gate.ready() is False and agent.asked == 1  # the last answer still holds
    now[0] = 60.0
    assert gate.ready() is True and agent.asked == 2

    messages = [r.getMessage() for r in caplog.records]
    assert any("not logged in" in m and "taking no tasks" in m for m in messages)
    assert any("logged in now" in m and "taking tasks" in m for m in messages)


def test_an_agent_without_a_login_check_never_closes_the_gate() -> None:
    class NoCheck:
        def login_status(self) -> LoginStatus:
            return LoginStatus(logged_in=None, detail="no login check")

    assert LoginGate(NoCheck(), recheck_seconds=1).ready() is True
