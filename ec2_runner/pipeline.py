"""One task, start to finish: claim, worktree, agent, commit, push, write the status back."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from ec2_runner.gitops import GitOpError, GitWorkspace
from shared.branches import UnsafeBranchError, check_branch
from shared.models import Task, TaskStatus
from shared.store import ClaimLostError, LeaseLostError, TaskNotFoundError, TaskStore

logger = logging.getLogger(__name__)


class Outcome(Enum):
    COMPLETE = "complete"  # row final: complete
    FAILED = "failed"  # row final: failed
    NOT_CLAIMABLE = "not-claimable"  # a duplicate or stale signal: the row is someone else's or ended
    LEASE_LOST = "lease-lost"  # another runner took the row over; it owns the outcome now


class AgentLike(Protocol):
    def run(self, prompt: str, cwd: Path, **kwargs: Any) -> Any: ...


@dataclass
class PipelineOptions:
    protected_branches: tuple[str, ...]
    lease_seconds: float = 120.0
    max_details_bytes: int = 64 * 1024
    fail_on_no_changes: bool = True
    no_changes_error: str = "agent made no changes"
    keep_failed_worktrees: bool = False


def _describe_validation(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "row"
        parts.append(f"{loc}: {e['msg']}")
    return "invalid task row: " + "; ".join(parts)


class Heartbeat:
    """Renews the row's lease and the message's visibility together, until stopped.

    ``lost`` turns true when the row is no longer this runner's: the agent must stop and nothing
    may be pushed.
    """

    def __init__(self, renew: Any, interval: float) -> None:
        self._renew = renew
        self._interval = interval
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        import contextvars

        ctx = contextvars.copy_context()  # keep the task id on the heartbeat's log lines
        self._thread = threading.Thread(target=ctx.run, args=(self._loop,), name="heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._renew()
            except LeaseLostError:
                logger.warning("lease lost: another runner owns the task now; stopping")
                self.lost.set()
                return
            except Exception as e:  # transient AWS trouble: the lease has slack, try again next beat
                logger.warning("heartbeat failed (%s); will retry", e)


class TaskPipeline:
    """Runs one task to a final row. Stateless between tasks; safe to call from several slots."""

    def __init__(
        self,
        store: TaskStore,
        workspace: GitWorkspace,
        agent: AgentLike,
        runner_id: str,
        options: PipelineOptions,
    ) -> None:
        self.store = store
        self.workspace = workspace
        self.agent = agent
        self.runner_id = runner_id
        self.options = options

    def process(self, task_id: str, extend_visibility: Any = None, should_stop: Any = None) -> Outcome:
        """Claim and run ``task_id``. ``extend_visibility(seconds)`` keeps the SQS message hidden
        while the task runs; ``should_stop()`` asks the task to stop early (shutdown)."""
        try:
            row = self.store.claim(task_id, self.runner_id, self.options.lease_seconds)
        except ClaimLostError:
            logger.info("not claimable (owned by another runner or already ended); dropping the signal")
            return Outcome.NOT_CLAIMABLE
        except TaskNotFoundError:
            logger.warning("no such task; dropping the signal")
            return Outcome.NOT_CLAIMABLE
        attempt = int(row.get("attempts") or 1)
        logger.info("claimed (attempt %d)", attempt)

        def renew() -> None:
            self.store.renew(task_id, self.runner_id, attempt, self.options.lease_seconds)
            if extend_visibility:
                extend_visibility(self.options.lease_seconds)

        with Heartbeat(renew, max(self.options.lease_seconds / 3, 0.5)) as beat:
            try:
                return self._run(task_id, attempt, row, beat, should_stop)
            except LeaseLostError:
                logger.warning("lease lost before the status write; the new owner decides the outcome")
                return Outcome.LEASE_LOST

    def _fail(self, task_id: str, attempt: int, error: str, log_tail: str = "") -> Outcome:
        logger.error("task failed: %s", error)
        self.store.fail(task_id, self.runner_id, attempt, error, log_tail)
        return Outcome.FAILED

    def _run(self, task_id: str, attempt: int, row: dict, beat: Heartbeat, should_stop: Any) -> Outcome:
        opts = self.options
        try:
            task = Task.model_validate(row)
        except ValidationError as e:
            return self._fail(task_id, attempt, _describe_validation(e))
        size = len(task.details.encode())
        if size > opts.max_details_bytes:
            return self._fail(
                task_id, attempt, f"details is {size} bytes, over the {opts.max_details_bytes}-byte limit"
            )
        try:
            check_branch(task.branch, opts.protected_branches)
        except UnsafeBranchError as e:
            return self._fail(task_id, attempt, str(e))

        started = time.monotonic()
        try:
            checkout = self.workspace.checkout(task.branch, f"task-{task_id}", start_sha=task.wipSha)
        except GitOpError as e:
            return self._fail(task_id, attempt, str(e))
        self.store.record(task_id, self.runner_id, attempt, baseSha=checkout.base_sha)
        keep = False
        try:
            prep = time.monotonic() - started

            def stop_requested() -> bool:
                return beat.lost.is_set() or bool(should_stop and should_stop())

            logger.info("agent starting in %s", checkout.path)
            result = self.agent.run(
                task.prompt(), checkout.path, on_output=_progress_logger(), should_stop=stop_requested
            )
            logger.info(
                "agent finished in %.1f s (exit %s, ok %s)", result.duration, result.exit_code, result.ok
            )
            if beat.lost.is_set():
                return Outcome.LEASE_LOST
            tail = result.output[-2000:] if result.output else ""
            if not result.ok:
                keep = opts.keep_failed_worktrees
                return self._fail(task_id, attempt, result.error or "agent failed", tail)
            after = time.monotonic()
            sha = self.workspace.commit_all(checkout.path, _commit_message(task))
            if sha is None:
                if opts.fail_on_no_changes:
                    return self._fail(task_id, attempt, opts.no_changes_error, tail)
                sha = checkout.base_sha
            elif beat.lost.is_set():
                return Outcome.LEASE_LOST
            else:
                sha = self.workspace.push(checkout.path, task.branch)
            self.store.complete(task_id, self.runner_id, attempt, sha, tail)
            logger.info(
                "complete: pushed %s to %s (runner overhead %.3f s, agent %.1f s)",
                sha[:12],
                task.branch,
                prep + (time.monotonic() - after),
                result.duration,
            )
            return Outcome.COMPLETE
        except GitOpError as e:
            keep = opts.keep_failed_worktrees
            return self._fail(task_id, attempt, str(e))
        finally:
            if not keep:
                self.workspace.remove(checkout.path)


def _commit_message(task: Task) -> str:
    pr = f" (PR #{task.prNumber})" if task.prNumber is not None else ""
    return f"{task.title}{pr}\n\nGenerated by the agent for task {task.id}.\n\nTask-Id: {task.id}\n"


def _progress_logger() -> Any:
    """Log the agent's streamed output a line at a time, so long work shows progress."""
    buf = {"text": "", "last": 0.0}

    def on_output(chunk: str) -> None:
        buf["text"] += chunk
        *lines, buf["text"] = buf["text"].split("\n")
        for line in lines:
            line = line.strip()
            if line:
                logger.info("agent: %s", line[:300])

    return on_output


__all__ = ["Outcome", "PipelineOptions", "TaskPipeline", "TaskStatus"]
