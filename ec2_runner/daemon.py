"""The runner daemon: long-polls SQS, runs up to ``slots`` tasks at once, stops warm or cold.

Warm stop (SIGTERM or SIGINT, or the instance's stop notice: ``instance_notices``): take no new
messages, let running tasks finish for up to the grace period; then a cold stop: stop their agents,
keep their work on ``kiro-wip/<taskId>``, give the rows back as ``pending`` and make their messages
visible again. A second signal goes cold at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from ec2_runner import logs
from ec2_runner.login_gate import LoginGate
from ec2_runner.pipeline import Outcome, TaskPipeline
from shared.models import TaskSignal

logger = logging.getLogger(__name__)

# the message stays hidden a little longer than the lease, so a crashed runner's task is
# claimable (lease expired) by the time its message is visible again
VISIBILITY_MARGIN = 5
# a message is received hidden for this long only, then hidden for the lease as its task starts:
# one that a poll cut off by a stop still brought (to a runner that is gone) is back within this
RECEIVE_VISIBILITY = 30


def log_transient_faults(client: Any) -> None:
    """Say so when an AWS call fails and botocore retries it (its standard mode retries throttling,
    5xx and connection errors with backoff, silently): an outage shows in the runner's log."""

    def on_needs_retry(
        attempts: int, operation: Any, response: Any = None, caught_exception: Any = None, **_: Any
    ) -> None:
        parsed: dict[str, Any] = response[1] if response else {}
        status = parsed.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if caught_exception is None and status < 500 and status != 429:
            return  # a success, or an error botocore does not retry
        reason = caught_exception or f"HTTP {status}"
        logger.warning(
            "AWS %s failed (attempt %d: %s); retrying with backoff", operation.name, attempts, reason
        )

    client.meta.events.register("needs-retry", on_needs_retry)


def _receive_count(message: dict) -> int:
    try:
        return int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1))
    except (TypeError, ValueError):
        return 1


def _is_task_signal(message: dict) -> bool:
    try:
        TaskSignal.model_validate_json(message.get("Body") or "")
    except ValidationError:
        return False
    return True


class Runner:
    """Consumes task signals from one SQS queue and hands each to the pipeline."""

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        pipeline: TaskPipeline,
        *,
        slots: int = 2,
        wait_time_seconds: int = 20,
        lease_seconds: float = 120,
        shutdown_grace_seconds: float = 30,
        visibility_margin_seconds: int = VISIBILITY_MARGIN,
        login_gate: LoginGate | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.sqs = sqs
        # closed while the agent is not logged in: no receive, so tasks wait for a runner that can
        self.login_gate = login_gate
        self.on_change = on_change or (lambda: None)  # the heartbeat writes soon after a change
        self.holding: dict[str, float] = {}  # task ids this runner works on, with when each began
        self.queue_url = queue_url
        self.pipeline = pipeline
        self.slots = slots
        self.wait_time_seconds = wait_time_seconds
        self.visibility_margin = visibility_margin_seconds
        self.visibility_seconds = int(lease_seconds) + visibility_margin_seconds
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self._stopping = threading.Event()  # warm stop: take no new messages
        self._grace: float | None = None  # a stop that allows less than shutdown_grace_seconds
        self._cold = threading.Event()  # cold stop: stop running agents too
        self._free = threading.Semaphore(slots)
        self._running: set[Future] = set()
        self._lock = threading.Lock()
        self.received = 0
        self.outcomes: dict[str, int] = {}
        log_transient_faults(sqs)
        ddb = getattr(getattr(pipeline, "store", None), "_ddb", None)
        if ddb is not None and hasattr(ddb, "meta"):
            log_transient_faults(ddb)

    # -- control ----------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def busy(self) -> int:
        with self._lock:
            return len(self._running)

    @property
    def waiting_for_login(self) -> bool:
        status = self.login_gate.status if self.login_gate else None
        return status is not None and not status.ready

    def request_stop(self, cold: bool = False, grace_seconds: float | None = None) -> None:
        """Take no new messages; running tasks get ``grace_seconds`` (default: the configured grace,
        and never more than it) to finish before they are parked; ``cold`` parks them at once."""
        if grace_seconds is not None:
            shortest = min(grace_seconds, self._grace if self._grace is not None else grace_seconds)
            self._grace = max(0.0, shortest)
        if cold:
            self._cold.set()
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT ask for a warm stop; a second one for a cold stop."""

        def handler(signum: int, _frame: Any) -> None:
            cold = self._stopping.is_set()
            logger.info("%s received: %s stop", signal.Signals(signum).name, "cold" if cold else "warm")
            self.request_stop(cold=cold)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # -- main loop --------------------------------------------------------------------------
    def run(self, max_tasks: int | None = None, stop_when_idle: bool = False) -> int:
        """Serve until stopped (or ``max_tasks`` handled, or the queue is empty with
        ``stop_when_idle``); returns how many messages were handled."""
        logger.info("runner started: %d slots, long-polling %s", self.slots, self.queue_url)
        pool = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="slot")
        try:
            self._serve(pool, max_tasks, stop_when_idle)
        finally:
            self._drain()
            pool.shutdown(wait=True)
            logger.info("runner stopped after %d messages (%s)", self.received, self.outcomes)
        return self.received

    def _serve(self, pool: ThreadPoolExecutor, max_tasks: int | None, stop_when_idle: bool) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            if max_tasks is not None and self.received >= max_tasks:
                break
            if not self._agent_ready():
                if stop_when_idle and not self._running:
                    break  # nothing it can take: idle
                continue
            free = self._acquire_slots(max_tasks, self.received)
            if not free:
                continue
            poll = self._receive_in_background(
                QueueUrl=self.queue_url,
                # one message per receive: messages received together would become visible together
                # again if their runner died, and keep sharing one runner's fate (a poison's slot-mate)
                MaxNumberOfMessages=1,
                WaitTimeSeconds=0 if stop_when_idle and self.received else self.wait_time_seconds,
                VisibilityTimeout=min(self.visibility_seconds, RECEIVE_VISIBILITY),
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
            while not poll.done() and not self._stopping.is_set():
                wait([poll], timeout=0.2)
            if self._stopping.is_set():
                # stopping mid-poll (the poll may have brought something the moment the signal
                # came): whatever it brings goes straight back to the queue, never started
                poll.add_done_callback(self._give_back)
                self._release(free)
                break
            try:
                messages = poll.result().get("Messages", [])
                backoff = 0.5
            except (ClientError, BotoCoreError) as e:
                self._release(free)
                logger.warning("SQS receive failed (%s); retrying in %.1f s", e, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 20)
                continue
            self._release(free - len(messages))
            if not messages:
                if stop_when_idle and not self._running:
                    break
                continue
            for message in messages:
                # received before: its runner may have died of it (a poison task), so it runs alone
                # and cannot take a slot-mate down with it
                suspect = _receive_count(message) > 1 and _is_task_signal(message)
                if suspect:
                    self._wait_alone(message)
                    if self._stopping.is_set():
                        # stopped while it waited its turn: it was never started, so it goes back
                        self._make_visible(message["ReceiptHandle"])
                        self._release(1)
                        break
                self.received += 1
                # counted busy before its handler can hold the task: a heartbeat in between would
                # show the task in a slot it calls free
                with self._lock:
                    fut = pool.submit(self._handle, message)
                    self._running.add(fut)
                fut.add_done_callback(self._done)
                if suspect:
                    while not fut.done() and not self._stopping.is_set():
                        wait([fut], timeout=0.2)

    def _agent_ready(self) -> bool:
        """Whether the agent can run a task; if not, wait a little (stop still ends the wait)."""
        if self.login_gate is None:
            return True
        before = self.login_gate.status
        ready = self.login_gate.ready()
        if before is None or before.ready != ready:
            self.on_change()
        if not ready:
            self._stopping.wait(min(1.0, self.login_gate.recheck_seconds))
        return ready

    def _wait_alone(self, message: dict) -> None:
        """Wait until no other task runs here, keeping ``message`` hidden meanwhile."""
        self._hide(message["ReceiptHandle"])
        last = time.monotonic()
        while self._running and not self._stopping.is_set():
            wait(list(self._running), timeout=0.2)
            if time.monotonic() - last > self.visibility_seconds / 3:
                last = time.monotonic()
                self._hide(message["ReceiptHandle"])

    def _hide(self, receipt: str, seconds: int | None = None) -> None:
        """Keep a message this runner works on hidden for a lease (and its margin)."""
        # the row's lease is what counts; the heartbeat tries again on its next beat
        self._set_visibility(receipt, self.visibility_seconds if seconds is None else seconds, "extend")

    def _set_visibility(self, receipt: str, seconds: int, what: str) -> None:
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=receipt, VisibilityTimeout=seconds
            )
        except (ClientError, BotoCoreError) as e:
            logger.warning("could not %s the message's visibility (%s); the row is the truth", what, e)

    def _receive_in_background(self, **kwargs: Any) -> Future:
        """The long poll in a daemon thread, so a stop (or the process exit) never waits for it."""
        poll: Future = Future()

        def receive() -> None:
            try:
                poll.set_result(self.sqs.receive_message(**kwargs))
            except BaseException as e:  # handed to the main loop through the future
                poll.set_exception(e)

        threading.Thread(target=receive, name="sqs-poll", daemon=True).start()
        return poll

    def _give_back(self, poll: Future) -> None:
        if poll.exception() is None:
            for message in poll.result().get("Messages", []):
                self._make_visible(message["ReceiptHandle"])

    def _drain(self) -> None:
        """Let running tasks finish within the grace period, then stop them (cold)."""
        with self._lock:
            running = set(self._running)
        if not running:
            return
        grace = self.shutdown_grace_seconds
        if self._grace is not None:
            grace = min(grace, self._grace)
        if not self._cold.is_set():
            logger.info("waiting up to %.0f s for %d running task(s)", grace, len(running))
            _, running = wait(running, timeout=grace)
        if running:
            logger.warning("stopping %d running task(s) and giving them back", len(running))
            self._cold.set()
            wait(running)

    def _acquire_slots(self, max_tasks: int | None, received: int) -> int:
        if not self._free.acquire(timeout=0.5):
            return 0
        n = 1
        limit = self.slots if max_tasks is None else min(self.slots, max_tasks - received)
        while n < limit and self._free.acquire(blocking=False):
            n += 1
        return n

    def _release(self, n: int) -> None:
        for _ in range(max(n, 0)):
            self._free.release()

    def _done(self, fut: Future) -> None:
        with self._lock:
            self._running.discard(fut)
        self._free.release()

    # -- one message ------------------------------------------------------------------------
    def _handle(self, message: dict) -> None:
        receipt = message["ReceiptHandle"]
        try:
            sig = TaskSignal.model_validate_json(message.get("Body") or "")
        except ValidationError as e:
            # a body that can never name a task: visible again at once, so its receives run out
            # quickly and SQS moves it to the dead-letter queue, where operators see it as such
            reason = e.errors()[0]["msg"] if e.errors() else str(e)
            logger.error(
                "SQS message %s is not a task signal (%s); left for the dead-letter queue (receive %d)",
                message.get("MessageId"),
                reason,
                _receive_count(message),
            )
            self._make_visible(receipt)
            return
        with logs.task_context(sig.task_id), self._holding(sig.task_id):
            self._hide(receipt)
            try:
                outcome = self.pipeline.process(
                    sig.task_id,
                    extend_visibility=lambda s: self._hide(receipt, int(s) + self.visibility_margin),
                    should_stop=self._cold.is_set,
                )
            except Exception:
                # the row is not final: leave the message; it comes back after its visibility
                # timeout and, past maxReceiveCount, goes to the dead-letter function, which gives
                # the task up and files the letter for operators
                logger.exception("task errored before its row was final; the message will be retried")
                return
            logger.info("signal handled: %s", outcome.value)
            with self._lock:
                self.outcomes[outcome.value] = self.outcomes.get(outcome.value, 0) + 1
            if outcome is Outcome.RELEASED:
                self._make_visible(receipt)
            elif outcome not in (Outcome.LEASE_LOST, Outcome.DEFERRED):
                self._delete(receipt)  # (a deferred message stays hidden for the task's backoff)

    @contextlib.contextmanager
    def _holding(self, task_id: str) -> Iterator[None]:
        with self._lock:
            self.holding[task_id] = time.time()
        self.on_change()
        try:
            yield
        finally:
            with self._lock:
                self.holding.pop(task_id, None)
            self.on_change()

    def _make_visible(self, receipt: str) -> None:
        self._set_visibility(receipt, 0, "reset")

    def _delete(self, receipt: str) -> None:
        for attempt in range(3):
            try:
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)
                return
            except (ClientError, BotoCoreError) as e:
                logger.warning("delete_message failed (%s)", e)
                time.sleep(0.2 * (attempt + 1))
