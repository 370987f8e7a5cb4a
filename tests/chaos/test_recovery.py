"""Faults the runners cannot fix by themselves: a poison task that kills every runner taking it
(the DLQ gives it up), and the AWS endpoint going away for 10 s."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from local.motoserver import MotoServer
from tests.chaos.conftest import Chaos, summary
from tests.fixtures import unique

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(150)]


class Supervisor:
    """Restarts runners that died, as systemd's Restart=always does on a runner machine."""

    def __init__(self, chaos: Chaos, indexes: list[int]) -> None:
        self.chaos = chaos
        self.indexes = indexes
        self.deaths = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Supervisor:
        for index in self.indexes:
            self.chaos.start_runner(index)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            for index in self.indexes:
                proc = self.chaos.procs[index]
                if proc.poll() is not None:
                    self.deaths += 1
                    self.chaos.exits.append((time.time(), proc.pid))
                    self.chaos.start_runner(index)


@pytest.mark.parametrize("slots", [1, 2])
def test_poison_task_lands_in_the_dlq_and_fails_while_the_others_complete(
    chaos_factory: Any, capsys: pytest.CaptureFixture[str], slots: int
) -> None:
    # given: maxReceiveCount 3, a 2 s lease (7 s visibility), two supervised runners
    chaos: Chaos = chaos_factory(
        f"poison{slots}",
        parameters={"MaxReceiveCount": 3},
        runner_env={"LEASE_SECONDS": "2", "RUNNER_SLOTS": str(slots)},
    )
    poison = unique("poison")
    good = [unique("good") for _ in range(6)]
    with Supervisor(chaos, [0, 1]) as supervisor:
        # when
        chaos.put(poison, f"feature/{poison}", details="[fake:killparent]")
        for task_id in good:
            chaos.put(task_id, f"feature/{task_id}", details="[fake:sleep=0.5]")
        rows = chaos.wait_final([poison, *good], timeout=120)
    # then
    ids = [poison, *good]
    lost = chaos.lost(ids)
    line = summary(
        capsys,
        f"poison task ({slots} slot(s) per runner)",
        tasks=len(ids),
        kills=supervisor.deaths,
        lost=len(lost),
        double_owned=len(chaos.double_owned(ids)),
        poison_attempts=rows[poison].get("attempts"),
        duration=chaos.elapsed(),
    )
    assert not lost, f"{line}; {lost}"
    assert rows[poison]["status"] == "failed", f"{line}; {rows[poison]}"
    # N is the row's attempts (3 runs), not the DLQ message's receive count (which in moto also
    # counts the receive that moved it); each run ended with its runner's death, and the row says so
    assert rows[poison]["error"] == (
        "gave up after 3 attempts: the runner working on it stopped heartbeating 3 times "
        "(it may have been killed, or the agent took it down)"
    ), f"{line}; {rows[poison]}"
    assert rows[poison]["attempts"] == 3 and supervisor.deaths == 3, line
    assert [rows[t]["status"] for t in good] == ["complete"] * len(good), f"{line}; {rows}"
    assert not chaos.double_owned(ids), line
    dlq = chaos.stack.config.dlq_url  # type: ignore[union-attr]
    left = chaos.sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])
    assert left["Attributes"]["ApproximateNumberOfMessages"] == "0", line  # handled and deleted


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_aws_endpoint_down_for_ten_seconds_is_logged_retried_and_every_task_ends(
    chaos_factory: Any, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    # given: a moto server of this test's own, on a fixed port, and a stack on it
    port = free_port()
    moto = MotoServer(port=port)
    endpoint = moto.start()
    try:
        chaos: Chaos = chaos_factory("outage", endpoint_url=endpoint, runner_env={"LEASE_SECONDS": "30"})
        chaos.start_runner(0)
        first = [unique("before") for _ in range(4)]
        for task_id in first:
            chaos.put(task_id, f"feature/{task_id}", details="[fake:sleep=1.5]")
        time.sleep(2.5)  # tasks in flight
        # when: the endpoint goes away for 10 s (moto keeps its state in this process)
        moto.stop()
        down_at = time.time()
        time.sleep(10)
        moto = MotoServer(port=port)
        assert moto.start() == endpoint
        up_at = time.time()
        later = [unique("after") for _ in range(2)]
        for task_id in later:
            chaos.put(task_id, f"feature/{task_id}", details="[fake:sleep=0.2]")
        ids = first + later
        rows = chaos.wait_final(ids, timeout=90)
        lost = chaos.lost(ids)  # read while the endpoint is up
        rode_it_out = chaos.procs[0].poll() is None
    finally:
        chaos.stack.stop()  # the stack's pollers before their endpoint
        moto.stop()
    # then
    lines = chaos.runner_lines()
    outage_lines = [
        ln for ln in lines if ln.get("level") in ("WARNING", "ERROR") and down_at <= _epoch(ln) <= up_at + 1
    ]
    errored = [ln for ln in lines if "errored before its row was final" in str(ln.get("message"))]
    line = summary(
        capsys,
        "aws outage 10 s",
        tasks=len(ids),
        kills=0,
        lost=len(lost),
        double_owned=len(chaos.double_owned(ids)),
        outage_log_lines=len(outage_lines),
        tasks_errored=len(errored),
        duration=chaos.elapsed(),
    )
    assert outage_lines, f"{line}: the runner said nothing about the outage"
    assert not lost and not chaos.double_owned(ids), line
    failed = {t: r.get("error") for t, r in rows.items() if r["status"] != "complete"}
    assert not failed, f"{line}; {failed}"
    assert rode_it_out, line  # the runner did not crash on the outage
    assert all(chaos.commits_for(rows[t]["branch"], t) == 1 for t in ids), line


def _epoch(line: dict) -> float:
    import datetime as dt

    stamp = str(line.get("timestamp", ""))
    try:
        return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f%z").timestamp()
    except ValueError:
        return 0.0
