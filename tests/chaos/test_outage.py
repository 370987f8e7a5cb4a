"""A fault the runners ride out: the AWS endpoint going away for 10 s while tasks are in flight."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from local.motoserver import MotoServer
from tests.chaos.conftest import Chaos, summary
from tests.fixtures import unique

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(150)]


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
        down_at = time.time()  # the outage starts as the server starts to go (its stop waits for open polls)
        moto.stop()
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
