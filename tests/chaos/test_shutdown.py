"""Stopping a runner the way an operator or systemd does, and the local stack's scheduled
reconciler recovering a signal that never arrived."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest

from tests.chaos.conftest import Chaos, children_of, summary
from tests.chaos.test_runner_faults import agent_started
from tests.fixtures import unique, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]


def test_sigint_lets_a_running_task_finish_within_the_grace_period(
    chaos_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C is a warm stop: no new work, the running task completes and is pushed, the runner
    exits 0 with no agent process left."""
    chaos: Chaos = chaos_factory("sigint", runner_env={"SHUTDOWN_GRACE_SECONDS": "30", "LEASE_SECONDS": "10"})
    runner = chaos.start_runner(0)
    task_id, later = unique("sigint"), unique("later")
    chaos.put(task_id, f"feature/{task_id}", details="[fake:sleep=2]")
    agent_pid = agent_started(chaos, task_id)
    # when
    runner.send_signal(signal.SIGINT)
    chaos.put(later, f"feature/{later}", details="[fake:sleep=0.1]")  # arrives after the stop
    code = chaos.wait_exit(0, timeout=60)
    # then
    row = chaos.store.get_row(task_id)
    late = chaos.store.get_row(later)
    line = summary(
        capsys,
        "sigint warm stop",
        tasks=2,
        kills=0,
        lost=len(chaos.lost([task_id])),
        double_owned=len(chaos.double_owned([task_id])),
        exit_code=code,
        duration=chaos.elapsed(),
    )
    assert code == 0, line
    assert row["status"] == "complete" and chaos.on_branch(row["commitSha"], row["branch"]), f"{line}; {row}"
    assert late["status"] == "pending" and not late.get("attempts"), f"{line}; taken after the stop: {late}"
    assert not children_of(runner.pid) and agent_pid not in children_of(1), line


def _send(chaos: Chaos, task_id: str) -> None:
    url = chaos.stack.config.task_queue_url  # type: ignore[union-attr]
    chaos.sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"taskId": task_id, "reason": "test"}))


def test_a_re_received_task_waiting_to_run_alone_is_not_started_after_sigterm(
    chaos_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # given: signals sent by hand (the stream is stopped): the suspect's is received once and hidden
    # for 8 s, so the runner gets it only as a re-received message while its long task runs
    chaos: Chaos = chaos_factory("alone", runner_env={"SHUTDOWN_GRACE_SECONDS": "1", "LEASE_SECONDS": "10"})
    assert chaos.stack.stream is not None and chaos.stack.config is not None
    chaos.stack.stream.stop()
    busy, suspect = unique("busy"), unique("suspect")
    chaos.put(busy, f"feature/{busy}", details="[fake:checkpoint=60]")
    chaos.put(suspect, f"feature/{suspect}", details="[fake:sleep=0.1]")
    _send(chaos, suspect)
    url = chaos.stack.config.task_queue_url
    assert chaos.sqs.receive_message(QueueUrl=url, VisibilityTimeout=8, WaitTimeSeconds=1).get("Messages")
    _send(chaos, busy)
    runner = chaos.start_runner(0)
    agent_started(chaos, busy)
    wait_until(lambda: _in_flight(chaos) >= 2, 20, what="the runner to hold the re-received signal too")
    # when
    runner.send_signal(signal.SIGTERM)
    code = chaos.wait_exit(0, timeout=60)
    # then: the suspect never ran and its signal is back in the queue
    row = chaos.store.get_row(suspect)
    line = summary(
        capsys,
        "sigterm while a suspect waits",
        tasks=2,
        kills=0,
        lost=0 if row.get("status") == "pending" else 1,
        double_owned=len(chaos.double_owned([busy, suspect])),
        exit_code=code,
        duration=chaos.elapsed(),
    )
    assert code == 0, line
    assert row["status"] == "pending" and not row.get("attempts"), f"{line}; {row}"
    assert not chaos.agent_runs([suspect]), line
    assert _in_flight(chaos) <= 1, f"{line}; the suspect's message is still hidden"


def _in_flight(chaos: Chaos) -> int:
    attrs = chaos.sqs.get_queue_attributes(
        QueueUrl=chaos.stack.config.task_queue_url,  # type: ignore[union-attr]
        AttributeNames=["ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessagesNotVisible"])


def test_the_local_stacks_reconciler_resignals_a_pending_row_whose_signal_was_lost(
    chaos_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stream record never reaches dispatch (the mapping is down): the scheduled reconciler,
    which the local stack runs as EventBridge would, finds the row through the status index."""
    chaos: Chaos = chaos_factory("reconcile", reconcile_seconds=1, function_env={"PENDING_AGE_SECONDS": "1"})
    assert chaos.stack.stream is not None
    chaos.stack.stream.stop()
    chaos.start_runner(0)
    task_id = unique("lost")
    started = time.monotonic()
    chaos.put(task_id, f"feature/{task_id}", details="[fake:sleep=0.1]")
    row = chaos.wait_final([task_id], timeout=60)[task_id]
    line = summary(
        capsys,
        "lost signal",
        tasks=1,
        kills=0,
        lost=len(chaos.lost([task_id])),
        double_owned=0,
        recovered_after=time.monotonic() - started,
        duration=chaos.elapsed(),
    )
    assert row["status"] == "complete", f"{line}; {row}"
    assert chaos.on_branch(row["commitSha"], row["branch"]), line
