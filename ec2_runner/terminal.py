"""Refine terminal sessions on the runner, the I/O side: one agent pty per session, on one event loop.

A session starts on the first ``open`` for its id: its folder from
:class:`~ec2_runner.terminal_worktrees.SessionWorktrees` (which decides where, whether the agent
resumes and what is kept), the git status printed into the terminal as the seed did, then the
agent's interactive command in a pexpect pty. This module reads the pty, writes the keystrokes,
coalesces output for a few milliseconds, pauses the ptys while the socket is behind (back-pressure),
runs the idle/grace reaper and the relay's frames; what a session *is* (seq, ring, viewers, typed
order, expiry) lives in :class:`~ec2_runner.session_state.SessionState`, free of I/O.
Sessions outlive their browsers for a grace period, end when idle, and never commit by themselves:
only a ``push`` frame commits and pushes, under the pipeline's branch rules.

Everything here runs on one asyncio loop (the runner's WebSocket client's); blocking git work goes
to threads.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pexpect
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ec2_runner.sandbox import Sandbox, Sandboxed
from ec2_runner.session_state import SessionState
from ec2_runner.terminal_worktrees import GitCallables, SessionWorktrees
from shared import frames as fr
from shared.branches import DEFAULT_PROTECTED, UnsafeBranchError, check_branch

logger = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
# how long out-of-order keystrokes wait, with nothing written, for the one before them; a wait in
# which earlier ones do arrive starts over (a page's old connection still relaying its backlog)
INPUT_GAP_SECONDS = 0.5
OUTBOX_HIGH = 64  # frames waiting for the socket before the pty is paused (backpressure)
OUTBOX_LOW = 16
HEADLESS_RUN = (
    "this task is running headless: its output can be watched, not typed into; open its terminal "
    "once the task has ended"
)
QUESTION_READ_ONLY = (
    "this connection is read-only: it sees the agent's question, but only a token with write "
    "access to the task may answer it"
)
ANSWER_CHARS = 64  # a typed answer longer than this is refused (answers are a word)


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


@dataclass(frozen=True)
class _OpenFailure:
    """Why an open did not get a session: an error ``code`` (None: exit only) and whether to send ``exit``."""

    code: str | None
    message: str
    exit: bool = True


@dataclass(frozen=True)
class TaskTarget:
    """What a task's terminal needs from its row: the branch, and the conversation id the task's
    agent CLI recorded (``agentSessionId``), which a resumed session continues."""

    branch: str
    agent_session_id: str | None = None


@dataclass
class _Asking:
    """A question a task's headless run holds for a person: its frame, who takes the answer, and
    each writer's line typed so far."""

    frame: fr.QuestionFrame
    give: Callable[[str], str | None]
    lines: dict[str, str] = field(default_factory=dict)


@dataclass
class Session:
    """A live session: its state (:class:`SessionState`) and the I/O that feeds it."""

    state: SessionState
    path: Path | None = None
    child: pexpect.spawn | None = None
    boxed: Sandboxed | None = None  # the agent's sandbox (its private directory goes at the end)
    agent_session_id: str | None = None  # the task's agent conversation (from its row), to resume
    flush_handle: asyncio.TimerHandle | None = None
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False
    reading: bool = False
    # input the pty has not taken yet (a large paste into an agent that reads line by line)
    unwritten: bytearray = field(default_factory=bytearray)

    @property
    def id(self) -> str:
        return self.state.id

    @property
    def branch(self) -> str:
        return self.state.branch


class SessionManager:
    """All terminal sessions of one runner. ``outbox`` holds frames for the runner's socket, in order."""

    def __init__(
        self,
        settings: TerminalSettings,
        *,
        argv_for: Callable[..., list[str]],
        git: GitCallables,
        resolve_task: Callable[[str], str | TaskTarget] | None = None,
        has_conversation: Callable[[Path], bool] | None = None,
        protected: tuple[str, ...] | list[str] = DEFAULT_PROTECTED,
        env: dict[str, str] | None = None,
        sandbox: Sandbox | None = None,
        clock: Callable[[], float] = time.monotonic,
        runner_id: str = "runner",
    ) -> None:
        self.settings = settings
        self.runner_id = runner_id
        self._sandbox = sandbox
        self._argv_for = argv_for
        self._worktrees = SessionWorktrees(git, has_conversation)
        self._resolve_task = resolve_task
        self._protected = tuple(protected)
        self._env = env
        self._clock = clock
        self.sessions: dict[str, Session] = {}
        # tasks running headless on this runner, watched: session id -> its output stream
        self.runs: dict[str, Session] = {}
        # runs waiting for a person's answer (APPROVAL=escalate): session id -> the question
        self._asking: dict[str, _Asking] = {}
        self.outbox: asyncio.Queue[fr._Frame] = asyncio.Queue()
        self._reaper: asyncio.Task[None] | None = None
        self._paused: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        # sessions being started: a second open of the same session waits for the first one's outcome
        self._opening: dict[str, asyncio.Future[_OpenFailure | None]] = {}
        self._stopping = False
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
        for run in list(self.runs.values()):
            self._end_run(run, fr.ExitFrame(session_id=run.id, code=-1, reason=reason))

    def held(self) -> list[str]:
        return [s.id for s in self.sessions.values() if not s.ended] + list(self.runs)

    # -- tasks running headless, watched ---------------------------------------------------------
    def start_run(self, task_id: str, branch: str) -> None:
        """A task's headless run starts here: hold its session so watchers reach it (``hello``
        routes it to this runner) and keep its output from the start, for whoever attaches."""
        sid = fr.session_id_for(task_id=task_id)
        if sid in self.sessions or sid in self.runs:
            # a Refine terminal of the task is open here (or a run already is): its viewers stay there
            logger.info("task %s: session %s is already held here; its run is not streamed", task_id, sid)
            return
        state = SessionState(sid, branch, task_id, ring_bytes=self.settings.ring_bytes, now=self._clock())
        run = Session(state)
        run.ready.set()
        self.runs[sid] = run
        self._send(fr.HelloFrame(runner_id=self.runner_id, sessions=[sid]))

    def run_output(self, task_id: str, text: str) -> None:
        """Output of a task's run (plain text, ``\\n`` line ends): framed for its watchers."""
        run = self.runs.get(fr.session_id_for(task_id=task_id))
        if run is not None and text:
            self._feed(run, text.replace("\r\n", "\n").replace("\n", "\r\n"))

    def ask_run(
        self,
        task_id: str,
        question: str,
        choices: tuple[str, ...],
        timeout: float,
        give: Callable[[str], str | None],
    ) -> None:
        """The task's run waits for a person: its watchers get ``question`` (and whoever attaches
        later); a read-write one answers by typing one of ``choices`` and Enter, taken by ``give``."""
        run = self.runs.get(fr.session_id_for(task_id=task_id))
        if run is None:
            return
        self._flush(run)  # the output that shows the question goes first
        frame = fr.QuestionFrame(
            session_id=run.id,
            task_id=task_id,
            pending=True,
            question=question[:2000],
            choices=list(choices),
            timeout_seconds=timeout,
        )
        self._asking[run.id] = _Asking(frame, give)
        for out in run.state.to_viewers(frame):
            self._send(out)

    def settle_run(self, task_id: str, answer: str | None) -> None:
        """The run's question is over (``answer`` given, None: unanswered)."""
        sid = fr.session_id_for(task_id=task_id)
        asking = self._asking.pop(sid, None)
        run = self.runs.get(sid)
        if asking is None or run is None:
            return
        self._flush(run)
        done = asking.frame.model_copy(update={"pending": False, "answer": answer})
        for out in run.state.to_viewers(done):
            self._send(out)

    def end_run(
        self,
        task_id: str,
        status: str,
        commit_sha: str | None = None,
        error: str | None = None,
        error_kind: str | None = None,
    ) -> None:
        """The run is over and its row says ``status``: watchers get ``task`` then ``exit``."""
        run = self.runs.get(fr.session_id_for(task_id=task_id))
        if run is None:
            return
        self._flush(run)
        ended = fr.TaskFrame(
            session_id=run.id,
            task_id=task_id,
            status=status,
            commit_sha=commit_sha,
            error=error[:2000] if error else None,
            error_kind=error_kind,
        )
        for frame in run.state.to_viewers(ended):
            self._send(frame)
        code = {"complete": 0, "failed": 1}.get(status, -1)
        reason = f"task {status}" + (f": {error}" if error else "")
        self._end_run(run, fr.ExitFrame(session_id=run.id, code=code, reason=reason[:500]))

    def _end_run(self, run: Session, exit_frame: fr.ExitFrame) -> None:
        self._flush(run)
        run.ended = True
        self.runs.pop(run.id, None)
        self._asking.pop(run.id, None)
        # to every viewer (or, with none attached here, to the session's browsers through the relay,
        # which drops the route)
        for frame in run.state.to_viewers(exit_frame):
            self._send(frame)

    # -- frames from the relay ---------------------------------------------------------------
    async def handle(self, frame: Any) -> None:
        """One frame from the relay. Slow work (worktree, push) runs in tasks so input never waits."""
        if isinstance(frame, fr.OpenFrame):
            self._spawn_task(self._open(frame))
        elif isinstance(frame, fr.ResumeFrame):
            self._spawn_task(
                self._attach(frame.session_id, frame.connection_id, frame.read_only, frame.last_seq)
            )
        elif isinstance(frame, fr.InputFrame):
            self._input(frame)
        elif isinstance(frame, fr.ResizeFrame):
            self._resize(frame)
        elif isinstance(frame, fr.CloseFrame):
            session = self._writable(frame.session_id, frame.connection_id, frame.read_only)
            if session:
                self._spawn_task(self._end(session, "closed by the user"))
        elif isinstance(frame, fr.PushFrame):
            session = self._writable(frame.session_id, frame.connection_id, frame.read_only)
            if session:
                self._spawn_task(self._push(session, frame.connection_id, frame.message))
        elif isinstance(frame, fr.DetachFrame):
            self._detach(frame.session_id, frame.connection_id)

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
        self._send(fr.ErrorFrame(message=message, session_id=session_id, code=code, to=[to] if to else []))

    # -- open / attach -----------------------------------------------------------------------
    async def _open(self, frame: fr.OpenFrame) -> None:
        sid, conn = frame.session_id, frame.connection_id
        if sid is None or conn is None:
            return
        if sid in self.runs:
            # the task runs headless here: whoever opens it watches (a writer may answer its questions)
            self._attach_run(self.runs[sid], conn, frame.read_only, frame.last_seq)
            return
        opening = self._opening.get(sid)
        if opening is not None:
            # another open of this session is starting it: attach to that one, never start a second
            failure = await asyncio.shield(opening)
        elif sid not in self.sessions and frame.read_only:
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
        await self._attach(sid, conn, frame.read_only, frame.last_seq)

    def _refuse_open(self, conn: str, sid: str, failure: _OpenFailure) -> None:
        if failure.code:
            self._error(conn, failure.message, sid, failure.code)
        if failure.exit:
            self._send(fr.ExitFrame(session_id=sid, code=-1, reason=failure.message[:500], to=[conn]))

    async def _create(self, sid: str, frame: fr.OpenFrame) -> _OpenFailure | None:
        """Start the session ``sid``; None when it runs, else why not (for every browser waiting on it)."""
        if self._stopping:
            return _OpenFailure(None, "runner stopping")
        if len(self.held()) + len(self._opening) > self.settings.max_sessions:
            return _OpenFailure("busy", "this runner has no free terminal slot; try again later", exit=False)
        conversation: str | None = None
        try:
            branch = frame.branch
            if branch is None:
                if self._resolve_task is None:
                    raise LookupError("this runner cannot look tasks up")
                target = await asyncio.to_thread(self._resolve_task, frame.task_id or "")
                if isinstance(target, TaskTarget):
                    branch, conversation = target.branch, target.agent_session_id
                else:
                    branch = target
            branch = check_branch(branch, self._protected)
        except (UnsafeBranchError, LookupError, KeyError, ValueError) as e:
            return _OpenFailure("bad_target", f"cannot open a terminal: {e}")
        ending = self._ending.get(sid)
        if ending is not None:
            await asyncio.shield(ending)  # its worktree is kept or released before the reopen decides
        if self._stopping:
            return _OpenFailure(None, "runner stopping")
        state = SessionState(
            sid, branch, frame.task_id, ring_bytes=self.settings.ring_bytes, now=self._clock()
        )
        session = Session(state, agent_session_id=conversation)
        self.sessions[sid] = session
        try:
            await self._start(session, frame.cols or self.settings.cols, frame.rows or self.settings.rows)
        except Exception as e:
            logger.exception("session %s failed to start", sid)
            self.sessions.pop(sid, None)
            session.ended = True
            session.ready.set()
            return _OpenFailure(None, f"failed to start: {e}")
        if session.ended:
            return _OpenFailure(None, "the session ended while it was starting")
        return None

    async def _start(self, session: Session, cols: int, rows: int) -> None:
        state = session.state
        path, reopened = await asyncio.to_thread(self._worktrees.open, state.id, state.branch, state.task_id)
        session.path = path
        if session.ended:
            # ended (runner stopping) while its worktree was made, before _end could see the folder
            await asyncio.to_thread(self._worktrees.close, state.id, state.branch, path)
            return
        if self.settings.show_git_status:
            summary = await asyncio.to_thread(self._worktrees.summary, path, state.branch)
            self._feed(session, summary)
        resume = await asyncio.to_thread(
            self._worktrees.resumes, self.settings.resume, state.task_id, path, reopened
        )
        if session.ended:
            return  # _end has released the folder; start no agent
        # the task's own conversation when its row names it (Claude Code's, Codex's), else the folder's
        argv = (
            self._argv_for(resume, session.agent_session_id)
            if session.agent_session_id
            else (self._argv_for(resume))
        )
        logger.info("session %s: %s in %s (resume: %s)", session.id, argv[0], path, resume)
        env = self._env
        if self._sandbox is not None:
            session.boxed = self._sandbox.wrap(argv, path, dict(os.environ) if env is None else env)
            argv, env = session.boxed.argv, session.boxed.env
        try:
            child = pexpect.spawn(
                argv[0], argv[1:], cwd=str(path), env=env, dimensions=(rows, cols), encoding=None, echo=True
            )
        except BaseException:
            if session.boxed is not None:
                session.boxed.close()
            raise
        child.delaybeforesend = None
        session.child = child
        self._start_reading(session)
        session.ready.set()

    def _attach_run(self, run: Session, conn: str, read_only: bool, last_seq: int) -> None:
        self._cancel_flush(run)
        for frame in run.state.attach(conn, read_only, last_seq, self._clock()):
            if isinstance(frame, fr.OpenedFrame):
                frame = frame.model_copy(update={"headless": True, "task_id": run.state.task_id})
            self._send(frame)
        asking = self._asking.get(run.id)
        if asking is not None:  # the question it waits on, for one who came after it was asked
            self._send(asking.frame.model_copy(update={"to": [conn]}))

    async def _attach(self, sid: str, conn: str | None, read_only: bool, last_seq: int) -> None:
        if conn is None:
            return
        if sid in self.runs:
            self._attach_run(self.runs[sid], conn, read_only, last_seq)
            return
        session = self.sessions.get(sid)
        if session is None or session.ended:
            self._send(
                fr.ExitFrame(session_id=sid, code=-1, reason="no such session on this runner", to=[conn])
            )
            return
        await session.ready.wait()
        if session.ended:
            return
        self._cancel_flush(session)
        for frame in session.state.attach(conn, read_only, last_seq, self._clock()):
            self._send(frame)

    def _detach(self, sid: str, conn: str) -> None:
        session = self.sessions.get(sid) or self.runs.get(sid)
        if session:
            session.state.detach(conn, self._clock())

    # -- input -------------------------------------------------------------------------------
    def _writable(self, sid: str, conn: str | None, read_only: bool) -> Session | None:
        if sid in self.runs:
            self._error(conn, HEADLESS_RUN, sid, "read_only")
            return None
        session = self.sessions.get(sid)
        if session is None or session.ended:
            if conn:
                self._send(
                    fr.ExitFrame(session_id=sid, code=-1, reason="no such session on this runner", to=[conn])
                )
            return None
        if read_only or session.state.read_only(conn):
            # the relay refuses these first; the runner does not trust that alone
            self._error(conn, "this connection is read-only", sid, "read_only")
            return None
        return session

    def _input(self, frame: fr.InputFrame) -> None:
        if frame.session_id in self.runs:
            self._answer_run(self.runs[frame.session_id], frame)
            return
        session = self._writable(frame.session_id, frame.connection_id, frame.read_only)
        if session is None or session.child is None:
            return
        ready, waited = session.state.typed(
            frame.connection_id, frame.seq, frame.data, self._clock(), writer=frame.writer
        )
        self._write(session, ready)
        if waited is not None:
            # a keystroke is missing: wait a moment for it, then carry on without it
            self._wait_for_gap(waited, lambda chunks: self._write(session, chunks))

    def _answer_run(self, run: Session, frame: fr.InputFrame) -> None:
        """Input to a task's headless run: an answer to the question it waits on, from a read-write
        connection only (the relay refuses read-only input first; the runner does not trust that
        alone), a line at a time."""
        conn = frame.connection_id
        asking = self._asking.get(run.id)
        if frame.read_only or run.state.read_only(conn):
            self._error(conn, QUESTION_READ_ONLY if asking else HEADLESS_RUN, run.id, "read_only")
            return
        if asking is None:
            self._error(conn, HEADLESS_RUN, run.id, "read_only")
            return
        ready, waited = run.state.typed(conn, frame.seq, frame.data, self._clock(), writer=frame.writer)
        self._take_answer(run.id, conn, ready)
        if waited is not None:
            self._wait_for_gap(waited, lambda chunks: self._take_answer(run.id, conn, chunks))

    def _wait_for_gap(
        self, waited: Callable[[], tuple[list[str], bool]], write: Callable[[list[str]], None]
    ) -> None:
        """After INPUT_GAP_SECONDS, write what the wait let through, and wait again while the gap
        is still filling."""

        def done() -> None:
            ready, again = waited()
            write(ready)
            if again:
                self._wait_for_gap(waited, write)

        asyncio.get_running_loop().call_later(INPUT_GAP_SECONDS, done)

    def _take_answer(self, sid: str, conn: str | None, chunks: list[str]) -> None:
        asking = self._asking.get(sid)
        if asking is None or not chunks:
            return
        key = conn or ""
        line = asking.lines.get(key, "")
        for ch in "".join(chunks):
            if ch in "\r\n":
                asking.lines[key] = ""
                refused = asking.give(line)
                if refused is not None:
                    self._error(conn, refused, sid, "bad_answer")
                line = ""
            elif ch in "\x7f\b":
                line = line[:-1]
            elif ch.isprintable():
                line += ch
            if len(line) > ANSWER_CHARS:
                self._error(conn, f"an answer is at most {ANSWER_CHARS} characters", sid, "bad_answer")
                line = ""
        asking.lines[key] = line

    def _write(self, session: Session, chunks: list[str]) -> None:
        if not chunks or session.child is None:
            return
        pending = bool(session.unwritten)
        session.unwritten += "".join(chunks).encode()
        if not pending:
            self._write_some(session)

    def _write_some(self, session: Session) -> None:
        """Write what the pty takes now, the rest when it is writable again. A blocking write of a
        large paste would stall the loop while the agent waits for its echo to be read: a deadlock."""
        child = session.child
        if child is None or session.ended:
            session.unwritten.clear()
            return
        fd = child.child_fd
        loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)  # only this loop reads and writes the pty
        try:
            while session.unwritten:
                n = os.write(fd, session.unwritten)
                del session.unwritten[:n]
        except BlockingIOError:
            pass
        except OSError:
            logger.info("session %s: input after the agent exited", session.id)
            session.unwritten.clear()
        finally:
            os.set_blocking(fd, True)
        if session.unwritten:
            loop.add_writer(fd, self._write_some, session)
        else:
            loop.remove_writer(fd)

    def _resize(self, frame: fr.ResizeFrame) -> None:
        if frame.session_id in self.runs:
            return  # a watcher's window size means nothing to a headless run
        session = self._writable(frame.session_id, frame.connection_id, frame.read_only)
        if session and session.child is not None:
            try:
                session.child.setwinsize(frame.rows, frame.cols)
            except OSError:
                pass

    async def _push(self, session: Session, conn: str | None, message: str) -> None:
        assert session.path is not None
        try:
            check_branch(session.branch, self._protected)
            sha = await asyncio.to_thread(
                self._worktrees.commit_and_push, session.path, session.branch, message
            )
        except Exception as e:
            logger.warning("session %s: push failed: %s", session.id, e)
            self._error(conn, f"push failed: {e}"[:2000], session.id, "push_failed")
            return
        for frame in session.state.to_viewers(fr.PushedFrame(session_id=session.id, commit_sha=sha)):
            self._send(frame)

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
        if session.unwritten and session.child is not None:
            asyncio.get_running_loop().remove_writer(session.child.child_fd)
            session.unwritten.clear()

    def _feed(self, session: Session, text: str) -> None:
        if session.state.buffer(text):
            # a frame's worth is waiting: send the full frames now, the rest when the timer says
            self._cancel_flush(session)
            for frame in session.state.flush(full_frames_only=True):
                self._send(frame)
        if session.state.pending and session.flush_handle is None:
            delay = self.settings.coalesce_ms / 1000
            session.flush_handle = asyncio.get_running_loop().call_later(delay, self._flush, session)

    def _cancel_flush(self, session: Session) -> None:
        if session.flush_handle is not None:
            session.flush_handle.cancel()
            session.flush_handle = None

    def _flush(self, session: Session) -> None:
        self._cancel_flush(session)
        for frame in session.state.flush():
            self._send(frame)

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
        if session.boxed is not None:
            await asyncio.to_thread(session.boxed.close)
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
            for frame in session.state.to_viewers(
                fr.ExitFrame(session_id=session.id, code=code, reason=reason)
            ):
                self._send(frame)
            logger.info("session %s ended (code %s, %s)", session.id, code, reason or "agent exited")
            if session.path is not None:
                await asyncio.to_thread(self._worktrees.close, session.id, session.branch, session.path)
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

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_interval)
            now = self._clock()
            for session in list(self.sessions.values()):
                if session.ended or not session.ready.is_set():
                    continue
                reason = session.state.expired(now, self.settings.grace_seconds, self.settings.idle_seconds)
                if reason is not None:
                    await self._end(session, reason)


def _close_child(child: pexpect.spawn) -> None:
    try:
        child.close(force=True)
    except (OSError, pexpect.ExceptionPexpect):
        pass
