"""``aipm dlq list | show MSG | redrive [--all | MSG...] | purge [--yes]``: the dead letters.

Every command reads the letters hidden for a short while and puts back every one it did not delete
(``shared.dead_letters.DeadLetterQueue.held``): listing loses nothing, and a refused command (an
unknown message id, no confirmation) changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import (
    ClientError,
)

from ec2_runner.commands import context
from ec2_runner.console import CliError, ExitCode, print_json, table, view

LIST_LIMIT = 1000  # letters read by one command at most (each is hidden while it runs)
COLUMNS = [
    ("message_id", "message id"),
    ("task_id", "task"),
    ("verdict", "verdict"),
    ("receive_count", "receives"),
    ("first_sent", "first sent"),
    ("age", "age"),
    ("task_status", "task status"),
    ("task_error", "task error"),
]


def register(sub: Any) -> None:
    """``aipm dlq ...`` on the top-level sub-parsers."""
    dlq = sub.add_parser("dlq", help="the dead letters: list, show, redrive, purge")
    cmds = dlq.add_subparsers(dest="dlq_cmd", required=True)

    ls = cmds.add_parser("list", help="every dead letter, with its task's status and error")
    ls.add_argument("--limit", type=int, default=LIST_LIMIT, help=f"letters at most (default {LIST_LIMIT})")
    ls.add_argument("--json", action="store_true", help="one JSON document for scripts")
    ls.set_defaults(func=cmd_list)

    sh = cmds.add_parser(
        "show", help="one dead letter: its body, what the dead-letter function found, its task"
    )
    sh.add_argument("message_id", help="the letter's message id (or the original signal's)")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=cmd_show)

    rd = cmds.add_parser(
        "redrive", help="run the letters' tasks again (reset to pending, signal) and remove the letters"
    )
    which = rd.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every letter")
    which.add_argument("message_ids", nargs="*", default=[], metavar="MSG")
    rd.add_argument("--json", action="store_true")
    rd.set_defaults(func=cmd_redrive)

    pg = cmds.add_parser("purge", help="delete every dead letter")
    pg.add_argument("--yes", action="store_true", help="do not ask")
    pg.add_argument("--json", action="store_true")
    pg.set_defaults(func=cmd_purge)


# -- the commands --------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CliError("--limit must be at least 1")
    queue = _queue()
    with _reaching(queue.url), queue.held(args.limit) as held:
        rows = [_listed(h.letter, _task_of(h.letter.task_id)) for h in held]
    rows.sort(key=lambda r: r["first_sent"] or "")
    if args.json:
        print_json(rows)
    else:
        table(
            [{**r, "age": _age(r["age_seconds"]), "task_error": _error_text(r["task"])} for r in rows],
            COLUMNS,
            title=f"{len(rows)} dead letter(s) in {queue.url}",
        )
    return int(ExitCode.OK)


def cmd_show(args: argparse.Namespace) -> int:
    from shared.dead_letters import select

    queue = _queue()
    with _reaching(queue.url), queue.held(LIST_LIMIT) as held:
        chosen, unknown = select(held, [args.message_id])
        if unknown:
            raise _not_found(unknown, queue.url)
        letter = chosen[0].letter
        row = _listed(letter, _task_of(letter.task_id))
    if args.json:
        print_json(row)
        return int(ExitCode.OK)
    task = row["task"] or {}
    view(
        {
            "message id": letter.message_id,
            "original message id": letter.original_message_id,
            "task": letter.task_id or f"(not a task signal: {letter.signal_error})",
            "verdict": letter.verdict.value,
            "note": letter.note,
            "receives": letter.receive_count,
            "first sent": letter.first_sent,
            "age": _age(letter.age_seconds),
            "body": letter.body,
            "task status": task.get("status")
            if row["task"]
            else ("(no such task)" if letter.task_id else None),
            "task error": _error_text(row["task"]),
            "task attempts": task.get("attempts"),
            "task updated": task.get("updatedAt"),
        },
        title=f"dead letter {letter.message_id}",
    )
    return int(ExitCode.OK)


def cmd_redrive(args: argparse.Namespace) -> int:
    from shared.dead_letters import RedriveOutcome, redrive, select
    from shared.dispatch import Dispatcher

    if not args.all and not args.message_ids:
        raise CliError("name the letters to redrive (MSG...), or pass --all")
    s = context.settings()
    if not s.task_queue_url:
        raise CliError(
            "no task queue configured: set TASK_QUEUE_URL to the stack's TaskQueueUrl output "
            "(or run this in the local stack's folder)"
        )
    queue = _queue()
    with _reaching(queue.url), queue.held(LIST_LIMIT) as held:
        if args.all:
            chosen = held
        else:
            chosen, unknown = select(held, args.message_ids)
            if unknown:
                raise _not_found(unknown, queue.url)  # nothing redriven: every letter goes back
        store, dispatcher = context.store(), Dispatcher(queue.sqs, s.task_queue_url)
        results = [redrive(queue, h, store, dispatcher) for h in chosen]
    if args.json:
        print_json([r.model_dump(mode="json") for r in results])
    elif not results:
        print("no dead letters to redrive")
    else:
        for r in results:  # one sentence per letter: what became of its task
            print(f"{r.message_id}: {r.sentence}")
    kept = [r for r in results if r.outcome is RedriveOutcome.KEPT]
    if kept:
        print(
            f"aipm dlq redrive: {len(kept)} letter(s) had nothing to run and stay in the DLQ "
            "(`aipm dlq show MSG` says why; `aipm dlq purge` removes them)",
            file=sys.stderr,
        )
        return int(ExitCode.FAILED)
    return int(ExitCode.OK)


def cmd_purge(args: argparse.Namespace) -> int:
    queue = _queue()
    with _reaching(queue.url), queue.held(LIST_LIMIT) as held:
        if held and not args.yes:
            if not sys.stdin.isatty():
                raise CliError(f"this deletes {len(held)} dead letter(s) for good: pass --yes to confirm")
            answer = input(f"delete {len(held)} dead letter(s) from {queue.url} for good? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                raise CliError("nothing deleted", ExitCode.FAILED)
        for h in held:
            queue.delete(h)
    if args.json:
        print_json({"deleted": [h.letter.message_id for h in held]})
    else:
        print(f"deleted {len(held)} dead letter(s) from {queue.url}")
    return int(ExitCode.OK)


# -- helpers -------------------------------------------------------------------------------------
def _queue() -> Any:
    from shared.dead_letters import DeadLetterQueue

    s = context.settings()
    if not s.dlq_url:
        raise CliError(
            "no dead-letter queue configured: set DLQ_URL to the stack's DeadLetterQueueUrl output "
            "(or run this in the local stack's folder)"
        )
    return DeadLetterQueue(context.client("sqs"), s.dlq_url)


def _task_of(task_id: str | None) -> dict[str, Any] | None:
    """The letter's task row (plain values), or None: no task id, or no such row."""
    from shared.store import TaskNotFoundError

    if task_id is None:
        return None
    try:
        return context.store().get_row(task_id)
    except TaskNotFoundError:
        return None


def _listed(letter: Any, task: dict[str, Any] | None) -> dict[str, Any]:
    fields = letter.model_dump(mode="json")
    summary = (
        {k: task.get(k) for k in ("status", "error", "errorKind", "attempts", "updatedAt")} if task else None
    )
    return {**fields, "task": summary, "task_status": summary["status"] if summary else None}


def _error_text(task: dict[str, Any] | None) -> str:
    if not task or not task.get("error"):
        return ""
    kind = task.get("errorKind")
    return f"{task['error']} ({kind})" if kind else str(task["error"])


def _age(seconds: float | None) -> str:
    """``seconds`` in its two largest units: 2d 3h, 5m 2s, 12s."""
    if seconds is None:
        return ""
    left = max(int(seconds), 0)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, left = divmod(left, size)
        if count or (unit == "s" and not parts):
            parts.append(f"{count}{unit}")
    return " ".join(parts[:2])


def _not_found(unknown: list[str], url: str) -> CliError:
    names = ", ".join(repr(m) for m in unknown)
    return CliError(
        f"no dead letter with message id {names} in {url}: `aipm dlq list` shows the letters there "
        "(nothing was changed)",
        ExitCode.NOT_FOUND,
    )


@contextlib.contextmanager
def _reaching(url: str) -> Iterator[None]:
    """A missing dead-letter queue as its own sentence (not found, naming it); every other AWS error
    goes to ``aipm``'s one translation (``commands.aws_errors``: which endpoint, what to do)."""
    try:
        yield
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if "NonExistentQueue" in code or "QueueDoesNotExist" in code:
            s = context.settings()
            where = s.aws_endpoint_url or f"AWS in {s.aws_region}"
            raise CliError(
                f"the dead-letter queue {url} does not exist at {where}", ExitCode.NOT_FOUND
            ) from e
        raise
