"""A fault the runners cannot fix by themselves: a poison task that kills every runner taking it
(the dead-letter function gives it up and files its letter in the DLQ). The AWS endpoint going away
is in test_outage.py (its own file, so the two spread over the test workers)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from shared.dead_letters import DeadLetter, DeadLetterQueue
from tests.chaos.conftest import Chaos, summary
from tests.fixtures import unique, wait_until

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
    # given: maxReceiveCount 3, a 3 s lease with a 4 s margin (7 s visibility; a 2 s lease can be
    # lost on a starved machine before the poison takes its runner down), two supervised runners
    chaos: Chaos = chaos_factory(
        f"poison{slots}",
        parameters={"MaxReceiveCount": 3},
        runner_env={"LEASE_SECONDS": "3", "VISIBILITY_MARGIN_SECONDS": "4", "RUNNER_SLOTS": str(slots)},
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
    assert rows[poison].get("errorKind") == "gave_up", f"{line}; {rows[poison]}"
    assert [rows[t]["status"] for t in good] == ["complete"] * len(good), f"{line}; {rows}"
    assert not chaos.double_owned(ids), line
    # the poison's letter stays in the DLQ for an operator (aipm dlq), saying it was given up
    dlq = DeadLetterQueue(chaos.sqs, chaos.stack.config.dlq_url)  # type: ignore[union-attr]

    def poison_letters() -> list[DeadLetter]:
        with dlq.held() as held:
            return [h.letter for h in held if h.letter.task_id == poison]

    letters = wait_until(poison_letters, 10, what="the poison's letter in the DLQ")
    assert [(x.verdict, x.note) for x in letters] == [("gave_up", rows[poison]["error"])], line
