"""The pty driver: one headless run of a command in a real pty, through pexpect.

It streams the output as plain, redacted text while the command works, stops it when asked, at the
deadline, or when a watcher (an adapter's rules about the output) says so, and knows the command is
done when its process ends, even if something it started still holds the pty. Nothing of the
command is left running afterwards. What the output *means* is the adapter's business, not this one.

A watcher may also say the command asks a person something (:class:`Ask`): with an :class:`Asker`
(``APPROVAL=escalate``) the run is held, its pty alive, until the answer comes (then it is typed in
and the run goes on) or the question's timeout passes (the run ends as the ask's ``refuse``); the
time held does not count against the run's own timeout. Without one, the ask is refused at once.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pexpect

from ec2_runner.ansi import OutputCleaner, Redactor
from ec2_runner.reaping import die_with_parent, group_alive, kill_process_group
from shared.models import ErrorKind

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # how often should_stop, the deadline and the watcher are checked while it is quiet
TAIL_CHARS = 64 * 1024  # output kept for the result; the runner stores a shorter tail still
WINDOW_CHARS = 8192  # recent plain text a watcher is shown
PTY_ROWS, PTY_COLS = 50, 200


@dataclass(frozen=True)
class Stop:
    """A watcher's verdict: end the run with ``error`` (of ``kind``), after sending ``answer`` (a
    line) to the command."""

    error: str
    answer: str | None = None
    kind: ErrorKind = field(default=ErrorKind.AGENT_EXIT, compare=False)


@dataclass(frozen=True)
class Ask:
    """A watcher's verdict: the command asks a person ``question`` and waits; one of ``choices``
    answers it. Ended as ``refuse`` (its answer sent) when nobody can be asked, and as ``refuse``
    with ``unanswered`` as its error when nobody answers within ``timeout`` seconds."""

    question: str
    choices: tuple[str, ...]
    refuse: Stop
    unanswered: str
    timeout: float


class Asker(Protocol):
    """Where a run's question goes to a person and its answer comes from (the pipeline gives one:
    the row says what the run waits for, the task's watchers may answer). Thread-safe."""

    def ask(self, question: str, choices: tuple[str, ...], timeout: float) -> None:
        """The question is out: tell whoever may answer it."""
        ...

    def answer(self) -> str | None:
        """The answer given so far (one of the choices), or None; never blocks."""
        ...

    def settled(self, answer: str | None) -> None:
        """The question is over: answered with ``answer``, or None (nobody answered, or the run ended)."""
        ...


# (recent plain text, time.monotonic()) -> Stop to end the run, Ask to hold it for a person, or None.
# Called on every pass of the loop, at least every POLL_SECONDS, so a watcher may also act on time
# (a login left waiting). It is not called while a question waits for its answer.
Watch = Callable[[str, float], Stop | Ask | None]


@dataclass
class PtyRun:
    """What one run of the command printed and how it ended."""

    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None  # set when the run was stopped (timeout, should_stop, a watcher's Stop)
    kind: ErrorKind | None = None  # what stopped it, with ``error``
    tail: list[str] = field(default_factory=list)
    tail_len: int = 0

    def keep(self, text: str) -> None:
        self.tail.append(text)
        self.tail_len += len(text)
        self._trim()

    def keep_before(self, text: str) -> None:
        self.tail.insert(0, text)
        self.tail_len += len(text)
        self._trim()

    def _trim(self) -> None:
        while self.tail_len > TAIL_CHARS and len(self.tail) > 1:
            self.tail_len -= len(self.tail.pop(0))
        if self.tail_len > TAIL_CHARS:
            self.tail[0] = self.tail[0][-TAIL_CHARS:]
            self.tail_len = len(self.tail[0])

    @property
    def output(self) -> str:
        return "".join(self.tail)


def drive(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    *,
    redact: Redactor,
    deadline: float,
    limit: float,
    kill_grace: float,
    on_output: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool | str] | None = None,
    watch: Watch | None = None,
    asker: Asker | None = None,
) -> PtyRun:
    """Run ``argv`` in ``cwd`` in a pty until it exits, is stopped, or reaches ``deadline`` (``limit``
    is the timeout as the error names it). ``on_output`` hears the plain text as it streams; a
    watcher's :class:`Ask` goes to ``asker`` (None: refused at once)."""
    run = PtyRun()
    try:
        child = pexpect.spawn(
            argv[0],
            argv[1:],
            cwd=str(cwd),
            env=env,
            encoding="utf-8",
            codec_errors="replace",
            dimensions=(PTY_ROWS, PTY_COLS),
            maxread=65536,
            echo=False,
            timeout=None,
            preexec_fn=die_with_parent,
        )
    except (pexpect.ExceptionPexpect, OSError) as e:
        run.error = f"could not start the agent ({argv[0]}): {e}"
        run.kind = ErrorKind.AGENT_UNAVAILABLE
        return run
    child.delaybeforesend = None
    child.delayafterclose = child.ptyproc.delayafterclose = 0  # we reap it ourselves; no fixed sleep
    cleaner = OutputCleaner(redact)
    window = ""  # recent plain text, what the watcher looks at
    anything = re.compile(r".+", re.DOTALL)

    def emit(text: str) -> None:
        nonlocal window
        if not text:
            return
        run.keep(text)
        window = (window + text)[-WINDOW_CHARS:]
        if on_output is not None:
            try:
                on_output(text)
            except Exception:  # a broken listener must not break the run
                logger.exception("on_output callback failed")

    def stop(error: str, kind: ErrorKind) -> None:
        run.error = error
        run.kind = kind
        kill_process_group(child, kill_grace)

    def refuse(ask: Stop, error: str) -> None:
        if ask.answer is not None:
            child.sendline(ask.answer)
        stop(error, ask.kind)

    asking: Ask | None = None  # a question held for a person
    asked_at = 0.0
    try:
        while True:
            now = time.monotonic()
            reason = should_stop() if should_stop is not None else False
            if reason:
                detail = reason if isinstance(reason, str) else "stop requested"
                stop(f"agent stopped: {detail}", ErrorKind.CANCELLED)
                break
            if asking is not None and asker is not None:
                answer = asker.answer()
                if answer is not None:
                    child.sendline(answer)
                    asker.settled(answer)
                    deadline += now - asked_at  # a person's time is not the agent's
                    emit(cleaner.flush())  # the question is over: no watcher sees it again
                    window = ""
                    emit(f"\n[runner] a person answered {answer!r}\n")
                    logger.info("the question was answered %r; the run goes on", answer)
                    asking = None
                elif now - asked_at >= asking.timeout:
                    logger.warning("nobody answered the agent's question within %g s", asking.timeout)
                    refuse(asking.refuse, asking.unanswered)
                    break
            elif now >= deadline:
                stop(f"agent timed out after {limit:g} s", ErrorKind.AGENT_TIMEOUT)
                break
            wait = POLL_SECONDS if asking is not None else max(0.0, min(POLL_SECONDS, deadline - now))
            index = child.expect([pexpect.EOF, pexpect.TIMEOUT, anything], timeout=wait)
            if index == 2:
                emit(cleaner.feed(child.after))
            elif index == 0:
                emit(cleaner.feed(child.before or ""))
                break
            if watch is not None and asking is None:
                verdict = watch(window + cleaner.peek(), time.monotonic())
                if isinstance(verdict, Ask) and asker is not None:
                    asking, asked_at = verdict, time.monotonic()
                    logger.warning(
                        "the agent asks a person (waiting up to %g s): %s",
                        verdict.timeout,
                        verdict.question[-200:],
                    )
                    asker.ask(verdict.question, verdict.choices, verdict.timeout)
                elif isinstance(verdict, Ask):
                    refuse(verdict.refuse, verdict.refuse.error)
                    break
                elif verdict is not None:
                    refuse(verdict, verdict.error)
                    break
            if not child.isalive():
                # done = the command's exit; something it started may still hold the pty open, so
                # read what is left instead of waiting for an EOF that might never come
                _drain(child, cleaner, emit)
                break
        emit(cleaner.flush())
    finally:
        if asking is not None and asker is not None:
            asker.settled(None)  # unanswered: timed out, stopped, or the command gave up by itself
        _finish(child, run, kill_grace)
    return run


def _drain(child: pexpect.spawn, cleaner: OutputCleaner, emit: Callable[[str], None]) -> None:
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        try:
            data = child.read_nonblocking(65536, timeout=0.05)
        except (pexpect.TIMEOUT, pexpect.EOF):
            break
        emit(cleaner.feed(data))


def _finish(child: pexpect.spawn, run: PtyRun, kill_grace: float) -> None:
    """Collect the exit status and leave nothing of the command running."""
    if child.isalive() or group_alive(child.pid):
        kill_process_group(child, kill_grace)
    try:
        child.close(force=True)
    except pexpect.ExceptionPexpect:
        logger.warning("could not close the agent's pty cleanly")
    run.exit_code = child.exitstatus
    run.signal = child.signalstatus
