"""The runner's heartbeat counts a task's slot as busy from the moment the task is held: the
record `aipm runners` shows never lists a task in a slot it calls free."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from ec2_runner import daemon
from ec2_runner.daemon import Runner
from ec2_runner.pipeline import Outcome
from tests.unit.test_runner_visibility import QUEUE, stubbed_sqs

pytestmark = pytest.mark.unit


class EagerPool(ThreadPoolExecutor):
    """A pool whose worker starts a submitted task before ``submit`` returns, as a loaded machine
    may schedule it: the caller's next line runs only once the task is under way."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        started = threading.Event()

        def run() -> Any:
            started.set()
            return fn(*args, **kwargs)

        fut = super().submit(run)
        started.wait(5)
        return fut


class Completing:
    def process(self, task_id: str, extend_visibility: Callable[[float], Any], should_stop: Any) -> Outcome:
        return Outcome.COMPLETE


def test_a_held_task_is_counted_busy_in_every_heartbeat_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon, "ThreadPoolExecutor", EagerPool)
    sqs, stub = stubbed_sqs([12, 12])
    seen: list[tuple[int, int]] = []
    runner: Runner

    def snapshot() -> None:  # what the heartbeat reads when it is poked
        seen.append((runner.busy, len(runner.holding)))

    runner = Runner(sqs, QUEUE, Completing(), lease_seconds=7, on_change=snapshot)  # type: ignore[arg-type]
    assert runner.run(max_tasks=1) == 1
    stub.assert_no_pending_responses()
    # held (busy 1, one task), then let go (the slot frees once the handler returns)
    assert seen[0] == (1, 1), seen
    assert all(busy >= held for busy, held in seen), seen
