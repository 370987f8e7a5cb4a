"""``aipm tasks`` (and its old name ``list``), ``aipm task show|retry`` (and ``retry``): the queue
table through its status index, one task in full, and the operator's conditional reset.

The ``task`` group takes more sub-commands from other modules: ``register`` returns its
sub-parsers, and calls any ``task_commands`` registrar given with them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ec2_runner import console
from ec2_runner.commands import rows
from ec2_runner.commands.context import settings, store
from ec2_runner.console import CliError, ExitCode

STATUSES = ("pending", "processing", "complete", "failed")
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000

TaskCommands = Callable[[Any], None]  # adds sub-commands to the ``task`` group's sub-parsers


def positive_int(text: str) -> int:
    """An argparse type: a whole number from 1 to ``MAX_LIMIT`` (a bad one is a usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{value} is not from 1 to {MAX_LIMIT}")
    return value


def no_such_task(task_id: str) -> CliError:
    return CliError(
        f"no such task {rows.cell(task_id)!r} in table {settings().table_name} (`aipm tasks` lists them)",
        ExitCode.NOT_FOUND,
    )


# -- tasks / list -------------------------------------------------------------------------------


def listing(status: str | None, branch: str | None, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` tasks, newest first, of ``status`` (else of every status) and ``branch``,
    each through the status index: one Query per status, never a scan."""
    from shared.models import TaskStatus

    found: list[dict[str, Any]] = []
    s = store()
    for st in [TaskStatus(status)] if status else list(TaskStatus):
        found += [rows.listed(r) for r in s.list_tasks(st, limit=limit, branch=branch, newest_first=True)]
    found.sort(key=lambda r: str(r.get("createdAt") or ""), reverse=True)
    return found[:limit]


def cmd_tasks(args: argparse.Namespace) -> int:
    found = listing(args.status, args.branch, args.limit)
    if args.format == "json":
        console.print_json(found)
    elif args.format == "lines":  # ``aipm list``'s own output since the seed: one JSON row a line
        for row in found:
            console.print_json(row)
    else:
        _print_table(found, args)
    return ExitCode.OK


def _print_table(found: list[dict[str, Any]], args: argparse.Namespace) -> None:
    shown = [
        {
            "id": rows.cell(r.get("id")),
            "status": rows.cell(r.get("status")) + (" (invalid)" if r.get("invalid") else ""),
            "kind": rows.cell(r.get("errorKind")),
            "branch": rows.cell(r.get("branch")),
            "title": rows.cell(r.get("title")),
            "created": rows.ago(r.get("createdAt")),
            "attempts": rows.cell(r.get("attempts")),
            "outcome": rows.outcome(r),
        }
        for r in found
    ]
    where = " ".join(f"{k} {v}" for k, v in (("status", args.status), ("branch", args.branch)) if v)
    title = f"tasks, newest first{' (' + where + ')' if where else ''}"
    if not shown:
        console.err().print(f"no {title.split(',')[0]}{' with ' + where if where else ''}")
        return
    console.table(
        shown,
        [
            ("id", "id"),
            ("status", "status"),
            ("kind", "error kind"),
            ("branch", "branch"),
            ("title", "title"),
            ("created", "created"),
            ("attempts", "attempts"),
            ("outcome", "outcome"),
        ],
        title=title,
    )


# -- task show / task retry / retry -------------------------------------------------------------


def cmd_show(args: argparse.Namespace) -> int:
    from shared.store import InvalidRowError, TaskNotFoundError

    s = store()
    try:
        row = s.get_row(args.task_id)
    except TaskNotFoundError:
        raise no_such_task(args.task_id) from None
    if args.json:
        console.print_json(row)
        return ExitCode.OK
    fields = rows.shown(row)
    try:
        s.get(args.task_id)
    except InvalidRowError as e:  # the runner will not run it: say why
        fields["invalid"] = rows.cell(e.reason)
    except TaskNotFoundError:
        raise no_such_task(args.task_id) from None
    console.view(fields, title=f"task {rows.cell(args.task_id)}")
    return ExitCode.OK


def cmd_retry(args: argparse.Namespace) -> int:
    from shared.store import TaskNotFoundError, TransitionError

    try:
        store().reset(args.task_id)
    except TaskNotFoundError:
        raise no_such_task(args.task_id) from None
    except TransitionError as e:
        raise CliError(f"{e}: only a task that ended can be run again", ExitCode.FAILED) from None
    if args.json:
        console.print_json({"id": args.task_id, "status": "pending"})
    else:
        console.out().print(f"{rows.cell(args.task_id)}: pending again (the runners are signalled)")
    return ExitCode.OK


# -- the parser ---------------------------------------------------------------------------------


def _tasks_arguments(p: argparse.ArgumentParser, default_format: str) -> None:
    p.add_argument("--status", choices=STATUSES, help="only tasks of this status")
    p.add_argument("--branch", help="only tasks of this branch")
    p.add_argument(
        "--limit",
        type=positive_int,
        default=DEFAULT_LIMIT,
        help=f"at most this many (default {DEFAULT_LIMIT})",
    )
    p.add_argument(
        "--json", dest="format", action="store_const", const="json", help="one JSON array, for scripts"
    )
    p.set_defaults(func=cmd_tasks, format=default_format)


def _task_id_command(
    group: Any, group_name: str, name: str, func: Callable[[argparse.Namespace], int], help: str
) -> Any:
    p = group.add_parser(name, help=help, description=help)
    p.add_argument("task_id", metavar="ID", help="the task's id")
    p.add_argument("--json", action="store_true", help="JSON, for scripts")
    p.set_defaults(func=func, command=f"{group_name} {name}" if group_name else name)
    return p


def register(sub: Any, *task_commands: TaskCommands) -> Any:
    """Add ``tasks``, ``list``, the ``task`` group and ``retry`` to ``sub``; returns the ``task``
    group's sub-parsers (each of ``task_commands`` is called with them too, to add its own)."""
    _tasks_arguments(
        sub.add_parser("tasks", help="list tasks, newest first (status index, never a scan)"), "table"
    )
    _tasks_arguments(
        sub.add_parser("list", help="list tasks as JSON lines (the old name of `aipm tasks`)"), "lines"
    )

    task = sub.add_parser("task", help="one task: show, retry, ...", description="one task")
    group = task.add_subparsers(dest="task_cmd", required=True, metavar="COMMAND")
    _task_id_command(
        group, "task", "show", cmd_show, "every field of one task: times, attempts, commit, error, log"
    )
    _task_id_command(group, "task", "retry", cmd_retry, "put a complete or failed task back to pending")
    _task_id_command(
        sub, "", "retry", cmd_retry, "put a complete or failed task back to pending (`task retry`)"
    )
    for add in task_commands:
        add(group)
    return group
