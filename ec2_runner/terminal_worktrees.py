"""Where each Refine terminal session works: its worktree, whether its agent resumes, what is kept.

A task's session opens where the task's agent ran (the same folder when it is free), so the
agent's own per-directory conversation is there to resume; a branch session gets a worktree of its
own. A session that ends with uncommitted work keeps its folder (still held in the workspace, so
no checkout can replace it) and the next open of the same session reopens it; a clean one is
released. Sessions never commit by themselves: only :meth:`SessionWorktrees.commit_and_push`, on
a user's ``push``, does.

Every git call goes through the runner's :class:`~ec2_runner.gitops.GitWorkspace` (as the
:class:`GitCallables` it is adapted to). Everything here blocks: the terminal calls it from threads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ec2_runner.gitops import GitOpError, GitWorkspace, safe_dir_name

logger = logging.getLogger(__name__)


def task_worktree_name(task_id: str) -> str:
    """The worktree name of a task: the pipeline checks a task out under it, and so does its terminal."""
    return f"task-{task_id}"


@dataclass
class GitCallables:
    """What a session needs from git; the runner passes its GitWorkspace's methods in."""

    open_worktree: Callable[[str, str], Path]  # (branch, name) -> worktree path
    remove_worktree: Callable[[Path], None]
    commit_and_push: Callable[[Path, str, str], str | None]  # (path, branch, message) -> sha | None
    uncommitted: Callable[[Path], str]  # porcelain status; raises when git cannot tell
    status_report: Callable[[Path], str]  # git status and diff --stat, in colour
    # the folder the pipeline runs a task's agent in (its conversation is keyed by that path)
    task_path: Callable[[str], Path] | None = None
    # put a worktree on its local branch: None, or why it stays detached (path, branch) -> reason
    attach_branch: Callable[[Path, str], str | None] | None = None

    @classmethod
    def from_workspace(cls, workspace: GitWorkspace) -> GitCallables:
        """Adapter for ec2_runner.gitops.GitWorkspace."""

        def commit_and_push(path: Path, branch: str, message: str) -> str | None:
            sha = workspace.commit_all(path, message)
            if sha is None:
                return None
            return workspace.push(path, branch)

        return cls(
            # a session's folder that a dead runner left with work in it is reopened as it is
            open_worktree=lambda branch, name: (
                workspace.checkout(branch, name, reuse_leftover_work=True).path
            ),
            remove_worktree=workspace.remove,
            commit_and_push=commit_and_push,
            uncommitted=workspace.uncommitted,
            status_report=workspace.status_report,
            task_path=lambda task_id: workspace.worktrees_dir / safe_dir_name(task_worktree_name(task_id)),
            attach_branch=workspace.attach_branch,
        )


class SessionWorktrees:
    """The worktree policy of one runner's terminal sessions (blocking; call from threads)."""

    def __init__(self, git: GitCallables, has_conversation: Callable[[Path], bool] | None = None) -> None:
        self._git = git
        self._has_conversation = has_conversation
        # worktrees of ended sessions that held uncommitted work, by session: the next open of the same
        # session reopens that folder (still held in the workspace, so no checkout can replace it)
        self._kept: dict[str, tuple[str, Path]] = {}  # session id -> (branch, path)
        self._detached: dict[Path, str] = {}  # folders left detached from their branch, and why

    def open(self, session_id: str, branch: str, task_id: str | None) -> tuple[Path, bool]:
        """The session's folder: ``(path, reopened)``, reopened when it is its own kept worktree."""
        path = self._reopen_kept(session_id, branch)
        if path is not None:
            return path, True
        name = task_worktree_name(task_id) if task_id else f"term-{session_id}"
        path = self._git.open_worktree(branch, name)
        self._attach(path, branch)
        return path, False

    def _attach(self, path: Path, branch: str) -> None:
        """A session works on its branch, not detached (the one read-write session holding it)."""
        if self._git.attach_branch is None:
            return
        try:
            why = self._git.attach_branch(path, branch)
        except (GitOpError, OSError) as e:
            why = f"could not check out {branch}: {e}"
        if why:
            logger.info("worktree %s stays detached: %s", path, why)
            self._detached[path] = why
        else:
            self._detached.pop(path, None)

    def _reopen_kept(self, session_id: str, branch: str) -> Path | None:
        kept = self._kept.get(session_id)
        if kept is None or kept[0] != branch:
            return None  # (a kept folder of another branch stays kept)
        del self._kept[session_id]
        path = kept[1]
        if (path / ".git").exists():
            logger.info("session %s reopens its kept worktree %s", session_id, path)
            return path
        logger.warning("kept worktree %s is gone; releasing it", path)
        self._release(path)
        return None

    def resumes(
        self, mode: Literal["auto", "always", "never"], task_id: str | None, path: Path, reopened: bool
    ) -> bool:
        """Whether the agent starts with its resume args. ``auto``: only where this task's own agent
        ran, the task's folder (or a kept folder this session's agent used), so its conversation is the
        one resumed; never in a fresh worktree (a branch session, or a task session moved aside
        because the task's folder is busy)."""
        if mode != "auto":
            return mode == "always"
        own = reopened or (
            task_id is not None and self._git.task_path is not None and path == self._git.task_path(task_id)
        )
        if not own:
            return False
        return self._has_conversation is None or self._has_conversation(path)

    def summary(self, path: Path, branch: str) -> str:
        """``git status`` and ``git diff --stat`` as the seed printed them when a terminal opened."""
        text = f"\x1b[1m# {branch} — git status\x1b[0m\n"
        if path in self._detached:
            text += f"# {self._detached[path]}; push still goes to {branch}\n"
        text += self._git.status_report(path)
        return text.replace("\r\n", "\n").replace("\n", "\r\n")

    def commit_and_push(self, path: Path, branch: str, message: str) -> str | None:
        """Commit everything in the session's folder and push it to ``branch``; None: nothing to commit."""
        return self._git.commit_and_push(path, branch, message)

    def close(self, session_id: str, branch: str, path: Path) -> bool:
        """An ended session's folder: released when clean; True when it holds uncommitted work (or
        git cannot tell) and is kept for the session's next open instead. Ended sessions commit
        nothing, and discard nothing either."""
        try:
            dirty = bool(self._git.uncommitted(path))
        except (GitOpError, OSError) as e:
            logger.warning("could not tell whether %s holds uncommitted work (%s); keeping it", path, e)
            dirty = True
        if dirty:
            logger.warning("terminal worktree %s has uncommitted changes; kept for the next open", path)
            self._kept[session_id] = (branch, path)
            return True
        self._release(path)
        return False

    def _release(self, path: Path) -> None:
        self._detached.pop(path, None)
        try:
            self._git.remove_worktree(path)
        except Exception:
            logger.exception("could not remove worktree %s", path)
