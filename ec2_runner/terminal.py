"""Refine terminal sessions on the runner: one worktree and one agent pty per session.

A session starts on the first ``open`` for its id: a worktree of the task's branch (through the
injected git callables), ``git status`` and ``git diff --stat`` printed into the terminal as the seed
did, then the agent's interactive command in a pexpect pty. In ``auto`` resume mode the agent resumes
only where the task's own agent ran (the task's folder, or a kept folder the session's agent used),
never in a fresh worktree. Output is coalesced for a few milliseconds into frames under 32 KB with increasing
``seq`` and kept in a bounded ring, so a browser that reconnects resumes from its ``lastSeq``.
Sessions outlive their browsers for a grace period, end when idle, and never commit by themselves:
only a ``push`` frame commits and pushes, under the pipeline's branch rules.

Everything here runs on one asyncio loop (the runner's WebSocket client's); blocking git work goes
to threads.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pexpect
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ec2_runner.gitops import safe_dir_name
from shared import frames as fr
from shared.branches import DEFAULT_PROTECTED, UnsafeBranchError, check_branch

logger = logging.getLogger(__name__)

FLUSH_BYTES = 16 * 1024
READ_CHUNK = 64 * 1024
INPUT_GAP_SECONDS = 0.2  # how long an out-of-order keystroke waits for the one before it
OUTBOX_HIGH = 64  # frames waiting for the socket before the pty is paused (backpressure)
OUTBOX_LOW = 16


class TerminalSettings(BaseSettings):
    """Terminal session knobs, from the runner's environment."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    grace_seconds: float = Field(default=600.0, ge=0, validation_alias="TERMINAL_GRACE_SECONDS")
    # a session ends after this long without input, open or resume (its output does not count)
    idle_seconds: float = Field(default=1800.0, gt=0, validation_alias="TERMINAL_IDLE_SECONDS")
    coalesce_ms: float = Field(default=3.0, ge=0, le=100, validation_alias="TERMINAL_COALESCE_MS")
    ring_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, validation_alias="TERMINAL_RING_BYTES")
    max_sessions: int = Field(default=8, ge=1, validation_alias="TERMINAL_MAX_SESSIONS")
    resume: Literal["auto", "always", "never"] = Field(default="auto", validation_alias="TERMINAL_RESUME")
    show_git_status: bool = Field(default=True, validation_alias="TERMINAL_GIT_STATUS")
    reap_interval: float = Field(default=1.0, gt=0, validation_alias="TERMINAL_REAP_INTERVAL")
    cols: int = Field(default=120, ge=1, le=1000)
    rows: int = Field(default=40, ge=1, le=1000)


@dataclass
class GitCallables:
    """What a session needs from git; the runner passes its GitWorkspace's methods in."""

    open_worktree: Callable[[str, str], Path]  # (branch, name) -> worktree path
    remove_worktree: Callable[[Path], None]
    commit_and_push: Callable[[Path, str, str], str | None]  # (path, branch, message) -> sha | None
    # the folder the pipeline runs a task's agent in (its conversation is keyed by that path)
    task_path: Callable[[str], Path] | None = None

    @classmethod
    def from_workspace(cls, workspace: Any) -> GitCallables:
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
            task_path=lambda task_id: workspace.worktrees_dir / safe_dir_name(task_worktree_name(task_id)),
        )


def task_worktree_name(task_id: str) -> str:
    """The worktree name of a task: the pipeline checks a task out under it, and so does its terminal."""
    return f"task-{task_id}"


@dataclass(frozen=True)
class _OpenFailure:
    """Why an open did not get a session: an error ``code`` (None: exit only) and whether to send ``exit``."""

    code: str | None
    message: str
    exit: bool = True


@dataclass
class Session:
    id: str
    branch: str
    task_id: str | None
    path: Path | None = None
    child: pexpect.spawn | None = None
    seq: int = 0
    ring: collections.deque[fr.OutputFrame] = field(default_factory=collections.deque)
    ring_size: int = 0
    viewers: dict[str, bool] = field(default_factory=dict)  # connection id -> read-only
    inputs: dict[str, fr.InputOrderer] = field(default_factory=dict)  # connection id -> typed order
    last_activity: float = 0.0
    alone_since: float | None = None
    pending: list[str] = field(default_factory=list)
    pending_size: int = 0
    flush_handle: asyncio.TimerHandle | None = None
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False
    reading: bool = False

    @property
    def oldest_seq(self) -> int:
        return self.ring[0].seq if self.ring else self.seq + 1


class SessionManager:
    """All terminal sessions of one runner. ``outbox`` holds frames for the runner's socket, in order."""

    def __init__(
        self,
        settings: TerminalSettings,
        *,
        argv_for: Callable[[bool], list[str]],
        git: GitCallables,
        resolve_task: Callable[[str], str] | None = None,
        has_conversation: Callable[[Path], bool] | None = None,
        protected: tuple[str, ...] | list[str] = DEFAULT_PROTECTED,
        env: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._argv_for = argv_for
        self._git = git
        self._resolve_task = resolve_task
        self._has_conversation = has_conversation
        self._protected = tuple(protected)
        self._env = env
        self._clock = clock
        self.sessions: dict[str, Session] = {}
        self.outbox: asyncio.Queue[fr._Frame] = asyncio.Queue()
        self._reaper: asyncio.Task[None] | None = None
        self._paused: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        # sessions being started: a second open of the same session waits for the first one's outcome
        self._opening: dict[str, asyncio.Future[_OpenFailure | None]] = {}
        self._stopping = False
        # worktrees of ended sessions that held uncommitted work, by session: the next open of the same
        # session reopens that folder (still held in the workspace, so no checkout can replace it)
        self._kept: dict[str, tuple[str, Path]] = {}  # session id -> (branch, path)
        self._ending: dict[str, asyncio.Future[None]] = {}  # sessions whose worktree is being released

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the idle/grace reaper on the running loop."""
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def shutdown(self, reason: str = "runner stopping") -> None:
        """End every session (their browsers get ``exit``); commits nothing."""
        self._stopping = True
        if self._reaper:
            self._reaper.cancel()
            self._reaper = None
        if self._opening:
            # sessions still starting end with the others rather than after them
            await asyncio.wait([asyncio.shield(f) for f in self._opening.values()], timeout=30)
        for session in list(self.sessions.values()):
            await self._end(session, reason)

    def held(self) -> list[str]:
        return [s.id for s in self.sessions.values() if not s.ended]

    # -- frames from the relay ---------------------------------------------------------------
    async def handle(self, frame: Any) -> None:
        """One frame from the relay. Slow work (worktree, push) runs in tasks so input never waits."""
        if isinstance(frame, fr.OpenFrame):
            self._spawn_task(self._open(frame))
        elif isinstance(frame, fr.ResumeFrame):
            self._spawn_task(self._attach(frame.sessionId, frame.connectionId, frame.readOnly, frame.lastSeq))
        elif isinstance(frame, fr.InputFrame):
            self._input(frame)
        elif isinstance(frame, fr.ResizeFrame):
            self._resize(frame)
        elif isinstance(frame, fr.CloseFrame):
            session = self._writable(frame.sessionId, frame.connectionId, frame.readOnly)
            if session:
                self._spawn_task(self._end(session, "closed by the user"))
        elif isinstance(frame, fr.PushFrame):
            session = self._writable(frame.sessionId, frame.connectionId, frame.readOnly)
            if session:
                self._spawn_task(self._push(session, frame.connectionId, frame.message))
        elif isinstance(frame, fr.DetachFrame):
            self._detach(frame.sessionId, frame.connectionId)

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, frame: fr._Frame) -> None:
        self.outbox.put_nowait(frame)
        if self.outbox.qsize() > OUTBOX_HIGH:
            for session in self.sessions.values():
                if session.reading and session.child is not None:
                    asyncio.get_running_loop().remove_reader(session.child.child_fd)
                    session.reading = False
                    self._paused.add(session.id)

    def frame_sent(self) -> None:
        """The socket took a frame: resume paused ptys once the outbox has drained."""
        if self._paused and self.outbox.qsize() <= OUTBOX_LOW:
            for sid in list(self._paused):
                session = self.sessions.get(sid)
                if session is not None and not session.ended:
                    self._start_reading(session)
            self._paused.clear()

    def _error(
        self, to: str | None, message: str, session_id: str | None = None, code: str | None = None
    ) -> None:
        self._send(fr.ErrorFrame(message=message, sessionId=session_id, code=code, to=[to] if to else []))

    # -- open / attach -----------------------------------------------------------------------
    async def _open(self, frame: fr.OpenFrame) -> None:
        sid, conn = frame.sessionId, frame.connectionId
        if sid is None or conn is None:
            return
        opening = self._opening.get(sid)
        if opening is not None:
            # another open of this session is starting it: attach to that one, never start a second
            failure = await asyncio.shield(opening)
        elif sid not in self.sessions and frame.readOnly:
            # a watcher only ever attaches: starting a session (worktree, agent, slot) takes write access
            failure = _OpenFailure("no_session", fr.NO_SESSION_READ_ONLY, exit=False)
        elif sid not in self.sessions:
            fut: asyncio.Future[_OpenFailure | None] = asyncio.get_running_loop().create_future()
            self._opening[sid] = fut
            failure = None
            try:
                failure = await self._create(sid, frame)
            finally:
                del self._opening[sid]
                fut.set_result(failure)
        else:
            failure = None
        if failure is not None:
            self._refuse_open(conn, sid, failure)
            return
        await self._attach(sid, conn, frame.readOnly, frame.lastSeq)

    def _refuse_open(self, conn: str, sid: str, failure: _OpenFailure) -> None:
        if failure.code:
            self._error(conn, failure.message, sid, failure.code)
        if failure.exit:
            self._send(fr.ExitFrame(sessionId=sid, code=-1, reason=failure.message[:500], to=[conn]))

    async def _create(self, sid: str, frame: fr.OpenFrame) -> _OpenFailure | None:
        """Start the session ``sid``; None when it runs, else why not (for every browser waiting on it)."""
        if self._stopping:
            return _OpenFailure(None, "runner stopping")
        if len(self.held()) + len(self._opening) > self.settings.max_sessions:
            return _OpenFailure("busy", "this runner has no free terminal slot; try again later", exit=False)
        try:
            branch = frame.branch
            if branch is None:
                if self._resolve_task is None:
                    raise LookupError("this runner cannot look tasks up")
                branch = await asyncio.to_thread(self._resolve_task, frame.taskId or "")
            branch = check_branch(branch, self._protected)
        except (UnsafeBranchError, LookupError, KeyError, ValueError) as e:
            return _OpenFailure("bad_target", f"cannot open a terminal: {e}")
        ending = self._ending.get(sid)
        if ending is not None:
            await asyncio.shield(ending)  # its worktree is kept or released before the reopen decides
        if self._stopping:
            return _OpenFailure(None, "runner stopping")
        session = Session(id=sid, branch=branch, task_id=frame.taskId, last_activity=self._clock())
        self.sessions[sid] = session
        try:
            await self._start(session, frame.cols or self.settings.cols, frame.rows or self.settings.rows)
        except Exception as e:  # noqa: BLE001 - whatever broke, the browser must hear about it
            logger.exception("session %s failed to start", sid)
            self.sessions.pop(sid, None)
            session.ended = True
            session.ready.set()
            return _OpenFailure(None, f"failed to start: {e}")
        if session.ended:
            return _OpenFailure(None, "the session ended while it was starting")
        return None

    async def _start(self, session: Session, cols: int, rows: int) -> None:
        # a task's session opens where the task's agent ran (the same folder when it is free), so the
        # agent's own per-directory conversation is there to resume: the user refines that very run
        name = task_worktree_name(session.task_id) if session.task_id else f"term-{session.id}"
        path = await asyncio.to_thread(self._kept_worktree, session)
        reopened = path is not None
        if path is None:
            path = await asyncio.to_thread(self._git.open_worktree, session.branch, name)
        session.path = path
        if session.ended:
            # ended (runner stopping) while its worktree was made, before _end could see the folder
            if await asyncio.to_thread(self._cleanup, path):
                self._kept[session.id] = (session.branch, path)
            return
        if self.settings.show_git_status:
            summary = await asyncio.to_thread(_git_summary, path, session.branch)
            self._feed(session, summary)
        resume = await self._resumes(session, path, reopened)
        if session.ended:
            return  # _end has released the folder; start no agent
        argv = self._argv_for(resume)
        logger.info("session %s: %s in %s (resume: %s)", session.id, argv[0], path, resume)
        child = pexpect.spawn(
            argv[0], argv[1:], cwd=str(path), env=self._env, dimensions=(rows, cols), encoding=None, echo=True
        )
        child.delaybeforesend = None
        session.child = child
        self._start_reading(session)
        session.ready.set()

    def _kept_worktree(self, session: Session) -> Path | None:
        """The kept worktree of this session's earlier run, when there is one to reopen."""
        kept = self._kept.get(session.id)
        if kept is None or kept[0] != session.branch:
            return None  # (a kept folder of another branch stays kept)
        del self._kept[session.id]
        path = kept[1]
        if (path / ".git").exists():
            logger.info("session %s reopens its kept worktree %s", session.id, path)
            return path
        logger.warning("kept worktree %s is gone; releasing it", path)
        self._release(path)
        return None

    async def _resumes(self, session: Session, path: Path, reopened: bool) -> bool:
        """Whether the agent starts with its resume args. ``auto``: only where this task's own agent
        ran, the task's folder (or a kept folder this session's agent used), so its conversation is the
        one resumed; never in a fresh worktree (a branch session, or a task session moved aside
        because the task's folder is busy)."""
        if self.settings.resume != "auto":
            return self.settings.resume == "always"
        own = reopened or (
            session.task_id is not None
            and self._git.task_path is not None
            and path == self._git.task_path(session.task_id)
        )
        if not own:
            return False
        return self._has_conversation is None or await asyncio.to_thread(self._has_conversation, path)

    async def _attach(self, sid: str, conn: str | None, read_only: bool, last_seq: int) -> None:
        if conn is None:
            return
        session = self.sessions.get(sid)
        if session is None or session.ended:
            self._send(
                fr.ExitFrame(sessionId=sid, code=-1, reason="no such session on this runner", to=[conn])
            )
            return
        await session.ready.wait()
        if session.ended:
            return
        self._flush(session)
        session.viewers[conn] = read_only
        session.alone_since = None
        session.last_activity = self._clock()  # an open or a resume counts as use, as typing does
        if last_seq + 1 < session.oldest_seq and last_seq > 0:
            self._error(
                conn, "some output is no longer buffered; the screen may be incomplete", sid, "output_lost"
            )
        next_seq = max(last_seq + 1, session.oldest_seq)
        self._send(
            fr.OpenedFrame(
                sessionId=sid, branch=session.branch, nextSeq=next_seq, resumed=last_seq > 0, to=[conn]
            )
        )
        for frame in session.ring:
            if frame.seq >= next_seq:
                self._send(frame.model_copy(update={"to": [conn]}))

    def _detach(self, sid: str, conn: str) -> None:
        session = self.sessions.get(sid)
        if session:
            session.inputs.pop(conn, None)
        if session and session.viewers.pop(conn, None) is not None and not session.viewers:
            session.alone_since = self._clock()

    # -- input -------------------------------------------------------------------------------
    def _writable(self, sid: str, conn: str | None, read_only: bool) -> Session | None:
        session = self.sessions.get(sid)
        if session is None or session.ended:
            if conn:
                self._send(
                    fr.ExitFrame(sessionId=sid, code=-1, reason="no such session on this runner", to=[conn])
                )
            return None
        if read_only or (conn is not None and session.viewers.get(conn, False)):
            # the relay refuses these first; the runner does not trust that alone
            self._error(conn, "this connection is read-only", sid, "read_only")
            return None
        return session

    def _input(self, frame: fr.InputFrame) -> None:
        session = self._writable(frame.sessionId, frame.connectionId, frame.readOnly)
        if session is None or session.child is None:
            return
        if frame.connectionId and frame.connectionId not in session.viewers:
            session.viewers[frame.connectionId] = False
            session.alone_since = None
        session.last_activity = self._clock()
        orderer = session.inputs.setdefault(frame.connectionId or "", fr.InputOrderer())
        self._write(session, orderer.push(frame.seq, frame.data))
        if orderer.held:
            # a keystroke is missing: wait a moment for it, then carry on without it
            asyncio.get_running_loop().call_later(
                INPUT_GAP_SECONDS, lambda: self._write(session, orderer.skip_gap())
            )

    def _write(self, session: Session, chunks: list[str]) -> None:
        if not chunks or session.child is None:
            return
        try:
            os.write(session.child.child_fd, "".join(chunks).encode())
        except OSError:
            logger.info("session %s: input after the agent exited", session.id)

    def _resize(self, frame: fr.ResizeFrame) -> None:
        session = self._writable(frame.sessionId, frame.connectionId, frame.readOnly)
        if session and session.child is not None:
            try:
                session.child.setwinsize(frame.rows, frame.cols)
            except OSError:
                pass

    async def _push(self, session: Session, conn: str | None, message: str) -> None:
        assert session.path is not None
        try:
            check_branch(session.branch, self._protected)
            sha = await asyncio.to_thread(self._git.commit_and_push, session.path, session.branch, message)
        except Exception as e:  # noqa: BLE001 - reported to the user who asked
            logger.warning("session %s: push failed: %s", session.id, e)
            self._error(conn, f"push failed: {e}"[:2000], session.id, "push_failed")
            return
        for to in _viewer_groups(session) or [[]]:
            self._send(fr.PushedFrame(sessionId=session.id, commitSha=sha, to=to))

    # -- output ------------------------------------------------------------------------------
    def _start_reading(self, session: Session) -> None:
        assert session.child is not None
        asyncio.get_running_loop().add_reader(session.child.child_fd, self._on_readable, session)
        session.reading = True

    def _on_readable(self, session: Session) -> None:
        assert session.child is not None
        try:
            data = os.read(session.child.child_fd, READ_CHUNK)
        except OSError:
            data = b""
        if not data:
            self._stop_reading(session)
            self._spawn_task(self._end(session, None))
            return
        self._feed(session, session.decoder.decode(data))

    def _stop_reading(self, session: Session) -> None:
        if session.reading and session.child is not None:
            asyncio.get_running_loop().remove_reader(session.child.child_fd)
        session.reading = False

    def _feed(self, session: Session, text: str) -> None:
        if not text:
            return
        # output is not activity: an agent that keeps printing must not keep its session alive
        session.pending.append(text)
        session.pending_size += len(text)
        if session.pending_size >= FLUSH_BYTES:
            self._flush(session)
        elif session.flush_handle is None:
            delay = self.settings.coalesce_ms / 1000
            session.flush_handle = asyncio.get_running_loop().call_later(delay, self._flush, session)

    def _flush(self, session: Session) -> None:
        if session.flush_handle is not None:
            session.flush_handle.cancel()
            session.flush_handle = None
        if not session.pending:
            return
        text = "".join(session.pending)
        session.pending.clear()
        session.pending_size = 0
        groups = _viewer_groups(session)
        for frame in fr.output_frames(session.id, session.seq + 1, text):
            session.seq = frame.seq
            session.ring.append(frame)
            session.ring_size += len(frame.data)
            for to in groups:
                self._send(frame.model_copy(update={"to": to}))
        while session.ring_size > self.settings.ring_bytes and len(session.ring) > 1:
            session.ring_size -= len(session.ring.popleft().data)

    # -- ending ------------------------------------------------------------------------------
    async def _end(self, session: Session, reason: str | None) -> None:
        if session.ended:
            return
        session.ended = True
        self._stop_reading(session)
        child = session.child
        code = -1
        if child is not None:
            if reason is not None:
                child.terminate(force=True)
            else:
                # the agent exited by itself: drain what is left in the pty first
                self._drain(session)
            await asyncio.to_thread(_close_child, child)
            code = child.exitstatus if child.exitstatus is not None else -(child.signalstatus or 1)
        tail = session.decoder.decode(b"", final=True)
        if tail:
            self._feed(session, tail)
        self._flush(session)
        ending: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ending[session.id] = ending
        self.sessions.pop(session.id, None)
        self._paused.discard(session.id)
        session.ready.set()
        try:
            # with no viewer left, one exit with no ``to``: the relay tells the session's browsers
            for to in _viewer_groups(session) or [[]]:
                self._send(fr.ExitFrame(sessionId=session.id, code=code, reason=reason, to=to))
            logger.info("session %s ended (code %s, %s)", session.id, code, reason or "agent exited")
            if session.path is not None and await asyncio.to_thread(self._cleanup, session.path):
                self._kept[session.id] = (session.branch, session.path)
        finally:
            del self._ending[session.id]
            ending.set_result(None)

    def _drain(self, session: Session) -> None:
        assert session.child is not None
        while True:
            try:
                data = os.read(session.child.child_fd, READ_CHUNK)
            except OSError:
                return
            if not data:
                return
            self._feed(session, session.decoder.decode(data))

    def _cleanup(self, path: Path) -> bool:
        """Remove an ended session's worktree; True when it holds uncommitted work and is kept instead
        (ended sessions commit nothing, and discard nothing either)."""
        try:
            dirty = subprocess.run(
                ["git", "status", "--porcelain"], cwd=path, capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            dirty = "unknown"
        if dirty:
            logger.warning("terminal worktree %s has uncommitted changes; kept for the next open", path)
            return True
        self._release(path)
        return False

    def _release(self, path: Path) -> None:
        try:
            self._git.remove_worktree(path)
        except Exception:  # noqa: BLE001 - cleanup must not take the runner down
            logger.exception("could not remove worktree %s", path)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_interval)
            now = self._clock()
            for session in list(self.sessions.values()):
                if session.ended or not session.ready.is_set():
                    continue
                if (
                    session.alone_since is not None
                    and now - session.alone_since > self.settings.grace_seconds
                ):
                    await self._end(session, "no browser for the grace period")
                elif now - session.last_activity > self.settings.idle_seconds:
                    await self._end(session, "idle timeout")


def _viewer_groups(session: Session) -> list[list[str]]:
    """The session's viewers in groups of at most MAX_TO (what one runner frame's ``to`` may name):
    a frame goes out once per group, so there is no cap on how many browsers watch a session."""
    viewers = list(session.viewers)
    return [viewers[i : i + fr.MAX_TO] for i in range(0, len(viewers), fr.MAX_TO)]


def _close_child(child: pexpect.spawn) -> None:
    try:
        child.close(force=True)
    except (OSError, pexpect.ExceptionPexpect):
        pass


def _git_summary(path: Path, branch: str) -> str:
    """``git status`` and ``git diff --stat`` as the seed printed them when a terminal opened."""
    parts = [f"\x1b[1m# {branch} — git status\x1b[0m\n"]
    for args in (["-c", "color.status=always", "status"], ["diff", "--stat", "--color=always"]):
        try:
            done = subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=30)
            parts.append(done.stdout + done.stderr)
        except (OSError, subprocess.SubprocessError) as e:
            parts.append(f"git {args[-1]} failed: {e}\n")
    return "".join(parts).replace("\r\n", "\n").replace("\n", "\r\n")
