"""Every WebSocket frame of the Refine terminal, as pydantic models, with pure encode/decode.

JSON text frames; ``action`` selects both the API Gateway route (``$request.body.action``) and the
model. Browsers send ``open``, ``resume``, ``input``, ``resize``, ``close`` and ``push``; the relay
forwards them to the runner holding the session, stamped with the sender's ``connectionId`` and
``readOnly`` (whatever a browser puts there itself is overwritten). Runners send ``hello``,
``opened``, ``output``, ``exit``, ``error``, ``pushed`` and ``task``; their ``to`` names the browser
connections the relay posts to (stripped before posting). The relay itself sends ``detach`` to a
runner when a browser goes away.

Watching a task: while a task runs headless, its runner holds the task's session
(``session_id_for(task_id=...)``) and says so with ``hello``; an ``open {taskId}`` (read-only or
not) attaches to the run: ``opened`` with ``headless: true``, the run's output from its start as
``output`` frames, then ``task`` (the row's final status) and ``exit``. A run held for a person
(``APPROVAL=escalate``) says so with ``question`` (``pending: true``, to every watcher and to one
attaching later); a read-write connection answers it by ``input`` (one of ``choices`` and Enter),
and ``question`` with ``pending: false`` says it is over.

Limits are API Gateway's: a frame is at most 32 KB, a message at most 128 KB.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.alias_generators import to_camel

MAX_FRAME_BYTES = 32 * 1024
MAX_MESSAGE_BYTES = 128 * 1024
# how long a relay Lambda keeps a session's route (the runner connection it posts the session's
# frames to) before reading it again: a runner that moves to a new connection keeps reading its old
# one at least this long, so input a relay still posts there is not lost
ROUTE_CACHE_SECONDS = 5.0
# a runner's output frame carries at most this much encoded data, leaving room for ``to``
OUTPUT_DATA_BUDGET = 28 * 1024
MAX_TO = 32
# no frame nests deeper than 2; past this a message is refused before it is parsed (a parser's
# recursion, or a validator's, never meets a hostile depth)
MAX_DEPTH = 16
# the data of one input frame: its encoding (with the relay's stamp) stays under MAX_FRAME_BYTES
# even when JSON escapes nothing; a client splits a paste into pieces of this many UTF-8 bytes
INPUT_DATA_BYTES = 24 * 1024
# what a refusal may quote of its input, and how long its reason may be
QUOTE_CHARS = 16
MAX_REASON_CHARS = 160
# what a read-only open of a session nobody has opened gets (``error`` code ``no_session``)
NO_SESSION_READ_ONLY = (
    "nothing is open here yet: a read-only token can only watch a session that someone with write "
    "access has opened"
)

BROWSER_ACTIONS = frozenset({"open", "resume", "input", "resize", "close", "push"})
RUNNER_ACTIONS = frozenset({"hello", "opened", "output", "exit", "error", "pushed", "task", "question"})
RELAY_ACTIONS = frozenset({"detach", "routed"})
# the keepalive: browsers and runners send ``ping``; API Gateway's MOCK ``ping`` route answers ``pong``
# itself (the relay answers one that reaches ``$default``, where that route is not deployed)
KEEPALIVE_ACTIONS = frozenset({"ping"})
GATEWAY_ACTIONS = frozenset({"pong"})


class FrameError(ValueError):
    """A frame that cannot be decoded or encoded."""


class MalformedFrameError(FrameError):
    """Not JSON, not an object, an unknown action or fields of the wrong shape."""


class FrameTooLargeError(FrameError):
    """Over API Gateway's size limits."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"frame of {size} bytes is over the {limit}-byte limit")


class ForbiddenActionError(FrameError):
    """A valid action the sender's role may not send (a browser sending ``output``)."""

    def __init__(self, action: str, role: str) -> None:
        self.action = action
        self.role = role
        super().__init__(f"action {action!r} is not allowed for a {role} connection")


class _Frame(BaseModel):
    # camelCase on the wire, snake_case in Python; decode() accepts only the wire names
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


SessionId = Annotated[str, Field(min_length=1, max_length=128)]
# a page's own random id for its input (``InputFrame.writer``): letters, digits, - and _
WriterId = Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class _BrowserFrame(_Frame):
    # set by the relay on the way to the runner; a browser's own value is never trusted
    connection_id: str | None = Field(default=None, max_length=128)
    read_only: bool = False


# -- browser -> runner ---------------------------------------------------------------------------
class OpenFrame(_BrowserFrame):
    """Open (or attach to) the terminal of a task or a branch; the token must grant it."""

    action: Literal["open"] = "open"
    task_id: str | None = Field(default=None, min_length=1, max_length=256)
    branch: str | None = Field(default=None, min_length=1, max_length=256)
    last_seq: int = Field(default=0, ge=0)
    session_id: SessionId | None = None
    cols: int | None = Field(default=None, ge=1, le=1000)
    rows: int | None = Field(default=None, ge=1, le=1000)

    @model_validator(mode="after")
    def _one_target(self) -> OpenFrame:
        if (self.task_id is None) == (self.branch is None):
            raise ValueError("open needs exactly one of taskId or branch")
        return self


class ResumeFrame(_BrowserFrame):
    """Re-attach after a reconnect; the runner replays everything after ``lastSeq``."""

    action: Literal["resume"] = "resume"
    session_id: SessionId
    last_seq: int = Field(default=0, ge=0)


class InputFrame(_BrowserFrame):
    """Keystrokes or a piece of a paste: a client splits a long paste by UTF-8 bytes, so every
    frame stays under API Gateway's 32 KB (``INPUT_DATA_BYTES`` of data, ``utf8_pieces``)."""

    action: Literal["input"] = "input"
    session_id: SessionId
    data: str = Field(max_length=MAX_FRAME_BYTES)
    # typed order: API Gateway may run a connection's messages through concurrent invocations, so
    # keystrokes can reach the runner out of order (None: as they come). From 1 on each connection,
    # or, with ``writer``, from 1 across all the connections of that page: a page that reconnects
    # while its old connection's frames are still being relayed keeps its keystrokes in order.
    seq: int | None = Field(default=None, ge=1)
    writer: WriterId | None = None


class ResizeFrame(_BrowserFrame):
    action: Literal["resize"] = "resize"
    session_id: SessionId
    cols: int = Field(ge=1, le=1000)
    rows: int = Field(ge=1, le=1000)


class CloseFrame(_BrowserFrame):
    action: Literal["close"] = "close"
    session_id: SessionId


class PushFrame(_BrowserFrame):
    """Commit what the session changed and push it, under the pipeline's branch rules."""

    action: Literal["push"] = "push"
    session_id: SessionId
    message: str = Field(default="Refine with Kiro", min_length=1, max_length=4000)


# -- relay -> runner -----------------------------------------------------------------------------
class DetachFrame(_Frame):
    """A browser connection of the session went away."""

    action: Literal["detach"] = "detach"
    session_id: SessionId
    connection_id: str


class RoutedFrame(_Frame):
    """The relay's answer to a runner's ``hello``: its sessions are routed to this connection now
    (a runner moving to a new connection closes the old one only after this)."""

    action: Literal["routed"] = "routed"
    sessions: int = Field(default=0, ge=0)


# -- keepalive (browser or runner -> API Gateway, and back) ----------------------------------------
class PingFrame(_Frame):
    action: Literal["ping"] = "ping"


class PongFrame(_Frame):
    action: Literal["pong"] = "pong"


# -- runner -> browsers --------------------------------------------------------------------------
class _RunnerFrame(_Frame):
    to: list[str] = Field(default_factory=list, max_length=MAX_TO)


class HelloFrame(_RunnerFrame):
    """A runner (re)connected; ``sessions`` are the ones it still holds, so routes follow it."""

    action: Literal["hello"] = "hello"
    runner_id: str = Field(min_length=1, max_length=128)
    sessions: list[SessionId] = Field(default_factory=list, max_length=256)


class OpenedFrame(_RunnerFrame):
    """The session is ready; frames from ``nextSeq`` on follow (replay first)."""

    action: Literal["opened"] = "opened"
    session_id: SessionId
    branch: str
    next_seq: int = Field(ge=1)
    resumed: bool = False
    # a task's headless run (output only, input refused), not a Refine terminal; None: a terminal
    headless: bool | None = None
    task_id: str | None = Field(default=None, max_length=256)


class OutputFrame(_RunnerFrame):
    action: Literal["output"] = "output"
    session_id: SessionId
    seq: int = Field(ge=1)
    data: str


class ExitFrame(_RunnerFrame):
    action: Literal["exit"] = "exit"
    session_id: SessionId
    code: int
    reason: str | None = None


class ErrorFrame(_RunnerFrame):
    """Also what the relay answers a refused browser frame with."""

    action: Literal["error"] = "error"
    message: str = Field(max_length=4000)
    session_id: SessionId | None = None
    code: str | None = None  # machine-readable: forbidden, read_only, throttled, not_granted, ...


class TaskFrame(_RunnerFrame):
    """How a watched task's run ended, as its row now says (sent just before its ``exit``):
    ``status`` is ``complete`` or ``failed`` (``errorKind`` beside ``error``), ``pending`` when the
    task was given back (it runs again later), or ``lost`` when another runner took it over."""

    action: Literal["task"] = "task"
    session_id: SessionId
    task_id: str = Field(min_length=1, max_length=256)
    status: str = Field(min_length=1, max_length=32)
    commit_sha: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, max_length=2000)
    error_kind: str | None = Field(default=None, max_length=64)


class QuestionFrame(_RunnerFrame):
    """A watched run waits for a person (``pending: true``): the agent asked ``question``, which a
    read-write connection answers by typing one of ``choices`` and Enter within ``timeoutSeconds``
    of the question; ``pending: false`` once it is over (``answer`` given, or None: unanswered)."""

    action: Literal["question"] = "question"
    session_id: SessionId
    task_id: str = Field(min_length=1, max_length=256)
    pending: bool
    question: str | None = Field(default=None, max_length=2000)
    choices: list[str] = Field(default_factory=list, max_length=8)
    timeout_seconds: float | None = Field(default=None, ge=0)
    answer: str | None = Field(default=None, max_length=16)


class PushedFrame(_RunnerFrame):
    action: Literal["pushed"] = "pushed"
    session_id: SessionId
    commit_sha: str | None = None


BrowserFrame = Annotated[
    OpenFrame | ResumeFrame | InputFrame | ResizeFrame | CloseFrame | PushFrame | PingFrame,
    Field(discriminator="action"),
]
RunnerFrame = Annotated[
    HelloFrame
    | OpenedFrame
    | OutputFrame
    | ExitFrame
    | ErrorFrame
    | PushedFrame
    | TaskFrame
    | QuestionFrame
    | PingFrame,
    Field(discriminator="action"),
]
# what a browser connection receives: the runner's frames (less ``to``) and the gateway's pong
ToBrowserFrame = Annotated[
    HelloFrame
    | OpenedFrame
    | OutputFrame
    | ExitFrame
    | ErrorFrame
    | PushedFrame
    | TaskFrame
    | QuestionFrame
    | PongFrame,
    Field(discriminator="action"),
]
ToRunnerFrame = Annotated[
    OpenFrame
    | ResumeFrame
    | InputFrame
    | ResizeFrame
    | CloseFrame
    | PushFrame
    | DetachFrame
    | RoutedFrame
    | PongFrame,
    Field(discriminator="action"),
]
Frame = Annotated[
    OpenFrame
    | ResumeFrame
    | InputFrame
    | ResizeFrame
    | CloseFrame
    | PushFrame
    | DetachFrame
    | HelloFrame
    | OpenedFrame
    | OutputFrame
    | ExitFrame
    | ErrorFrame
    | PushedFrame
    | TaskFrame
    | QuestionFrame
    | RoutedFrame
    | PingFrame
    | PongFrame,
    Field(discriminator="action"),
]

_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "browser": TypeAdapter(BrowserFrame),
    "runner": TypeAdapter(RunnerFrame),
    "to_runner": TypeAdapter(ToRunnerFrame),
    "to_browser": TypeAdapter(ToBrowserFrame),
    "any": TypeAdapter(Frame),
}
ALL_ACTIONS = BROWSER_ACTIONS | RUNNER_ACTIONS | RELAY_ACTIONS | KEEPALIVE_ACTIONS | GATEWAY_ACTIONS
_ALLOWED = {
    "browser": BROWSER_ACTIONS | KEEPALIVE_ACTIONS,
    "runner": RUNNER_ACTIONS | KEEPALIVE_ACTIONS,
    "to_runner": BROWSER_ACTIONS | RELAY_ACTIONS | GATEWAY_ACTIONS,
    "to_browser": RUNNER_ACTIONS | GATEWAY_ACTIONS,
    "any": ALL_ACTIONS,
}


def decode(
    raw: str | bytes, role: Literal["browser", "runner", "to_runner", "to_browser", "any"] = "any"
) -> Any:
    """Parse one message into its frame model; ``role`` restricts the actions accepted.

    Raises FrameTooLargeError (over 128 KB), ForbiddenActionError (a known action this role may not
    send) or MalformedFrameError.
    """
    size = len(raw.encode(errors="surrogatepass") if isinstance(raw, str) else raw)
    if size > MAX_MESSAGE_BYTES:
        raise FrameTooLargeError(size, MAX_MESSAGE_BYTES)
    if isinstance(raw, bytes):
        try:
            raw = raw.decode()
        except UnicodeDecodeError as e:
            raise MalformedFrameError("frame is not UTF-8 text") from e
    if _too_deep(raw, MAX_DEPTH):
        raise MalformedFrameError(f"frame nests deeper than {MAX_DEPTH} levels")
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise MalformedFrameError(f"frame is not JSON: {_clip(str(e))}") from e
    if not isinstance(obj, dict):
        raise MalformedFrameError("frame is not a JSON object")
    action = obj.get("action")
    if not isinstance(action, str):
        raise MalformedFrameError("frame has no string 'action'")
    if action not in ALL_ACTIONS:
        raise MalformedFrameError(f"unknown action {_quote(action)}")
    if action not in _ALLOWED[role]:
        raise ForbiddenActionError(action, role)
    try:
        return _ADAPTERS[role].validate_python(obj, by_alias=True, by_name=False)
    except ValidationError as e:
        raise MalformedFrameError(_short(e)) from e
    except RecursionError as e:  # not reached past the depth check; kept as the last word
        raise MalformedFrameError(f"frame nests deeper than {MAX_DEPTH} levels") from e


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def _too_deep(text: str, limit: int) -> bool:
    """Whether the JSON text nests arrays and objects more than ``limit`` deep (brackets inside
    strings do not count); linear in the text, no recursion."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for m in _BRACKET.finditer(_STRING.sub("", text)):
        if m.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _quote(text: str) -> str:
    """At most QUOTE_CHARS of a client's text, as a Python literal (so nothing in it is raw)."""
    return repr(text[:QUOTE_CHARS]) + ("..." if len(text) > QUOTE_CHARS else "")


def _clip(text: str, limit: int = MAX_REASON_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def encode(frame: _Frame, limit: int = MAX_FRAME_BYTES, *, exclude: set[str] | None = None) -> str:
    """The frame as compact JSON text; raises FrameTooLargeError over ``limit`` bytes (32 KB)."""
    drop = set(exclude or ())
    if isinstance(frame, _RunnerFrame) and not frame.to:
        drop.add("to")
    if isinstance(frame, _BrowserFrame):
        if frame.connection_id is None:
            drop.add("connection_id")
        if not frame.read_only:
            drop.add("read_only")
    text = json.dumps(
        frame.model_dump(mode="json", exclude=drop, exclude_none=True),
        ensure_ascii=False,
        separators=(",", ":"),
    )
    size = len(text.encode())
    if size > limit:
        raise FrameTooLargeError(size, limit)
    return text


def for_browser(frame: _RunnerFrame) -> str:
    """A runner frame as posted to a browser: without the routing list."""
    return encode(frame, exclude={"to"})


def output_frames(
    session_id: str, first_seq: int, text: str, budget: int = OUTPUT_DATA_BUDGET
) -> list[OutputFrame]:
    """Split ``text`` into output frames whose encoding stays under ``budget`` bytes, seq from ``first_seq``.

    JSON escaping can grow control characters six-fold, so chunks are measured after encoding; a
    chunk that is too large is cut in proportion to its excess (plain text fills a frame at the first
    try, so a burst takes as few frames, and as few relay calls, as the budget allows).
    """
    frames: list[OutputFrame] = []
    seq = first_seq
    pos = 0
    while pos < len(text):
        envelope = len(encode(OutputFrame(session_id=session_id, seq=seq, data="")).encode())
        room = max(1, budget - envelope)
        n = min(len(text) - pos, room)
        while True:
            frame = OutputFrame(session_id=session_id, seq=seq, data=text[pos : pos + n])
            size = len(encode(frame, limit=10 * MAX_MESSAGE_BYTES).encode())
            if size <= budget or n == 1:
                break
            n = max(1, min(n - 1, n * room // max(1, size - envelope)))
        frames.append(frame)
        pos += n
        seq += 1
    return frames


def utf8_pieces(text: str, limit: int) -> list[str]:
    """``text`` cut into pieces of at most ``limit`` UTF-8 bytes, never inside a character (a
    paste split into input frames, a message into WebSocket frames)."""
    if limit < 4:
        raise ValueError("a piece must hold at least one character (4 bytes)")
    data = text.encode(errors="surrogatepass")
    if len(data) <= limit:
        return [text]
    pieces: list[str] = []
    start = 0
    while start < len(data):
        end = min(start + limit, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # inside a character: back off
            end -= 1
        pieces.append(data[start:end].decode(errors="surrogatepass"))
        start = end
    return pieces


def session_id_for(task_id: str | None = None, branch: str | None = None) -> str:
    """The one session a task or branch grant names: stable, so every browser of a grant meets there."""
    if (task_id is None) == (branch is None):
        raise ValueError("exactly one of task_id or branch")
    scope = f"task:{task_id}" if task_id is not None else f"branch:{branch}"
    return "s-" + hashlib.sha256(scope.encode()).hexdigest()[:24]


class InputOrderer:
    """Puts one writer's input back in typed order (``InputFrame.seq``); pure, no I/O.

    A gap that does not fill (the relay refused a frame, say a throttled one) is skipped once the
    runner's wait for it passes with nothing written (``start_wait()``, then ``waited()``), or at
    once when ``max_held`` frames are waiting. A wait in which earlier frames did arrive starts over:
    the gap is filling (a page's old connection still relaying what was typed on it). Frames
    without a seq pass straight through.
    """

    def __init__(self, max_held: int = 64) -> None:
        self.next_seq = 1
        self.held: dict[int, str] = {}
        self.written = 0  # frames given out in order so far
        self._max_held = max_held
        self._waiting = False
        self._written_at_wait = 0

    def push(self, seq: int | None, data: str) -> list[str]:
        """Add one frame; returns the data now in order to be written."""
        if seq is None:
            return [data]
        if seq < self.next_seq:
            return []  # a duplicate
        self.held[seq] = data
        if len(self.held) > self._max_held:
            return self.skip_gap()
        return self._drain()

    def skip_gap(self) -> list[str]:
        """Give up on the missing frame(s): continue from the lowest one held."""
        if self.held:
            self.next_seq = min(self.held)
        return self._drain()

    def start_wait(self) -> bool:
        """True when frames are held behind a gap and no wait for it is under way: the caller
        waits, then calls ``waited()``."""
        if not self.held or self._waiting:
            return False
        self._waiting, self._written_at_wait = True, self.written
        return True

    def waited(self) -> tuple[list[str], bool]:
        """The wait ended: what to write now and whether to wait again. Frames written meanwhile
        mean the gap is filling, so it waits again; a wait with no progress skips the gap."""
        if not self.held:
            self._waiting = False
            return [], False
        out = [] if self.written != self._written_at_wait else self.skip_gap()
        self._waiting = bool(self.held)
        self._written_at_wait = self.written
        return out, self._waiting

    def _drain(self) -> list[str]:
        out = []
        while self.next_seq in self.held:
            out.append(self.held.pop(self.next_seq))
            self.next_seq += 1
        self.written += len(out)
        return out


class SeqReassembler:
    """Puts a session's output back in ``seq`` order and drops duplicates.

    API Gateway may run a connection's messages through concurrent Lambda invocations, and a resume
    replays frames a browser may already hold, so clients apply output strictly by ``seq``.
    Frames that arrive before ``start`` (the ``opened`` frame's ``nextSeq``) is known are held.
    """

    def __init__(self, next_seq: int | None = None, max_pending: int = 4096) -> None:
        self.next_seq = next_seq
        self._pending: dict[int, str] = {}
        self._max_pending = max_pending

    @property
    def last_seq(self) -> int:
        """The last seq applied (what a ``resume`` asks to continue after)."""
        return (self.next_seq or 1) - 1

    def start(self, next_seq: int) -> list[str]:
        """Learn where the stream starts (from ``opened``); returns what is now in order."""
        if self.next_seq is None or next_seq > self.next_seq:
            self.next_seq = next_seq
        return self._drain()

    def push(self, seq: int, data: str) -> list[str]:
        """Add one output frame; returns the data now deliverable, in order."""
        if self.next_seq is not None and seq < self.next_seq:
            return []
        self._pending[seq] = data
        if len(self._pending) > self._max_pending and self.next_seq is not None:
            # a gap that never fills (a lost frame): skip to what we have rather than stall forever
            self.next_seq = min(self._pending)
        return self._drain()

    def _drain(self) -> list[str]:
        out: list[str] = []
        if self.next_seq is None:
            return out
        for k in [k for k in self._pending if k < self.next_seq]:
            del self._pending[k]
        while self.next_seq in self._pending:
            out.append(self._pending.pop(self.next_seq))
            self.next_seq += 1
        return out


def _short(err: ValidationError) -> str:
    """The first validation error in a line of bounded length: field names are the client's own
    keys (an unknown one may be 10 KB), so each is quoted short; pydantic's message quotes no input."""
    first = err.errors(include_url=False, include_input=False)[0]
    loc = ".".join(
        _quote(str(p)) if len(str(p)) > QUOTE_CHARS else str(p)
        for p in first.get("loc", ())
        if not isinstance(p, int)
    )
    return _clip(f"invalid frame: {loc or 'frame'}: {first.get('msg')}")
