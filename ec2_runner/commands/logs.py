"""``aipm logs ID [--follow]``: a task's agent output.

Without ``--follow``: the row's ``logTail`` (the last few thousand characters, refreshed by the
runner every ``LOG_TAIL_SECONDS`` while the task runs), and the task's status on stderr. With
``--follow``: the run's output as it happens, over the same WebSocket API a browser uses (a
read-only token for the task, minted as ``aipm token --read-only`` does), from the start of the run,
until the task ends; from any machine that reaches the stack. Exit 0 when the task completed, 1 when
it failed.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlencode

from ec2_runner.commands import context
from ec2_runner.console import CliError, ExitCode, print_json

RETRY_SECONDS = 1.0  # how often a task not running yet (or not reachable live yet) is looked at again
TOKEN_TTL = 900
# what ends a follow: the token is refused, or the relay says it never will be granted
FATAL = ("not_granted", "token_expired", "forbidden")


def register(sub: Any) -> None:
    lg = sub.add_parser("logs", help="a task's agent output: its log tail, or --follow it live")
    lg.add_argument("task_id")
    lg.add_argument("--follow", "-f", action="store_true", help="stream the output until the task ends")
    lg.add_argument("--json", action="store_true", help="JSON: the row's tail, or one line per chunk")
    lg.add_argument("--user", default=None, help="the token's subject (default: your login name)")
    lg.set_defaults(func=cmd_logs)


def cmd_logs(args: argparse.Namespace) -> int:
    row = read_row(args.task_id)
    final = row.get("status") in ("complete", "failed")
    if not args.follow or final:  # an ended task has nothing live to follow: the row has it all
        if args.json:
            print_json({k: row.get(k) for k in ("id", "status", "logTail", "error", "errorKind")})
        else:
            sys.stdout.write(_ends_with_newline(str(row.get("logTail") or "")))
            sys.stderr.write(status_line(row) + "\n")
        if not args.follow:
            return 0
        return int(ExitCode.OK if row.get("status") == "complete" else ExitCode.FAILED)
    ws_url = context.settings().ws_url
    if not ws_url:
        raise CliError(
            "no WebSocket endpoint to follow the task on: set WS_URL (the stack's WebSocketUrl output), "
            "or run in the local stack's folder",
            ExitCode.USAGE,
        )
    secret = context.token_secret()
    user = args.user or getpass.getuser()
    follower = Follower(
        ws_url,
        lambda: mint_watch_token(secret, args.task_id, user),
        args.task_id,
        lambda: read_row(args.task_id),
        sys.stdout,
        as_json=args.json,
    )
    try:
        row = asyncio.run(follower.run())
    except KeyboardInterrupt:
        return 130
    sys.stderr.write(status_line(row) + "\n")
    return int(ExitCode.OK if row.get("status") == "complete" else ExitCode.FAILED)


def read_row(task_id: str) -> dict[str, Any]:
    from shared.store import TaskNotFoundError

    try:
        return context.store().get_row(task_id)
    except TaskNotFoundError:
        raise CliError(f"no task {task_id!r} in the queue table", ExitCode.NOT_FOUND) from None


def status_line(row: dict[str, Any]) -> str:
    status = row.get("status")
    line = f"task {row.get('id')}: {status}"
    if status == "complete" and row.get("commitSha"):
        line += f" (pushed {str(row['commitSha'])[:12]})"
    if status == "failed":
        kind = f" [{row['errorKind']}]" if row.get("errorKind") else ""
        line += f"{kind}: {row.get('error') or ''}"
    return line


def mint_watch_token(secret: str, task_id: str, user: str) -> str:
    """A read-only browser token for the task, as ``aipm token --task ID --read-only`` mints it."""
    from shared import tokens

    return tokens.mint(secret, sub=user, task=task_id, read_only=True, ttl=TOKEN_TTL)


def _ends_with_newline(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


@dataclass
class Follower:
    """Follows one task over the WebSocket API until its row is final; returns that row.

    A task not running yet is waited for; a run is watched from its start (``open {taskId}``,
    ``lastSeq`` 0) and, after a dropped connection, from the last ``seq`` written; a run that ends
    without a final row (given back, lost to another runner) is followed into its next attempt."""

    ws_url: str
    token: Callable[[], str]
    task_id: str
    row: Callable[[], dict[str, Any]]
    out: TextIO
    as_json: bool = False
    retry: float = RETRY_SECONDS
    said: set[str] = field(default_factory=set)

    async def run(self) -> dict[str, Any]:
        from shared import frames as fr

        reasm = fr.SeqReassembler()
        streamed = False
        attempt: Any = None
        while True:
            row = await asyncio.to_thread(self.row)
            status = row.get("status")
            if row.get("attempts") != attempt:
                attempt, reasm = row.get("attempts"), fr.SeqReassembler()  # a new run numbers afresh
            if status in ("complete", "failed"):
                if not streamed:  # nothing live: what the row kept is all there is
                    self._write(str(row.get("logTail") or ""))
                return row
            if status != "processing":
                self._say(f"waiting for a runner to take the task (status {status})")
                await asyncio.sleep(self.retry)
                continue
            watched = await self._watch(reasm)
            streamed = streamed or reasm.last_seq > 0
            if watched == "again":
                reasm = fr.SeqReassembler()  # a new attempt: its own numbering
                continue
            if watched != "ended":
                await asyncio.sleep(self.retry)

    async def _watch(self, reasm: Any) -> str:
        """One connection: ``ended`` (the run's end was seen), ``again`` (the task runs again
        later), ``retry`` (nothing to watch yet, or the connection dropped)."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        from shared import frames as fr

        url = f"{self.ws_url}{'&' if '?' in self.ws_url else '?'}{urlencode({'token': self.token()})}"
        try:
            async with connect(url, max_size=fr.MAX_MESSAGE_BYTES, open_timeout=10) as ws:
                await ws.send(fr.encode(fr.OpenFrame(task_id=self.task_id, last_seq=reasm.last_seq)))
                async for raw in ws:
                    try:
                        frame = fr.decode(raw, role="runner")
                    except fr.FrameError:
                        continue
                    if isinstance(frame, fr.OpenedFrame):
                        self._write_chunks(reasm.start(frame.next_seq))
                    elif isinstance(frame, fr.OutputFrame):
                        self._write_chunks(reasm.push(frame.seq, frame.data))
                    elif isinstance(frame, fr.TaskFrame):
                        if frame.status in ("pending", "lost"):
                            self._say(f"the run ended ({frame.status}); following the task's next attempt")
                            return "again"
                    elif isinstance(frame, fr.QuestionFrame) and frame.pending:
                        asked = (frame.question or "").strip().splitlines()[-1:] or ["a question"]
                        self._say(
                            f"the run waits for a person's answer ({'/'.join(frame.choices)}, from a "
                            f"read-write token for the task, within {frame.timeout_seconds or 0:g} s): "
                            f"{asked[0]}"
                        )
                    elif isinstance(frame, fr.ExitFrame):
                        return "ended"
                    elif isinstance(frame, fr.ErrorFrame):
                        if frame.code in FATAL:
                            raise CliError(f"the relay refused to show the task: {frame.message}")
                        if frame.code == "output_lost":
                            self._say(frame.message)
                            continue
                        # no_session, no_runner, runner_gone, throttled: not watchable right now
                        return "retry"
        except InvalidStatus as e:
            raise CliError(
                f"the WebSocket endpoint {self.ws_url} refused the watch token "
                f"(HTTP {e.response.status_code}): is TOKEN_SECRET the stack's?",
                ExitCode.FAILED,
            ) from None
        except (OSError, TimeoutError) as e:
            raise CliError(
                f"could not reach the WebSocket endpoint {self.ws_url} ({e})", ExitCode.UNREACHABLE
            ) from None
        except ConnectionClosed:
            return "retry"
        return "retry"

    def _write_chunks(self, chunks: list[str]) -> None:
        for chunk in chunks:
            self._write(chunk.replace("\r\n", "\n"))

    def _write(self, text: str) -> None:
        if not text:
            return
        if self.as_json:
            print_json({"id": self.task_id, "output": text})
            return
        self.out.write(text)
        self.out.flush()

    def _say(self, text: str) -> None:
        if text not in self.said:
            self.said.add(text)
            sys.stderr.write(f"aipm logs: {text}\n")
            sys.stderr.flush()
