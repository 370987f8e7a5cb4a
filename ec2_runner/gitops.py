"""Git for the runner: one clone per runner, one detached worktree per task or terminal session.

Several runner processes may share one clone (runners started by hand share ``~/.aipm/repo``): an
flock on ``<repo_path>.lock`` serialises clone, fetch and worktree add/remove/prune among them, and
each worktree in use holds a lock file of its own, so no process replaces another's folder.

Worktrees are detached at the branch's remote head, so the same branch can be open in a task and
in a terminal session at once; commits are pushed with ``HEAD:refs/heads/<branch>``, never forced,
and so is the work in progress saved on ``kiro-wip/`` refs.

Every git command goes through :class:`~ec2_runner.safegit.SafeGit`: nothing an agent writes in
the repository (config, hooks, attributes, the worktree's ``.git`` file, where ``origin`` points)
changes what the runner's git runs or where it pushes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import git

from ec2_runner.safegit import GitTimeoutError, NotAWorktreeError, SafeGit

logger = logging.getLogger(__name__)

PUSH_ATTEMPTS = 3
LOCKS_DIR = "aipm-worktree-locks"  # in the clone's git dir: one lock file per worktree in use
NETWORK_TIMEOUT = 120.0  # seconds any one git command that talks to the remote may take


class GitOpError(Exception):
    """A git operation failed; the message is readable on a task row."""


class DeadlineError(GitOpError):
    """A call given a time of its own (``push(timeout=...)``, the lease's remainder) ran out of it:
    a command that talks to the remote was not started, or was killed at the end of that time. A
    push killed that late may still have landed on the remote."""


class PushConflictError(GitOpError):
    """The remote branch moved and our commit does not rebase cleanly onto it."""


class RefRejectedError(GitOpError):
    """The remote refused the push: ``moved`` when the ref holds commits we do not have (a
    non-fast-forward), otherwise the remote itself declined (a hook, a protected ref)."""

    def __init__(self, message: str, moved: bool) -> None:
        super().__init__(message)
        self.moved = moved


@dataclass(frozen=True)
class Checkout:
    path: Path
    branch: str
    base_sha: str
    branch_existed: bool


def safe_dir_name(name: str) -> str:
    # a filesystem-safe, collision-free folder name for any task id or branch
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")[:48] or "x"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _short(err: git.GitCommandError) -> str:
    text = (err.stderr or err.stdout or str(err)).strip()
    text = re.sub(r"^\s*stderr: ", "", text)
    return " ".join(text.replace("'", "").split())[:500]


def _why(err: BaseException) -> str:
    return _short(err) if isinstance(err, git.GitCommandError) else str(err)


def _timed_out(err: git.GitCommandError) -> bool:
    return isinstance(err, GitTimeoutError)


class GitWorkspace:
    """The runner's clone of the remote and the worktrees made from it."""

    def __init__(
        self,
        repo_path: Path,
        remote: str,
        worktrees_dir: Path,
        *,
        default_branch: str = "main",
        author_name: str = "aipm runner",
        author_email: str = "aipm-runner@users.noreply.local",
        network_timeout: float = NETWORK_TIMEOUT,
        credential_helper: str | None = None,
    ) -> None:
        self.repo_path = Path(repo_path).absolute()
        self.worktrees_dir = Path(worktrees_dir)
        self.default_branch = default_branch
        # a stalled remote must not hold a task (and its renewed lease) forever: every git command
        # that talks to the remote is killed after this long
        self.network_timeout = network_timeout
        # the one way this class runs git (the remote it fetches from and pushes to lives there too)
        self._git = SafeGit(
            self.repo_path / ".git",
            remote,
            # beside the clone, out of the worktrees folder; a dot name, so no leftover sweep takes it
            self.repo_path.parent / f".{self.repo_path.name}.runner-git",
            author=(author_name, author_email),
            credential_helper=credential_helper,
        )
        # clone, fetch and worktree add/remove/prune touch the clone's shared refs and admin files:
        # one thread of one process at a time (runners started by hand share ~/.aipm/repo)
        self._lock = threading.Lock()
        self._lock_path = self.repo_path.parent / f"{self.repo_path.name}.lock"
        # worktrees in use by this process, each with its lock file's descriptor (flock held)
        self._held: dict[Path, int] = {}
        with self._exclusive():
            self._open_or_clone()

    @property
    def remote(self) -> str:
        """The URL every fetch and push goes to: the configured one, whatever ``origin`` now says."""
        return self._git.remote

    @remote.setter
    def remote(self, url: str) -> None:
        self._git.remote = url

    @property
    def common_dir(self) -> Path:
        """The clone's git directory (shared by all its worktrees)."""
        return self._git.common_dir

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The thread lock and an flock on ``<repo_path>.lock`` beside the clone."""
        with self._lock:
            self._lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _open_or_clone(self) -> None:
        if not (self.repo_path / ".git").exists() and (self.repo_path / "HEAD").exists():
            self._git.common_dir = self.repo_path  # a bare clone
        elif not (self.repo_path / ".git").exists():
            git.Git.check_unsafe_protocols(self.remote)
            try:
                self._git.run(
                    ["clone", "--no-checkout", "--", self.remote, str(self.repo_path)],
                    bare=True,
                    timeout=self.network_timeout,
                )
            except git.GitCommandError as e:
                # a clone killed at the timeout leaves a half-made repository behind: not a clone
                shutil.rmtree(self.repo_path, ignore_errors=True)
                raise self._network_error(f"git clone of {self.remote!r}", e) from e
        # the clone's config is the runner's, from now on (and whatever an earlier run left is gone)
        self._git.own_config()
        self.worktrees_dir.mkdir(parents=True, exist_ok=True)
        (self.common_dir / LOCKS_DIR).mkdir(exist_ok=True)
        self._git.run(["worktree", "prune"])

    def _lock_file(self, path: Path) -> Path:
        # beside the clone's own admin files, out of the worktrees folder (which holds worktrees only)
        return self.common_dir / LOCKS_DIR / f"{safe_dir_name(str(path))}.lock"

    def _hold(self, path: Path) -> int | None:
        """Take ``path``'s lock file (non-blocking); its descriptor, or None when another holder,
        in this process or another, has it. The holder deletes the file when it lets go, so the
        lock taken must be on the file that is still at the path."""
        lock = self._lock_file(path)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)  # deleted by its last holder after we opened it: take the new one

    def _let_go(self, path: Path) -> None:
        fd = self._held.pop(path, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._lock_file(path))
            os.close(fd)

    # -- worktrees -------------------------------------------------------------------------
    def checkout(
        self,
        branch: str,
        name: str,
        start_sha: str | None = None,
        start_ref: str | None = None,
        *,
        reuse_leftover_work: bool = False,
    ) -> Checkout:
        """A fresh worktree for ``branch`` (call check_branch first), detached at the remote head,
        or at the default branch when the remote has no such branch yet. ``start_sha`` (the WIP
        commit of an earlier attempt, pushed to ``start_ref``) wins when it can be had.
        ``reuse_leftover_work``: a folder of this name that a dead process left with work in it is
        taken over as it is (a terminal session reopened after a runner restart), not moved aside."""
        with self._exclusive():
            # a worktree still held, by this process or another one sharing the clone (a running
            # task, an open or kept terminal session), is never replaced: the newcomer gets a
            # folder of its own. A folder nobody holds is a leftover (a crash): it is replaced.
            path = self.worktrees_dir / safe_dir_name(name)
            n = 1
            while path in self._held or (fd := self._hold(path)) is None:
                n += 1
                path = self.worktrees_dir / f"{safe_dir_name(name)}-{n}"
            self._held[path] = fd
            try:
                if reuse_leftover_work and path.exists() and self._holds_unique_work(path):
                    sha = self.head(path)
                    logger.info("reusing the work left in %s (branch %s, head %s)", path, branch, sha[:12])
                    return Checkout(path=path, branch=branch, base_sha=sha, branch_existed=True)
                return self._checkout_locked(path, branch, start_sha, start_ref)
            except BaseException:
                self._let_go(path)
                raise

    def _checkout_locked(
        self, path: Path, branch: str, start_sha: str | None, start_ref: str | None
    ) -> Checkout:
        if path.exists():
            self._clear_leftover_locked(path)
        existed = self._fetch_locked(branch)
        if start_sha and not self._has_commit(start_sha) and start_ref:
            try:
                self._fetch_locked(start_ref)
            except GitOpError as e:
                logger.warning("could not fetch the earlier attempt's work %s: %s", start_ref, e)
        if start_sha and self._has_commit(start_sha):
            logger.info("resuming from the earlier attempt's work %s", start_sha[:12])
            base = start_sha
        elif existed:
            base = f"refs/remotes/origin/{branch}"
        else:
            self._fetch_locked(self.default_branch, required=True)
            base = f"refs/remotes/origin/{self.default_branch}"
        try:
            self._git.run(["worktree", "add", "--detach", "--force", str(path), base])
            self._git.learn_worktree(path)  # before any agent can touch its .git file
        except (git.GitCommandError, NotAWorktreeError) as e:
            raise GitOpError(f"git worktree add failed: {_why(e)}") from e
        sha = self.head(path)
        logger.info(
            "worktree ready at %s (branch %s, base %s, branch existed: %s)", path, branch, sha[:12], existed
        )
        return Checkout(path=path, branch=branch, base_sha=sha, branch_existed=existed)

    def remove(self, path: Path) -> None:
        path = Path(path)
        with self._exclusive():
            try:
                self._remove_locked(path)
            finally:
                self._let_go(path)

    def remove_leftovers(self) -> list[Path]:
        """Remove the worktrees a dead process left behind that hold nothing unique (a runner
        killed mid-task leaves its folders; only a new checkout of the same name would clear them
        otherwise); the ones removed. A folder still held (by a live process sharing the clone) is
        left alone, and so is one with work of its own: the next checkout of its name moves it to
        ``.leftover/`` (a task) or reopens it as it was (a Refine session). So is a folder that is
        not one of the clone's worktrees, unless it is empty: it is not the runner's to judge."""
        removed: list[Path] = []
        with self._exclusive():
            registered = self._registered_worktrees()
            for path in sorted(self.worktrees_dir.iterdir()):
                if path.name.startswith(".") or not path.is_dir() or path in self._held:
                    continue
                if path.resolve() not in registered:
                    if not any(path.iterdir()):
                        path.rmdir()
                        removed.append(path)
                    continue
                fd = self._hold(path)
                if fd is None:
                    continue
                self._held[path] = fd
                try:
                    if not self._holds_unique_work(path):
                        self._remove_locked(path)
                        removed.append(path)
                finally:
                    self._let_go(path)
        if removed:
            logger.info("removed %d worktree(s) a dead runner left with nothing unique in them", len(removed))
        return removed

    def _registered_worktrees(self) -> set[Path]:
        listing = self._git.run(["worktree", "list", "--porcelain"])
        return {
            Path(line.removeprefix("worktree ")).resolve()
            for line in listing.splitlines()
            if line.startswith("worktree ")
        }

    def _clear_leftover_locked(self, path: Path) -> None:
        """A folder nobody holds (its process died): removed, unless it holds work that exists
        nowhere else (uncommitted changes, or commits no remote branch has), which is moved aside
        to ``<worktrees>/.leftover/`` for a person to look at. Work is never deleted."""
        if not self._holds_unique_work(path):
            self._remove_locked(path)
            return
        aside = self.worktrees_dir / ".leftover" / f"{path.name}-{time.strftime('%Y%m%dT%H%M%S')}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._git.run(["worktree", "move", str(path), str(aside)])
        except git.GitCommandError:
            shutil.move(str(path), str(aside))
        self._git.forget_worktree(path)
        logger.warning("a crashed run left work in %s; it is kept in %s", path, aside)

    def _holds_unique_work(self, path: Path) -> bool:
        """Whether a worktree holds work that exists nowhere else: uncommitted changes, or commits
        no remote branch has."""
        try:
            unpushed = not self._git.run(["branch", "-r", "--contains", "HEAD"], worktree=path).strip()
            return unpushed or bool(self._status(path))
        except (git.GitCommandError, NotAWorktreeError, OSError):
            return False  # not a usable worktree: nothing in it can be recovered by git either

    def _remove_locked(self, path: Path) -> None:
        try:
            self._git.run(["worktree", "remove", "--force", str(path)])
        except git.GitCommandError:
            shutil.rmtree(path, ignore_errors=True)
        self._git.forget_worktree(path)
        self._git.run(["worktree", "prune"])

    def _fetch_locked(self, branch: str, required: bool = False, deadline: float | None = None) -> bool:
        """Fetch one branch of the configured remote into refs/remotes/origin/; False if the remote
        has no such branch."""
        what = f"git fetch of {branch!r}"
        refspec = f"+refs/heads/{branch}:refs/remotes/origin/{branch}"
        limit = self._time_for(what, deadline)
        try:
            self._git.run(["fetch", "--no-tags", "--", self.remote, refspec], timeout=limit)
            return True
        except git.GitCommandError as e:
            if "couldn't find remote ref" in (e.stderr or "").lower() and not required:
                return False
            raise self._network_error(what, e, limit) from e

    def _time_for(self, what: str, deadline: float | None) -> float:
        """How long the next command that talks to the remote may run: the network timeout, or less
        to be over by ``deadline`` (monotonic). DeadlineError when no time is left to start it."""
        if deadline is None:
            return self.network_timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineError(f"{what} not started: the time it was given had run out")
        return min(self.network_timeout, left)

    def _network_error(self, what: str, e: git.GitCommandError, limit: float | None = None) -> GitOpError:
        if _timed_out(e):
            if limit is not None and limit < self.network_timeout:
                return DeadlineError(
                    f"{what} stopped after {limit:.1f} s, at the end of the time it was given"
                )
            return GitOpError(
                f"{what} timed out after {self.network_timeout:g} s (the remote did not answer)"
            )
        return GitOpError(f"{what} failed: {_short(e)}")

    def _has_commit(self, sha: str) -> bool:
        try:
            self._git.run(["cat-file", "-e", f"{sha}^{{commit}}"])
            return True
        except git.GitCommandError:
            return False

    def attach_branch(self, path: Path, branch: str) -> str | None:
        """Put a worktree (checked out detached at the branch's head) on a local ``branch``, as a
        person working there expects; None when it is on it, else why it stays detached. Git lets
        one worktree hold a branch: a second session of the branch (another read-write session
        already holds it) stays detached, and so does one whose local branch has commits the
        worktree's head lacks (they are never reset away). Pushes go to ``branch`` either way."""
        with self._exclusive():
            try:
                on = self._git.run(["symbolic-ref", "--quiet", "--short", "HEAD"], worktree=path)
            except git.GitCommandError:
                on = ""
            if on == branch:
                return None
            local = f"refs/heads/{branch}"
            # ``checkout -B`` does not itself refuse a branch another worktree holds: ask first
            listing = self._git.run(["worktree", "list", "--porcelain"])
            holders = [
                block.splitlines()[0].removeprefix("worktree ")
                for block in listing.split("\n\n")
                if f"branch {local}" in block.splitlines()
            ]
            if any(Path(h).resolve() != Path(path).resolve() for h in holders):
                return f"{branch} is open in another session, so this one works detached from it"
            try:
                self._git.run(["rev-parse", "--verify", "--quiet", local], worktree=path)
                exists = True
            except git.GitCommandError:
                exists = False
            if exists:
                try:
                    self._git.run(["merge-base", "--is-ancestor", local, "HEAD"], worktree=path)
                except git.GitCommandError:
                    return f"the local branch {branch} has commits of its own, so this folder stays detached"
            try:
                self._git.run(["checkout", "--quiet", "-B", branch], worktree=path)
            except git.GitCommandError as e:
                return f"could not check out {branch}: {_why(e)}"
            return None

    # -- commit and push -------------------------------------------------------------------
    def squash_onto_upstream(self, path: Path, branch: str) -> None:
        """Fold the commits made on top of the branch (an earlier attempt's WIP) back into the
        index, so the task ends as one commit on its branch."""
        upstream = f"refs/remotes/origin/{branch}"
        try:
            self._git.run(["rev-parse", "--verify", "--quiet", upstream], worktree=path)
        except git.GitCommandError:
            upstream = f"refs/remotes/origin/{self.default_branch}"
        base = self._git.run(["merge-base", "HEAD", upstream], worktree=path)
        self._git.run(["reset", "--soft", base], worktree=path)

    def head(self, path: Path) -> str:
        return self._git.run(["rev-parse", "--verify", "HEAD^{commit}"], worktree=path)

    def _status(self, path: Path, timeout: float | None = None) -> str:
        return self._git.run(
            ["status", "--porcelain", "--ignore-submodules=all"], worktree=path, timeout=timeout
        )

    def commit_all(self, path: Path, message: str) -> str | None:
        """Commit everything that changed in the worktree; None when nothing did."""
        self._git.run(["add", "-A"], worktree=path)
        if not self._status(path):
            return None
        self._git.run(["commit", "--no-verify", "-m", message], worktree=path)
        return self.head(path)

    def push(self, path: Path, branch: str, *, rebase_once: bool = True, timeout: float | None = None) -> str:
        """Push HEAD to ``branch`` (never forced). A push rejected because the branch moved rebases
        once onto it; a conflict raises PushConflictError. Network failures are retried; a refusal
        by the remote (a hook) or a timeout raises GitOpError at once.

        ``timeout`` bounds the whole call, retries and rebase included (each command also keeps the
        network timeout): no command starts once it has passed, and one still running then is
        killed. Either raises DeadlineError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            return self._push(path, branch, deadline)
        except RefRejectedError as e:
            if not (e.moved and rebase_once):
                raise
            self._rebase_onto_remote(path, branch, deadline)
            return self._push(path, branch, deadline)

    def push_ref(self, path: Path, ref: str) -> str:
        """Push HEAD to a runner-owned ref (``kiro-wip/<task>``), never forced: a later attempt starts
        from the earlier one's work, so this is normally a fast-forward. RefRejectedError if not."""
        return self._push(path, ref)

    def push_wip(self, path: Path, refs: list[str]) -> tuple[str, str]:
        """Push HEAD to the first of ``refs`` that takes it without force: ``(sha, ref)``. A ref
        holding unrelated work is left as it is and the next one tried, so no work is ever lost."""
        rejected: list[RefRejectedError] = []
        for ref in refs:
            try:
                return self.push_ref(path, ref), ref
            except RefRejectedError as e:
                logger.warning("%s; trying a fresh ref", e)
                rejected.append(e)
        raise rejected[-1] if rejected else ValueError("no ref to push to")

    def _push(self, path: Path, branch: str, deadline: float | None = None) -> str:
        """Push HEAD to the configured remote's ``refs/heads/<branch>`` (never to what ``origin``,
        a ``pushurl`` or an ``insteadOf`` in the repository may say now); the sha pushed."""
        what = f"git push to {branch!r}"
        sha = self.head(path)
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            limit = self._time_for(what, deadline)
            try:
                self._git.run(
                    ["push", "--no-verify", "--", self.remote, f"{sha}:refs/heads/{branch}"],
                    worktree=path,
                    timeout=limit,
                )
                self._track(branch, sha)
                return sha
            except git.GitCommandError as e:
                if _timed_out(e):  # a remote that stalled once is not asked again at once
                    raise self._network_error(what, e, limit) from e
                text = (e.stderr or "").lower()
                if "rejected" in text or "non-fast-forward" in text or "fetch first" in text:
                    moved = "non-fast-forward" in text or "fetch first" in text
                    raise RefRejectedError(f"{what} was rejected: {_short(e)}", moved) from e
                if attempt == PUSH_ATTEMPTS:
                    raise GitOpError(f"{what} failed: {_short(e)}") from e
                pause = 0.5 * 2 ** (attempt - 1)
                if deadline is not None and time.monotonic() + pause >= deadline:
                    raise DeadlineError(f"{what} failed ({_short(e)}) with no time left to retry") from e
                logger.warning("push attempt %d failed (%s); retrying", attempt, _short(e))
                time.sleep(pause)
        raise AssertionError("not reached: the last attempt returns or raises")

    def _track(self, branch: str, sha: str) -> None:
        """What a push to ``origin`` by name did by itself: ``refs/remotes/origin/<branch>`` at what
        was pushed, so the clone knows the work is on the remote (a leftover folder holding it is
        not unique work)."""
        try:
            self._git.run(["update-ref", f"refs/remotes/origin/{branch}", sha])
        except git.GitCommandError as e:  # the next fetch of the branch sets it anyway
            logger.warning("could not note the push to %s in the clone: %s", branch, _short(e))

    def _rebase_onto_remote(self, path: Path, branch: str, deadline: float | None = None) -> None:
        logger.info("remote branch %s moved during the task; rebasing once", branch)
        with self._exclusive():
            self._fetch_locked(branch, required=True, deadline=deadline)
        try:
            self._git.run(["rebase", f"refs/remotes/origin/{branch}"], worktree=path)
        except git.GitCommandError as e:
            try:
                self._git.run(["rebase", "--abort"], worktree=path)
            except git.GitCommandError:
                pass
            raise PushConflictError(
                f"the PR branch {branch!r} moved during the task and the agent's commit conflicts with it"
            ) from e

    def find_task_commit(self, branch: str, since_sha: str, task_id: str) -> str | None:
        """The newest commit on the fetched ``origin/<branch>`` after ``since_sha`` that carries the
        trailer ``Task-Id: <task_id>`` (not a WIP save), or None. Call after ``checkout`` fetched it."""
        trailer = f"Task-Id: {task_id}"
        try:
            with self._lock:
                log = self._git.run(
                    ["log", "--format=%H%x00%B%x01", f"{since_sha}..refs/remotes/origin/{branch}", "--"]
                )
        except git.GitCommandError as e:
            logger.warning("could not look for an earlier attempt's commit on %s: %s", branch, _short(e))
            return None
        for entry in log.split("\x01"):
            sha, _, body = entry.strip().partition("\x00")
            if sha and not body.startswith("WIP: ") and trailer in body.splitlines():
                return sha
        return None

    # -- for terminal sessions ------------------------------------------------------------
    def uncommitted(self, path: Path, *, timeout: float = 30.0) -> str:
        """``git status --porcelain`` of a worktree: its changed and untracked files, '' when clean.
        GitOpError when git cannot tell (it failed or timed out), so a caller can keep the folder."""
        try:
            return self._status(path, timeout=timeout).strip()
        except (git.GitError, NotAWorktreeError, OSError) as e:
            raise GitOpError(f"git status in {path} failed: {_why(e)}") from e

    def status_report(self, path: Path, *, timeout: float = 30.0) -> str:
        """``git status`` and ``git diff --stat`` of a worktree in colour, as a terminal shows them;
        a command that could not run leaves a line saying so in its place."""
        parts = []
        for args in (
            ["-c", "color.status=always", "status", "--ignore-submodules=all"],
            ["diff", "--stat", "--color=always", "--no-ext-diff", "--no-textconv", "--ignore-submodules=all"],
        ):
            what = args[2] if args[0] == "-c" else args[0]
            try:
                _, out, err = self._git.run_full(args, worktree=path, timeout=timeout)
                parts.append(out + (f"{err.rstrip()}\n" if err else ""))
            except (git.GitError, NotAWorktreeError, OSError) as e:
                parts.append(f"git {what} failed: {_why(e)}\n")
        return "".join(parts)
