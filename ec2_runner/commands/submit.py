"""``aipm submit``: a new pending task, checked by the runner's own rules before anything is
written, inserted as a backend inserts it; ``--wait`` follows it to its end."""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

from ec2_runner import console
from ec2_runner.commands import rows
from ec2_runner.commands.context import settings, store
from ec2_runner.console import CliError, ExitCode

POLL_SECONDS = 1.0  # one strongly consistent GetItem a second while a person watches
FINAL = ("complete", "failed")


def new_row(args: argparse.Namespace) -> dict[str, Any]:
    """The row ``args`` describe (wire names), checked as the runner would check it; CliError
    (usage) naming the field and why when it would refuse it."""
    from shared.task_checks import InvalidSubmission, check_submission

    row: dict[str, Any] = {
        "id": f"task-{uuid.uuid4().hex[:12]}" if args.id is None else args.id,
        "title": args.title,
        "details": args.details,
        "branch": args.branch,
    }
    if args.pr_number is not None:
        row["prNumber"] = args.pr_number
    if args.pr_url is not None:
        row["prUrl"] = args.pr_url
    s = settings()
    try:
        check_submission(row, s.protected_branches, s.max_details_bytes)
    except InvalidSubmission as e:
        option = {"prNumber": "pr-number", "prUrl": "pr-url"}.get(e.field, e.field)
        raise CliError(f"--{option}: {rows.cell(e.reason)}; nothing was written", ExitCode.USAGE) from None
    return row


def cmd_submit(args: argparse.Namespace) -> int:
    from shared.store import TransitionError

    row = new_row(args)
    task_id = row["id"]
    try:
        store().put_new(row)  # conditional on attribute_not_exists(id): never overwrites a task
    except TransitionError:
        raise CliError(
            f"task {rows.cell(task_id)!r} already exists; nothing was written (give a new --id, or "
            f"`aipm task retry {rows.cell(task_id)}` to run it again)",
            ExitCode.FAILED,
        ) from None
    if not args.wait:
        if args.json:
            console.print_json({"id": task_id, "status": "pending"})
        else:
            console.out().print(rows.cell(task_id))
        return ExitCode.OK
    if not args.json:
        console.out().print(rows.cell(task_id))
    final = follow(task_id)
    if args.json:
        console.print_json(final)
    else:
        summary = {k: v for k, v in rows.shown(final).items() if k in _SUMMARY}
        console.view(summary, title=f"task {rows.cell(task_id)}")
    return ExitCode.OK if final.get("status") == "complete" else ExitCode.FAILED


_SUMMARY = ("id", "status", "branch", "attempts", "commitSha", "wipRef", "errorKind", "error", "ran for")


def progress_line(row: dict[str, Any], waited: float) -> str:
    """One line of ``--wait``'s display: status, time since submitted, the agent's last line (or
    what a pending task waits for)."""
    parts = [rows.cell(row.get("status")), rows.span(waited)]
    if (row.get("attempts") or 0) > 1:
        parts.append(f"attempt {rows.cell(row.get('attempts'))}")
    said = rows.last_line(row.get("logTail")) or rows.cell(row.get("waitingFor"))
    if said:
        parts.append(said)
    return "  ".join(parts)


def follow(task_id: str, poll_seconds: float = POLL_SECONDS) -> dict[str, Any]:
    """Read the row until it ends, showing its progress on stderr (a live line on a terminal, a
    line per change otherwise); the row as it ended."""
    from rich.live import Live
    from rich.text import Text

    from shared.store import TaskNotFoundError

    s = store()
    err = console.err()
    started = time.monotonic()
    seen: tuple[Any, ...] = ()
    live = Live(console=err, transient=True, refresh_per_second=4) if err.is_terminal else None
    try:
        if live:
            live.start()
        while True:
            try:
                row = s.get_row(task_id)
            except TaskNotFoundError:
                gone = f"task {rows.cell(task_id)!r} is gone from the table"
                raise CliError(gone, ExitCode.NOT_FOUND) from None
            line = f"{rows.cell(task_id)}  {progress_line(row, time.monotonic() - started)}"
            now_seen = (row.get("status"), row.get("attempts"), row.get("logTail"), row.get("waitingFor"))
            if live:
                live.update(Text(line))
            elif now_seen != seen:  # not a terminal: a line when something but the time changed
                err.print(line)
            seen = now_seen
            if row.get("status") in FINAL:
                return row
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        shown_id = rows.cell(task_id)
        raise CliError(
            f"stopped following {shown_id}; the task goes on (`aipm task show {shown_id}`)",
            ExitCode.INTERRUPTED,
        ) from None
    finally:
        if live:
            live.stop()


def register(sub: Any) -> None:
    p = sub.add_parser(
        "submit",
        help="insert a pending task as the backend does (checked first by the runner's rules)",
        description="Insert a pending task as a backend does. It is checked first by the rules the "
        "runner applies (branch safety, a title, the details' size): a task the runner would refuse "
        "is refused here, and nothing is written.",
    )
    p.add_argument("--title", required=True, help="what to build (the agent's prompt starts with it)")
    p.add_argument("--details", default="", help="the story's details")
    p.add_argument("--branch", required=True, help="the PR branch the runner pushes to")
    p.add_argument("--pr-number", "--pr", dest="pr_number", type=int, help="the pull request's number")
    p.add_argument("--pr-url", help="the pull request's URL")
    p.add_argument("--id", help="the task's id (default: a new task-<random>)")
    p.add_argument("--wait", action="store_true", help="follow the task to its end; exit 1 if it failed")
    p.add_argument("--json", action="store_true", help="JSON, for scripts (with --wait: the final row)")
    p.set_defaults(func=cmd_submit)
