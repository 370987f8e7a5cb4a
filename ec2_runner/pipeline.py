"""One task, start to finish: claim, worktree, agent, commit, push, write the status back."""

from __future__ import annotations

import contextvars
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ec2_runner import metrics
from ec2_runner.agents import Agent, AgentResult
from ec2_runner.escalation import Escalation, Question
from ec2_runner.gitops import (
    Checkout,
    DeadlineError,
    GitOpError,
    GitWorkspace,
    PushConflictError,
    RefRejectedError,
    safe_dir_name,
)
from ec2_runner.live import LOG_TAIL_SECONDS, LiveRun, RunEnd, TaskWatchers
from shared.branches import WIP_PREFIX, UnsafeBranchError, check_branch
from shared.dispatch import Dispatcher
from shared.models import ErrorKind, Task, TaskSignal, TaskStatus
from shared.store import (
    CANCELLED_ERROR,
    BranchBusyError,
    CancelRequestedError,
    Claim,
    ClaimLostError,
    InvalidRowError,
    LeaseLostError,
    TaskNotFoundError,
    TaskRepository,
)
from shared.task_checks import refusal
from shared.text import clean_text

logger = logging.getLogger(__name__)

SHUTDOWN = "runner shutting down"
LEASE_LOST = "lease lost to another runner"
CANCELLED = "cancelled by an operator"
LEASE_GONE = "the row is no longer this runner's (another runner took it over, or its lease ran out first)"
# the time a git push killed at its timeout takes to stop (SafeGit SIGKILLs git's whole process group
# and reaps it): a push is given what remains of its lease less this
KILL_SECONDS = 0.25


class Outcome(Enum):
    COMPLETE = "complete"  # row final: complete
    FAILED = "failed"  # row final: failed
    NOT_CLAIMABLE = "not-claimable"  # a duplicate or stale signal: the row is someone else's or ended
    WAITING = "waiting"  # another task holds the branch; its end wakes this one
    RELEASED = "released"  # given back as pending (shutdown); the message should be visible again
    LEASE_LOST = "lease-lost"  # another runner took the row over; it owns the outcome now
    DEFERRED = "deferred"  # a rate-limited task's backoff has not passed: the message stays hidden till then


@dataclass
class PipelineOptions:
    protected_branches: tuple[str, ...]
    lease_seconds: float = 120.0
    max_details_bytes: int = 64 * 1024
    fail_on_no_changes: bool = True
    no_changes_error: str = "agent made no changes"
    keep_failed_worktrees: bool = False
    rate_limit_backoff: float = 60.0  # a rate-limited task goes back to pending for this long
    log_tail_seconds: float = LOG_TAIL_SECONDS  # the row's logTail is written this often at most


def wip_ref(task_id: str) -> str:
    """The runner-owned branch where a stopped attempt's work is kept: ``kiro-wip/<taskId>``."""
    try:
        # the id itself must be a safe ref name (the prefix is reserved for exactly this use)
        return f"kiro-wip/{check_branch(task_id, protected=())}"
    except UnsafeBranchError:
        return "kiro-wip/" + re.sub(r"\.{2,}", ".", safe_dir_name(task_id))


@dataclass(frozen=True)
class LeaseProof:
    """A renewal that came back inside the lease it wrote: the row is this runner's until
    ``deadline`` (monotonic; the renewal's send time plus the lease, less the heartbeat's margin)."""

    deadline: float
    clock: Callable[[], float] = time.monotonic

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def push_timeout(self) -> float:
        """How long a push starting now may take to be over inside the lease (<= 0: none left)."""
        return self.remaining() - KILL_SECONDS


class Heartbeat:
    """Renews the row's lease, and then the message's visibility, until stopped.

    The lease counts as lost (``is_lost()``) when the row is someone else's, and also when no renewal
    has succeeded for the lease's length less a margin: by then another runner may have reclaimed the
    row, so the agent must stop and nothing may be pushed to the task's branch. The check reads the
    clock, so it holds even while a renewal call hangs. Before a push, ``renew_now()`` gives proof of
    the lease, and until when it holds.
    """

    def __init__(
        self,
        renew: Callable[[], Any],
        interval: float,
        lease_seconds: float,
        *,
        extend: Callable[[], Any] | None = None,
        since: float | None = None,
        margin: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._renew = renew
        self._clock = clock
        self._extend = extend
        self._interval = interval
        # a lease runs from when its write was sent; the margin covers clock skew between runners
        # and the time it takes to stop the agent
        if margin is None:
            margin = min(max(lease_seconds / 4, interval), 30.0)
        self._budget = max(lease_seconds - margin, interval)
        self._last_ok = clock() if since is None else since
        self._stop = threading.Event()
        self.lost = threading.Event()
        self.cancelled = threading.Event()  # an operator's cancel refused a renewal: stop, keep, fail
        self.reason = ""
        ctx = contextvars.copy_context()  # keep the task id on the heartbeat's log lines
        self._thread = threading.Thread(target=ctx.run, args=(self._loop,), name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def is_lost(self) -> bool:
        """True once the row may no longer be this runner's."""
        if self.lost.is_set():
            return True
        silent = self._clock() - self._last_ok
        if silent > self._budget:
            self.lose(f"no lease renewal succeeded for {silent:.1f} s (lease budget {self._budget:.1f} s)")
            return True
        return False

    def renew_now(self) -> LeaseProof | None:
        """One synchronous renewal (right before a push): proof that the row is this runner's, under
        a lease that holds until the proof's deadline; None (and the lease lost) otherwise.

        The store writes a lease counted from before its call, so a call that took longer than the
        lease wrote one that has already passed: another runner may hold the row by then. Only a
        renewal that came back before its send time plus the lease (less the margin) proves anything."""
        if self.is_lost():
            return None
        sent = self._clock()
        try:
            self._renew()
        except CancelRequestedError:
            self.cancel()
            return None
        except LeaseLostError:
            self.lose(LEASE_GONE)
            return None
        except Exception as e:
            self.lose(f"the lease could not be renewed before the push ({e})")
            return None
        took = self._clock() - sent
        if took >= self._budget:
            self.lose(
                f"the renewal before the push took {took:.1f} s, longer than the {self._budget:.1f} s"
                " a lease can be counted on (the store is slow or unreachable)"
            )
            return None
        self._last_ok = max(self._last_ok, sent)
        if self.lost.is_set():  # the heartbeat found the row someone else's meanwhile
            return None
        return LeaseProof(sent + self._budget, self._clock)

    def lose(self, reason: str) -> None:
        """Count the lease as lost from now on (the first reason stays): the agent stops and nothing
        more is pushed to the task's branch."""
        if not self.lost.is_set():
            self.reason = reason
            logger.warning("lease lost: %s; stopping", reason)
            self.lost.set()

    def cancel(self) -> None:
        """An operator asked the task to stop: the agent stops, its work is kept, the row fails."""
        if not self.cancelled.is_set():
            logger.warning("cancel requested by an operator; stopping the agent")
            self.cancelled.set()

    def _loop(self) -> None:
        wait = self._interval
        while not self._stop.wait(wait):
            if self.is_lost():
                return
            sent = self._clock()
            try:
                self._renew()
            except CancelRequestedError:
                self.cancel()
                return
            except LeaseLostError:
                self.lose(LEASE_GONE)
                return
            except Exception as e:  # transient AWS trouble: retry sooner, until the budget runs out
                logger.warning("heartbeat failed (%s); will retry", e)
                if self.is_lost():
                    return
                wait = self._interval / 3
                continue
            self._last_ok = max(self._last_ok, sent)
            wait = self._interval
            if self._extend is not None:
                try:
                    self._extend()
                except Exception as e:  # the row is what counts; the message is hidden a while longer
                    logger.warning("could not extend the message's visibility (%s); will retry", e)


class TaskPipeline:
    """Runs one task to a final row. Stateless between tasks; safe to call from several slots."""

    def __init__(
        self,
        store: TaskRepository,
        workspace: GitWorkspace,
        agent: Agent,
        runner_id: str,
        options: PipelineOptions,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.store = store
        self.workspace = workspace
        self.agent = agent
        self.runner_id = runner_id
        self.options = options
        self.dispatcher = dispatcher
        self.watchers: TaskWatchers | None = None  # the terminal relay's, once it runs (main.py)

    def process(
        self,
        task_id: str,
        extend_visibility: Callable[[float], Any] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Outcome:
        """Claim and run ``task_id``. ``extend_visibility(seconds)`` keeps the SQS message hidden
        while the task runs; ``should_stop()`` true asks the task to stop and give itself back."""
        # 1. read the row: the signal is only a hint, the row is the truth
        try:
            task = self.store.get(task_id)
        except TaskNotFoundError:
            logger.warning("no such task; dropping the signal")
            return Outcome.NOT_CLAIMABLE
        except InvalidRowError as e:
            return self._fail_unclaimed(task_id, e.reason)
        # a rate-limited task waits out its backoff: its message comes back when the backoff ends
        wait = (task.retry_after or 0.0) - time.time()
        if task.status is TaskStatus.PENDING and wait > 0:
            logger.info("rate-limited task waits %.1f s more before its next attempt", wait)
            if extend_visibility:
                extend_visibility(math.ceil(wait))
            return Outcome.DEFERRED
        # a reclaim of a row whose owner died: it may have pushed before it could write the status
        earlier_base = task.base_sha if task.status is TaskStatus.PROCESSING else None
        # 2. claim it, with its branch's lock (one task per branch)
        claim_sent = time.monotonic()  # the lease runs from here
        try:
            claim = self.store.claim(task, self.runner_id, self.options.lease_seconds)
        except ClaimLostError:
            logger.info("not claimable (owned by another runner or already ended); dropping the signal")
            return Outcome.NOT_CLAIMABLE
        except BranchBusyError as e:
            # the holder's end signals the task waiting longest for the branch (_wake_next)
            logger.info("branch %s is locked by task %s; this task waits for it", e.branch, e.holder)
            self._note_waiting(task, e.branch, e.holder)
            return Outcome.WAITING
        except InvalidRowError as e:
            # the row itself cannot take the claim: retrying the signal would fail the same way
            return self._fail_unclaimed(task_id, e.reason)
        logger.info("claimed (attempt %d)", claim.attempt)
        measures = metrics.TaskMeasures(task_id, claim.attempt, claimed=claim_sent)
        if claim.attempt == 1:  # a reclaim's age since createdAt says nothing about the pick-up
            measures.pickup_ms = metrics.pickup_ms(task.created_at)
        if task.status is TaskStatus.PROCESSING and task.cancel_requested_at:
            # cancelled while its last runner ran it, and that runner died before it saw the cancel
            claim.fail(CANCELLED_ERROR, kind=ErrorKind.CANCELLED)
            logger.warning("task failed (cancelled): its earlier attempt was cancelled")
            self._wake_next(task.branch, task_id)
            return Outcome.FAILED
        # 3. run it under a heartbeat that keeps the lease (and the message) alive
        lease = self.options.lease_seconds

        def extend() -> None:
            if extend_visibility:
                extend_visibility(lease)

        outcome = Outcome.LEASE_LOST
        heartbeat = Heartbeat(
            lambda: claim.renew(lease), max(lease / 3, 0.5), lease, extend=extend, since=claim_sent
        )
        live = LiveRun(claim, self.watchers, interval=self.options.log_tail_seconds, lost=heartbeat.is_lost)
        with heartbeat as beat, live:
            attempt = Attempt(self, claim, beat, should_stop or (lambda: False), measures, live)
            try:
                outcome = attempt.run(earlier_base)
            except LeaseLostError:
                logger.warning("lease lost before the status write; the new owner decides the outcome")
            if attempt.ended is not None:
                live.end(attempt.ended)
        metrics.emit_attempt(measures, outcome.value)
        # 4. the branch is free (or changed hands): the task waiting longest for it gets a signal
        if outcome in (Outcome.COMPLETE, Outcome.FAILED, Outcome.RELEASED, Outcome.LEASE_LOST):
            self._wake_next(task.branch, task_id)
        return outcome

    def _note_waiting(self, task: Task, branch: str, holder: str | None) -> None:
        """Say on the waiting task's row what it waits for (``waitingFor``), unless it says so already.
        Only a note: a failed write leaves the task waiting all the same."""
        note = f"branch {branch} is being worked on by {f'task {holder}' if holder else 'another task'}"
        if task.waiting_for == note:
            return
        try:
            self.store.note_waiting(
                task.id, note, task.attempts if "attempts" in task.model_fields_set else None
            )
        except Exception as e:  # the wait itself is the claim's refusal, already decided
            logger.warning("could not note on the row what the task waits for (%s)", e)

    def _fail_unclaimed(self, task_id: str, reason: str) -> Outcome:
        if not self.store.fail_unowned(task_id, reason, ErrorKind.INVALID_TASK):
            # a live runner holds the row, or it has ended: it is not this signal's to fail
            logger.warning("unreadable row left alone (someone else's, or ended): %s", reason)
            return Outcome.NOT_CLAIMABLE
        logger.error("task failed: %s", reason)
        metrics.emit_failure(task_id, ErrorKind.INVALID_TASK.value)
        return Outcome.FAILED

    def _wake_next(self, branch: str, task_id: str) -> None:
        """Signal the oldest task waiting for ``branch`` now that ``task_id`` let it go (a task given
        back as pending is not its own waiter: its message is made visible again anyway). A
        reclaim can wait too (a dead runner's task, refused while another task of its branch ran):
        such a row stays processing under its expired lease."""
        if not self.dispatcher:
            return
        try:
            pending = self.store.list_by_status(TaskStatus.PENDING, branch=branch, limit=2)
            waiting = [t for t in pending if t.id != task_id]
            if not waiting:
                now = time.time()
                waiting = [
                    t
                    for t in self.store.list_by_status(TaskStatus.PROCESSING, branch=branch)
                    if t.id != task_id and t.lease_expires_at is not None and t.lease_expires_at < now
                ]
            if waiting:
                self.dispatcher.send(TaskSignal(task_id=waiting[0].id, reason=f"branch {branch} free"))
                logger.info("woke task %s waiting for branch %s", waiting[0].id, branch)
        except Exception as e:  # the reconciler re-signals old pending rows anyway
            logger.warning("could not wake tasks waiting for %s (%s)", branch, e)


class Attempt:
    """One claimed attempt at a task: checks, worktree, agent, commit, push, status write.

    ``keep`` says whether the worktree stays when the attempt ends (work that could not be
    saved anywhere else, or a failed task's folder kept for inspection)."""

    def __init__(
        self,
        pipeline: TaskPipeline,
        claim: Claim,
        beat: Heartbeat,
        should_stop: Callable[[], bool],
        measures: metrics.TaskMeasures | None = None,
        live: LiveRun | None = None,
    ) -> None:
        self.workspace = pipeline.workspace
        self.agent = pipeline.agent
        self.options = pipeline.options
        self.runner_id = pipeline.runner_id
        self.claim = claim
        self.task = claim.task
        self.beat = beat
        self.should_stop = should_stop
        self.measures = measures or metrics.TaskMeasures(claim.task.id, claim.attempt)
        self.live = live
        self.keep = False
        self.ended: RunEnd | None = None  # the row's final word, as this attempt wrote it

    def run(self, earlier_base: str | None) -> Outcome:
        refusal = self._refusal()
        if refusal:
            return self._fail(*refusal)
        started = time.monotonic()
        try:
            checkout = self.workspace.checkout(
                self.task.branch,
                f"task-{self.task.id}",
                start_sha=self.task.wip_sha,
                start_ref=_start_ref(self.task),
            )
        except GitOpError as e:
            return self._fail(str(e), ErrorKind.GIT_FAILED)
        try:  # from here on, whatever fails, the worktree goes (or is kept on purpose)
            return self._in_worktree(checkout, earlier_base, started)
        except GitOpError as e:
            self.keep = self.options.keep_failed_worktrees
            return self._fail(str(e), ErrorKind.GIT_FAILED)
        finally:
            if not self.keep:
                self.workspace.remove(checkout.path)

    def _refusal(self) -> tuple[str, ErrorKind] | None:
        """Why the task cannot run at all (too large, an unsafe branch) and its kind, or None: the
        rules ``aipm submit`` checks too (``shared.task_checks``)."""
        found = refusal(self.task, self.options.protected_branches, self.options.max_details_bytes)
        return None if found is None else (found.message, found.kind)

    def _in_worktree(self, checkout: Checkout, earlier_base: str | None, started: float) -> Outcome:
        task = self.task
        if earlier_base:
            pushed = self.workspace.find_task_commit(task.branch, earlier_base, clean_text(task.id))
            if pushed:
                # the dead owner's push landed; running the agent again would push the work twice
                self._complete(pushed)
                logger.info("complete: the earlier attempt had pushed %s to %s", pushed[:12], task.branch)
                return Outcome.COMPLETE
        self.claim.record(base_sha=checkout.base_sha)
        prep = time.monotonic() - started
        result = self._run_agent(checkout)
        tail = result.output[-2000:] if result.output else ""
        if result.session_id:
            self.claim.record(agent_session_id=result.session_id)
        if self.beat.cancelled.is_set():
            return self._cancelled(checkout, tail)
        if self.beat.is_lost():
            self.keep = self._lease_lost(checkout).unsaved
            return Outcome.LEASE_LOST
        if not result.ok:
            return self._agent_failed(checkout, result, tail)
        after = time.monotonic()
        delivered = self._deliver(checkout, tail)
        if isinstance(delivered, Outcome):
            return delivered
        self._complete(delivered, tail)
        logger.info(
            "complete: pushed %s to %s (runner overhead %.3f s, agent %.1f s)",
            delivered[:12],
            task.branch,
            prep + (time.monotonic() - after),
            result.duration,
        )
        return Outcome.COMPLETE

    def _run_agent(self, checkout: Checkout) -> AgentResult:
        def stop_reason() -> str | bool:
            if self.beat.cancelled.is_set():
                return CANCELLED
            if self.beat.is_lost():
                return LEASE_LOST
            return SHUTDOWN if self.should_stop() else False

        log_progress = _progress_logger()
        live = self.live

        def on_output(chunk: str) -> None:
            log_progress(chunk)
            if live is not None:
                live.output(chunk)

        logger.info("agent starting in %s", checkout.path)
        escalation = Escalation(self._asked, self._settled)
        result = self.agent.run(
            self.task.prompt(), checkout.path, on_output=on_output, should_stop=stop_reason, asker=escalation
        )
        logger.info("agent finished in %.1f s (exit %s, ok %s)", result.duration, result.exit_code, result.ok)
        self.measures.agent_ms = result.duration * 1000
        return result

    def _asked(self, question: Question, give: Callable[[str], str | None]) -> None:
        """The agent waits for a person (``APPROVAL=escalate``): the row says so (``waitingFor``),
        the task's watchers see the question and a read-write one may answer it."""
        try:
            self.claim.record(waiting_for=question.waiting_for())
        except Exception as e:  # the question stands; the row is only its notice
            logger.warning("could not note the question on the row (%s)", e)
        if self.live is not None:
            self.live.ask(question, give)

    def _settled(self, question: Question, answer: str | None) -> None:
        try:
            self.claim.record(waiting_for=None)
        except Exception as e:
            logger.warning("could not clear the question from the row (%s)", e)
        if self.live is not None:
            self.live.settled(answer)

    def _agent_failed(self, checkout: Checkout, result: AgentResult, tail: str) -> Outcome:
        self.keep = self.options.keep_failed_worktrees
        if self.should_stop():
            saved = self._keep_work(checkout)
            self.keep = self.keep or saved.unsaved
            return self._release(saved, checkout)
        error = result.error or "agent failed"
        if result.kind is ErrorKind.AGENT_RATE_LIMITED:
            return self._back_off(checkout, result)
        if result.exit_code is None or result.keep_work:  # killed (timeout), a turn limit: keep the work
            saved = self._keep_work(checkout)
            self.keep = self.keep or saved.unsaved
            error = _with_note(error, saved.note(checkout.path))
        return self._fail(error, result.kind or ErrorKind.AGENT_EXIT, tail)

    def _back_off(self, checkout: Checkout, result: AgentResult) -> Outcome:
        """A rate-limited run: the task goes back to pending, not claimed again before the backoff."""
        saved = self._keep_work(checkout)
        self.keep = self.keep or saved.unsaved
        backoff = self.options.rate_limit_backoff
        note = _with_note(f"{result.error}; retrying after {backoff:g} s", saved.note(checkout.path))
        self.claim.release(note, retry_after=time.time() + backoff)
        logger.warning("task given back as pending (rate limited): %s", note)
        return Outcome.RELEASED

    def _deliver(self, checkout: Checkout, tail: str) -> str | Outcome:
        """Commit the agent's work and push it to the task's branch: the commit's sha, or the
        outcome that ends the attempt instead (no changes, lease lost, a push that failed)."""
        task = self.task
        if task.wip_sha and checkout.base_sha == task.wip_sha:
            self.workspace.squash_onto_upstream(checkout.path, task.branch)  # WIP + rest: one commit
        sha = self.workspace.commit_all(checkout.path, _commit_message(task))
        if sha is None and self.workspace.head(checkout.path) == checkout.base_sha:
            if self.options.fail_on_no_changes:
                return self._fail(self.options.no_changes_error, ErrorKind.NO_CHANGES, tail)
            return checkout.base_sha
        # proof of ownership right before the push: a runner whose row was reclaimed (or that
        # cannot tell) must not push to the task's branch, and the push must end inside the lease
        proof = self.beat.renew_now()
        if proof is None and self.beat.cancelled.is_set():
            return self._cancelled(checkout, tail)
        if proof is None:
            self.keep = self._lease_lost(checkout).unsaved
            return Outcome.LEASE_LOST
        pushing = time.monotonic()
        try:
            pushed = self.workspace.push(checkout.path, task.branch, timeout=proof.push_timeout())
        except DeadlineError as e:
            # the lease ended mid-push: treated as lost (the next attempt looks for a push that
            # landed anyway before running the agent again)
            self.beat.lose(f"{e} (the rest of the lease); if it landed anyway, the next attempt finds it")
            self.keep = self._lease_lost(checkout).unsaved
            return Outcome.LEASE_LOST
        except GitOpError as e:  # a conflict, a refusal, the network: the task fails, its work stays
            saved = self._keep_work(checkout)
            self.keep = self.options.keep_failed_worktrees or saved.unsaved
            return self._fail(_with_note(str(e), saved.note(checkout.path)), push_kind(e), tail)
        self.measures.push_ms = (time.monotonic() - pushing) * 1000
        logger.info("pushed %s to %s (attempt %d)", pushed[:12], task.branch, self.claim.attempt)
        return pushed

    def _fail(self, error: str, kind: ErrorKind, log_tail: str = "") -> Outcome:
        logger.error("task failed (%s): %s", kind.value, error, extra={"error_kind": kind.value})
        self.claim.fail(error, log_tail, kind=kind)
        self.measures.error_kind = kind.value
        self.ended = RunEnd(TaskStatus.FAILED.value, error=error, error_kind=kind.value)
        return Outcome.FAILED

    def _complete(self, sha: str, log_tail: str = "") -> None:
        self.claim.complete(sha, log_tail)
        self.ended = RunEnd(TaskStatus.COMPLETE.value, commit_sha=sha)

    def _cancelled(self, checkout: Checkout, tail: str) -> Outcome:
        """An operator cancelled the run: its work goes to the WIP ref, the row ends cancelled."""
        saved = self._keep_work(checkout)
        self.keep = self.keep or saved.unsaved
        return self._fail(_with_note(CANCELLED_ERROR, saved.note(checkout.path)), ErrorKind.CANCELLED, tail)

    def _save_wip(self, checkout: Checkout) -> SavedWork:
        """Commit whatever the agent changed and push it, never forced, to ``kiro-wip/<taskId>`` (or,
        when that holds other work, to a fresh ``kiro-wip/<taskId>-<attempt>``)."""
        task = self.task
        try:
            title, task_id = clean_text(task.title).replace("\n", " "), clean_text(task.id)
            self.workspace.commit_all(checkout.path, f"WIP: {title}\n\nTask-Id: {task_id}\n")
            head = self.workspace.head(checkout.path)
            if head == checkout.base_sha:
                return SavedWork()
            sha, ref = self.workspace.push_wip(checkout.path, wip_refs(task.id, self.claim.attempt, head))
        except Exception as e:  # the push above all (network, refusal); the worktree still has it
            logger.error("could not save the work in progress: %s", e)
            return SavedWork(unsaved=True)
        logger.info("work in progress saved on %s at %s", ref, sha[:12])
        return SavedWork(sha=sha, ref=ref)

    def _keep_work(self, checkout: Checkout) -> SavedWork:
        """Save the work in progress and record it on the row, where the next attempt starts from it."""
        saved = self._save_wip(checkout)
        if saved.sha:
            self.claim.record(wip_sha=saved.sha, wip_ref=saved.ref)
        return saved

    def _lease_lost(self, checkout: Checkout) -> SavedWork:
        """Keep the work on the WIP ref; the row belongs to whoever holds it now (or to no one
        once the lease runs out), so it is only told of the WIP if it is still this runner's."""
        logger.warning("not pushing to %s: %s", self.task.branch, self.beat.reason or LEASE_LOST)
        saved = self._save_wip(checkout)
        if saved.sha:
            try:
                self.claim.record(wip_sha=saved.sha, wip_ref=saved.ref)
            except Exception as e:  # LeaseLostError above all: the new owner starts from its own base
                logger.info("work in progress not recorded on the row (%s)", type(e).__name__)
        if saved.unsaved:
            logger.warning("the agent's work stays in %s", checkout.path)
        return saved

    def _release(self, saved: SavedWork, checkout: Checkout) -> Outcome:
        note = _with_note(f"released by runner {self.runner_id}: {SHUTDOWN}", saved.note(checkout.path))
        self.claim.release(note)
        self.ended = RunEnd(TaskStatus.PENDING.value, error=note)
        logger.warning("task given back as pending: %s", note)
        return Outcome.RELEASED


@dataclass(frozen=True)
class SavedWork:
    """Where a stopped attempt's work went: pushed (``sha`` on ``ref``), nothing to save, or
    ``unsaved`` (the push failed: the worktree is kept so the work is not lost)."""

    sha: str | None = None
    ref: str | None = None
    unsaved: bool = False

    def note(self, path: Path) -> str:
        if self.sha:
            return f"the agent's work is kept on {self.ref} at {self.sha[:12]}"
        if self.unsaved:
            return f"the agent's work could not be pushed and is kept in the worktree {path}"
        return ""


def wip_refs(task_id: str, attempt: int, sha: str) -> list[str]:
    """Where a WIP may go, in order: ``kiro-wip/<taskId>``, then refs of this attempt's own (git
    refuses ``kiro-wip/<id>`` and ``kiro-wip/<id>/x`` together, hence the dash)."""
    base = wip_ref(task_id)
    return [base, f"{base}-{attempt}", f"{base}-{attempt}-{sha[:12]}"]


def push_kind(e: GitOpError) -> ErrorKind:
    """The ``errorKind`` of a failed push to the task's branch: a conflict (the branch moved and the
    work does not rebase onto it, or moved again after the rebase), a refusal by the remote (a hook,
    a protected ref), or a git failure (the network)."""
    if isinstance(e, PushConflictError) or (isinstance(e, RefRejectedError) and e.moved):
        return ErrorKind.PUSH_CONFLICT
    if isinstance(e, RefRejectedError):
        return ErrorKind.PUSH_REFUSED
    return ErrorKind.GIT_FAILED


def _start_ref(task: Task) -> str:
    """The ref holding the row's ``wipSha``: ``wipRef`` when it is a safe ref of the runner's own."""
    ref = task.wip_ref
    if isinstance(ref, str) and ref.startswith(WIP_PREFIX):
        try:
            return WIP_PREFIX + check_branch(ref.removeprefix(WIP_PREFIX), protected=())
        except UnsafeBranchError:
            logger.warning("ignoring an unsafe wipRef on the row")
    return wip_ref(task.id)


def _with_note(error: str, note: str) -> str:
    return f"{error}; {note}" if note else error


def _commit_message(task: Task) -> str:
    """The task's commit message: the row's text with escapes and controls removed (``git log``
    shows it to whoever reads it), the ``Task-Id`` trailer last."""
    pr = f" (PR #{task.pr_number})" if task.pr_number is not None else ""
    title, task_id = clean_text(task.title).replace("\n", " "), clean_text(task.id)
    return f"{title}{pr}\n\nGenerated by the agent for task {task_id}.\n\nTask-Id: {task_id}\n"


def _progress_logger() -> Callable[[str], None]:
    """Log the agent's streamed output a line at a time, so long work shows progress."""
    pending = [""]

    def on_output(chunk: str) -> None:
        *lines, pending[0] = (pending[0] + chunk).split("\n")
        for line in lines:
            if line.strip():
                logger.info("agent: %s", line.strip()[:300])

    return on_output
