"""A git workspace over an in-memory remote, with the calls the pipeline makes of ``GitWorkspace``.

Worktrees are real folders (the agent writes files in them); commits are snapshots of a folder's
files named by a hash, and the remote is a dict of refs. What it keeps of git: a commit is made
only when the folder differs from its head, a push is never forced (a ref that moved refuses it),
a WIP goes to the first of its refs that takes it, and an earlier attempt's push is found by its
``Task-Id`` trailer. A test can make the next pushes fail with the exception git would raise."""

from __future__ import annotations

import hashlib
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from ec2_runner.gitops import (
    Checkout,
    DeadlineError,
    GitOpError,
    PushConflictError,
    RefRejectedError,
    safe_dir_name,
)


@dataclass(frozen=True)
class Commit:
    sha: str
    parent: str | None
    message: str
    files: tuple[tuple[str, str], ...]  # (path, text), sorted


class FakeWorkspace:
    """Records what the pipeline did: ``checkouts``, ``commits`` made in worktrees, ``pushes`` to
    task branches, ``wip_pushes`` to ``kiro-wip`` refs, ``removed`` worktrees. Set ``fail_push``
    (or ``fail_wip``) to an exception to make every push to a task branch (or WIP ref) raise it,
    ``fail_checkout`` to make every checkout raise it."""

    def __init__(self, root: Path, default_branch: str = "main") -> None:
        self.root = root
        self.default_branch = default_branch
        self.objects: dict[str, Commit] = {}
        self.remote: dict[str, str] = {}  # ref name -> sha
        self.remote[default_branch] = self._commit(None, "initial commit", {"README.md": "hello\n"})
        self.checkouts: list[Checkout] = []
        self.commits: list[Commit] = []
        self.pushes: list[tuple[str, str]] = []
        self.wip_pushes: list[tuple[str, str]] = []
        self.removed: list[Path] = []
        self.fail_push: GitOpError | None = None
        self.fail_wip: GitOpError | None = None
        self.fail_checkout: GitOpError | None = None
        self.push_timeouts: list[float | None] = []
        self._heads: dict[Path, str] = {}
        self._mutex = threading.Lock()

    # -- the remote, as a test sets it up -------------------------------------------------------
    def add_remote_commit(self, branch: str, message: str, files: dict[str, str] | None = None) -> str:
        """A commit pushed to ``branch`` by someone else (started from the default branch)."""
        parent = self.remote.get(branch, self.remote[self.default_branch])
        tree = {**dict(self.objects[parent].files), **(files or {})}
        sha = self._commit(parent, message, tree)
        self.remote[branch] = sha
        return sha

    def message(self, sha: str) -> str:
        return self.objects[sha].message

    # -- what the pipeline calls ------------------------------------------------------------------
    def checkout(
        self,
        branch: str,
        name: str,
        start_sha: str | None = None,
        start_ref: str | None = None,
        *,
        reuse_leftover_work: bool = False,
    ) -> Checkout:
        """A fresh folder at the earlier attempt's WIP (when the remote has it), the branch's head,
        or the default branch's head for a branch the remote does not have yet."""
        if self.fail_checkout is not None:
            raise self.fail_checkout
        with self._mutex:
            path = self.root / safe_dir_name(name)
            n = 1
            while path in self._heads:
                n += 1
                path = self.root / f"{safe_dir_name(name)}-{n}"
            existed = branch in self.remote
            if start_sha and start_sha in self.objects:
                base = start_sha
            else:
                base = self.remote[branch] if existed else self.remote[self.default_branch]
            if path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True)
            for rel, text in self.objects[base].files:
                (path / rel).parent.mkdir(parents=True, exist_ok=True)
                (path / rel).write_text(text)
            self._heads[path] = base
            checkout = Checkout(path=path, branch=branch, base_sha=base, branch_existed=existed)
            self.checkouts.append(checkout)
            return checkout

    def remove(self, path: Path) -> None:
        with self._mutex:
            self._heads.pop(path, None)
            shutil.rmtree(path, ignore_errors=True)
            self.removed.append(path)

    def head(self, path: Path) -> str:
        return self._heads[path]

    def commit_all(self, path: Path, message: str) -> str | None:
        """Commit everything that changed in the folder; None when nothing did."""
        files = {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}
        head = self._heads[path]
        if tuple(sorted(files.items())) == self.objects[head].files:
            return None
        sha = self._commit(head, message, files)
        self._heads[path] = sha
        self.commits.append(self.objects[sha])
        return sha

    def squash_onto_upstream(self, path: Path, branch: str) -> None:
        """``git reset --soft`` to where HEAD left the branch (or the default branch)."""
        upstream = self.remote.get(branch, self.remote[self.default_branch])
        ours = set(self._ancestry(self._heads[path]))
        self._heads[path] = next(sha for sha in self._ancestry(upstream) if sha in ours)

    def push(self, path: Path, branch: str, *, rebase_once: bool = True, timeout: float | None = None) -> str:
        self.push_timeouts.append(timeout)
        if self.fail_push is not None:
            raise self.fail_push
        if timeout is not None and timeout <= 0:
            raise DeadlineError(f"git push to {branch!r} not started: no time left")
        head = self._heads[path]
        current = self.remote.get(branch)
        if current is not None and current not in self._ancestry(head):
            # the real one rebases once first; here a branch that moved is always a conflict
            raise PushConflictError(f"the PR branch {branch!r} moved during the task")
        self.remote[branch] = head
        self.pushes.append((branch, head))
        return head

    def push_wip(self, path: Path, refs: list[str]) -> tuple[str, str]:
        if self.fail_wip is not None:
            raise self.fail_wip
        head = self._heads[path]
        for ref in refs:
            current = self.remote.get(ref)
            if current is None or current in self._ancestry(head):
                self.remote[ref] = head
                self.wip_pushes.append((ref, head))
                return head, ref
        raise RefRejectedError(f"git push to {refs[-1]!r} was rejected: non-fast-forward", moved=True)

    def find_task_commit(self, branch: str, since_sha: str, task_id: str) -> str | None:
        """The newest commit on the remote branch after ``since_sha`` with ``Task-Id: <task_id>``."""
        if branch not in self.remote:
            return None
        for sha in self._ancestry(self.remote[branch]):
            if sha == since_sha:
                return None
            message = self.objects[sha].message
            if not message.startswith("WIP: ") and f"Task-Id: {task_id}" in message.splitlines():
                return sha
        return None

    # -- objects --------------------------------------------------------------------------------
    def _commit(self, parent: str | None, message: str, files: dict[str, str]) -> str:
        tree = tuple(sorted(files.items()))
        sha = hashlib.sha1(repr((parent, message, tree)).encode()).hexdigest()
        self.objects[sha] = Commit(sha, parent, message, tree)
        return sha

    def _ancestry(self, sha: str) -> list[str]:
        """``sha`` and its ancestors, newest first."""
        chain: list[str] = []
        at: str | None = sha
        while at is not None:
            chain.append(at)
            at = self.objects[at].parent
        return chain
