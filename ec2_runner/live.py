"""Live progress of a running task: its output on the row (``logTail``) and to whoever watches it.

While the agent works, :class:`LiveRun` keeps the last ``LOG_TAIL_CHARS`` of its plain output and
writes them to the row every ``LOG_TAIL_SECONDS`` at most, from a thread of its own (a slow write
never holds the agent's output up), through the claim's ``progress``: a conditional write that only
lands while the row is this claim's under a live lease, so a runner that lost the task stops writing
for good. The same output goes to the task's watchers (:class:`TaskWatchers`): on a runner with a
terminal relay, the session manager, which numbers it, keeps it in a ring from the start of the run
and sends it to read-only browsers (``open {taskId}``) and ``aipm logs --follow``. A run held for a
person's answer (:mod:`ec2_runner.escalation`) shows its question to the same watchers.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ec2_runner.escalation import Question
from shared.store import LOG_TAIL_CHARS, Claim, LeaseLostError
from shared.text import strip_ansi

logger = logging.getLogger(__name__)

LOG_TAIL_SECONDS = 5.0


@dataclass(frozen=True)
class RunEnd:
    """How a watched run ended, as its row says: ``status`` is the row's (``complete``, ``failed``,
    ``pending`` when given back), or ``lost`` when another runner took the task over."""

    status: str
    commit_sha: str | None = None
    error: str | None = None
    error_kind: str | None = None


LOST = RunEnd("lost", error="this runner lost the task (its lease); another attempt carries on")


class TaskWatchers(Protocol):
    """Where a run's output meets its watchers. Called from the task's own thread; never blocks.
    ``ask_run``: the run waits for a person's answer to ``question``, which ``give`` takes (it
    returns None, or why the answer was refused); ``settle_run``: it no longer does."""

    def start_run(self, task_id: str, branch: str) -> None: ...
    def run_output(self, task_id: str, text: str) -> None: ...
    def end_run(self, task_id: str, end: RunEnd) -> None: ...
    def ask_run(self, task_id: str, question: Question, give: Callable[[str], str | None]) -> None: ...
    def settle_run(self, task_id: str, answer: str | None) -> None: ...


class NoWatchers:
    """A runner without a terminal relay: the row's logTail is all there is."""

    def start_run(self, task_id: str, branch: str) -> None:
        return None

    def run_output(self, task_id: str, text: str) -> None:
        return None

    def end_run(self, task_id: str, end: RunEnd) -> None:
        return None

    def ask_run(self, task_id: str, question: Question, give: Callable[[str], str | None]) -> None:
        return None

    def settle_run(self, task_id: str, answer: str | None) -> None:
        return None


class RelayWatchers:
    """The runner's terminal service as the watchers of its tasks: each call goes to its session
    manager on the service's own event loop (thread-safe, never waits for it)."""

    def __init__(self, service: Any) -> None:
        self.service = service  # an ec2_runner.ws_client.TerminalService

    def start_run(self, task_id: str, branch: str) -> None:
        self._call("start_run", task_id, branch)

    def run_output(self, task_id: str, text: str) -> None:
        self._call("run_output", task_id, text)

    def end_run(self, task_id: str, end: RunEnd) -> None:
        self._call("end_run", task_id, end.status, end.commit_sha, end.error, end.error_kind)

    def ask_run(self, task_id: str, question: Question, give: Callable[[str], str | None]) -> None:
        self._call("ask_run", task_id, question.text, question.choices, question.timeout, give)

    def settle_run(self, task_id: str, answer: str | None) -> None:
        self._call("settle_run", task_id, answer)

    def _call(self, name: str, *args: Any) -> None:
        sessions = self.service.sessions
        if sessions is not None:
            self.service.call_soon(getattr(sessions, name), *args)


class LogTail:
    """The last ``limit`` characters of a run's output, ANSI stripped; ``version`` counts changes."""

    def __init__(self, limit: int = LOG_TAIL_CHARS) -> None:
        self.limit = limit
        self._parts: collections.deque[str] = collections.deque()
        self._size = 0
        self._lock = threading.Lock()
        self.version = 0

    def feed(self, text: str) -> None:
        text = strip_ansi(text)
        if not text:
            return
        with self._lock:
            self._parts.append(text)
            self._size += len(text)
            while self._size - len(self._parts[0]) >= self.limit:
                self._size -= len(self._parts.popleft())
            self.version += 1

    def text(self) -> str:
        with self._lock:
            return "".join(self._parts)[-self.limit :]


class LiveRun:
    """One attempt's output on its way to the row and to the watchers; a context manager around the
    attempt. ``lost()`` says when the lease may be gone (no more writes then)."""

    def __init__(
        self,
        claim: Claim,
        watchers: TaskWatchers | None = None,
        *,
        interval: float = LOG_TAIL_SECONDS,
        lost: Callable[[], bool] = lambda: False,
    ) -> None:
        self.claim = claim
        self.watchers = watchers or NoWatchers()
        self.interval = interval
        self.tail = LogTail()
        self._lost = lost
        self._stop = threading.Event()
        self._written = 0
        self._ended: RunEnd | None = None
        self.writes = 0
        ctx = contextvars.copy_context()  # the task id stays on the writer's log lines
        self._thread = threading.Thread(
            target=ctx.run, args=(self._write_loop,), name="log-tail", daemon=True
        )

    def __enter__(self) -> LiveRun:
        self._quietly(self.watchers.start_run, self.claim.task_id, self.claim.task.branch)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._quietly(self.watchers.end_run, self.claim.task_id, self._ended or LOST)

    def output(self, text: str) -> None:
        """The agent printed ``text`` (plain): keep it for the row, pass it to the watchers."""
        self.tail.feed(text)
        self._quietly(self.watchers.run_output, self.claim.task_id, text)

    def ask(self, question: Question, give: Callable[[str], str | None]) -> None:
        """The run waits for a person: the watchers see the question, a read-write one may answer."""
        self._quietly(self.watchers.ask_run, self.claim.task_id, question, give)

    def settled(self, answer: str | None) -> None:
        self._quietly(self.watchers.settle_run, self.claim.task_id, answer)

    def end(self, end: RunEnd) -> None:
        """The row's final word, for the watchers (sent when the attempt is over)."""
        self._ended = end

    def _write_loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self._lost():
                logger.info("log tail: the lease may be gone; no more progress writes")
                return
            version = self.tail.version
            if version == self._written:
                continue
            try:
                self.claim.progress(self.tail.text())
            except LeaseLostError:
                logger.info("log tail: the row is no longer this runner's; no more progress writes")
                return
            except Exception as e:  # transient trouble: the next interval tries again
                logger.warning("log tail not written (%s); trying again", e)
                continue
            self._written = version
            self.writes += 1

    @staticmethod
    def _quietly(fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # the watchers are a view: they never break the task
            logger.exception("task watchers failed")
