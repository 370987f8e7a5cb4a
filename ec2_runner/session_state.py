"""A Refine terminal session's state, without I/O: no pty, no socket, no event loop, no clock.

It numbers the session's output (``seq``), keeps a bounded ring of it so a browser that comes back
resumes from its ``lastSeq``, knows who watches (and who may only watch), puts each writer's
keystrokes back in typed order (a page's across its reconnects), and says when a session has been
idle or alone too long. Each method takes what happened (the time included) and returns the frames
or bytes to send;
:mod:`ec2_runner.terminal` does the sending, the reading and the timers.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from shared import frames as fr

# buffered output that is framed at once, without waiting for the coalescing timer: a frame's
# budget, so a burst goes out in full frames (each one costs a relay call, a Lambda invocation in AWS)
FLUSH_BYTES = fr.OUTPUT_DATA_BUDGET
# a frame at least this large is full: framing at FLUSH_BYTES sends full frames only and keeps the rest
FULL_FRAME_BYTES = fr.OUTPUT_DATA_BUDGET * 9 // 10
# typed orders a session keeps (each page that typed, each connection without a page id): beyond
# it the longest-known goes, so a stream of made-up writer ids costs a bounded amount of memory
MAX_INPUT_ORDERS = 64


class SessionState:
    """One session: its output stream, its viewers and their input."""

    def __init__(
        self, session_id: str, branch: str, task_id: str | None, *, ring_bytes: int, now: float
    ) -> None:
        self.id = session_id
        self.branch = branch
        self.task_id = task_id
        self.ring_bytes = ring_bytes
        self.seq = 0  # the last seq given out
        self.ring: collections.deque[fr.OutputFrame] = collections.deque()
        self.ring_size = 0
        self.viewers: dict[str, bool] = {}  # connection id -> read-only
        # ("writer", page id) or ("conn", connection id) -> typed order; a page's order outlives
        # its connections, a connection's ends with it
        self.inputs: dict[tuple[str, str], fr.InputOrderer] = {}
        self.last_activity = now
        self.alone_since: float | None = None
        self.pending: list[str] = []  # output not framed yet (coalescing)
        self.pending_size = 0

    @property
    def oldest_seq(self) -> int:
        """The first seq still in the ring (the next one when it is empty)."""
        return self.ring[0].seq if self.ring else self.seq + 1

    # -- output ------------------------------------------------------------------------------
    def buffer(self, text: str) -> bool:
        """Add output to be framed; True when enough is waiting to frame it now. Output is not
        activity: an agent that keeps printing does not keep its session alive."""
        if not text:
            return False
        self.pending.append(text)
        self.pending_size += len(text)
        return self.pending_size >= FLUSH_BYTES

    def flush(self, full_frames_only: bool = False) -> list[fr.OutputFrame]:
        """Frame what is buffered: new seqs, kept in the ring (oldest dropped beyond ``ring_bytes``);
        returns the frames to send, one copy per group of viewers (none when nobody watches). With
        ``full_frames_only`` a last frame that is not full stays buffered (the coalescing timer sends it
        unless more output fills it first)."""
        if not self.pending:
            return []
        text = "".join(self.pending)
        self.pending.clear()
        self.pending_size = 0
        frames = fr.output_frames(self.id, self.seq + 1, text)
        if full_frames_only and len(fr.encode(frames[-1]).encode()) < FULL_FRAME_BYTES:
            tail = frames.pop()
            self.pending.append(tail.data)
            self.pending_size = len(tail.data)
        groups = self.viewer_groups()
        out = []
        for frame in frames:
            self.seq = frame.seq
            self.ring.append(frame)
            self.ring_size += len(frame.data)
            out += [frame.model_copy(update={"to": to}) for to in groups]
        while self.ring_size > self.ring_bytes and len(self.ring) > 1:
            self.ring_size -= len(self.ring.popleft().data)
        return out

    # -- viewers -----------------------------------------------------------------------------
    def attach(self, conn: str, read_only: bool, last_seq: int, now: float) -> list[fr._Frame]:
        """A browser opens or resumes the session, holding output up to ``last_seq`` (0: none).
        Returns, in order: buffered output framed for those already watching, an ``output_lost``
        error when the ring no longer reaches back to ``last_seq``, ``opened``, then the replay."""
        out: list[fr._Frame] = [*self.flush()]
        self.viewers[conn] = read_only
        self.alone_since = None
        self.last_activity = now  # an open or a resume counts as use, as typing does
        if last_seq + 1 < self.oldest_seq and last_seq > 0:
            out.append(
                fr.ErrorFrame(
                    message="some output is no longer buffered; the screen may be incomplete",
                    session_id=self.id,
                    code="output_lost",
                    to=[conn],
                )
            )
        next_seq = max(last_seq + 1, self.oldest_seq)
        out.append(
            fr.OpenedFrame(
                session_id=self.id, branch=self.branch, next_seq=next_seq, resumed=last_seq > 0, to=[conn]
            )
        )
        out += [f.model_copy(update={"to": [conn]}) for f in self.ring if f.seq >= next_seq]
        return out

    def detach(self, conn: str, now: float) -> None:
        """A browser left; when it was the last one, the grace period starts."""
        self.inputs.pop(("conn", conn), None)
        if self.viewers.pop(conn, None) is not None and not self.viewers:
            self.alone_since = now

    def read_only(self, conn: str | None) -> bool:
        """Whether ``conn`` attached read-only (so may not type, resize, push or close)."""
        return conn is not None and self.viewers.get(conn, False)

    def viewer_groups(self) -> list[list[str]]:
        """The viewers in groups of at most MAX_TO (what one runner frame's ``to`` may name): a frame
        goes out once per group, so there is no cap on how many browsers watch a session."""
        viewers = list(self.viewers)
        return [viewers[i : i + fr.MAX_TO] for i in range(0, len(viewers), fr.MAX_TO)]

    def to_viewers(self, frame: fr._RunnerFrame) -> list[fr._RunnerFrame]:
        """``frame`` addressed to every viewer, or once with no ``to`` (the relay then tells the
        session's browsers) when none is attached here."""
        return [frame.model_copy(update={"to": to}) for to in self.viewer_groups()] or [frame]

    # -- input -------------------------------------------------------------------------------
    def typed(
        self, conn: str | None, seq: int | None, data: str, now: float, writer: str | None = None
    ) -> tuple[list[str], Callable[[], tuple[list[str], bool]] | None]:
        """A writer's keystrokes (``seq`` in its own typed order: a page's ``writer`` across its
        connections, else the connection's): the text to write now, in order, and, when an earlier
        keystroke is missing and no wait for it is under way, what to call after a short wait. It
        returns what to write then and whether to wait again (the gap is still filling)."""
        if conn and conn not in self.viewers:
            # input from a connection this runner has not seen attach (a relay that reconnected,
            # or a page's old connection whose last frames are still being relayed)
            self.viewers[conn] = False
            self.alone_since = None
        self.last_activity = now
        key = ("writer", writer) if writer else ("conn", conn or "")
        orderer = self.inputs.get(key)
        if orderer is None:
            orderer = self.inputs[key] = fr.InputOrderer()
            while len(self.inputs) > MAX_INPUT_ORDERS:
                del self.inputs[next(iter(self.inputs))]  # the longest-known writer
        ready = orderer.push(seq, data)
        return ready, (orderer.waited if orderer.start_wait() else None)

    # -- ending ------------------------------------------------------------------------------
    def expired(self, now: float, grace_seconds: float, idle_seconds: float) -> str | None:
        """Why the session should end now, if it should: alone past the grace period, or idle."""
        if self.alone_since is not None and now - self.alone_since > grace_seconds:
            return "no browser for the grace period"
        if now - self.last_activity > idle_seconds:
            return "idle timeout"
        return None
