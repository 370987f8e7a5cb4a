"""``aipm task cancel ID``: stop a task.

A pending task (or one whose runner died) ends ``failed`` with ``errorKind`` ``cancelled`` at once,
in one conditional write. A running one gets ``cancelRequestedAt``: its runner's next lease renewal
(a heartbeat, a third of ``LEASE_SECONDS``) is refused, so the runner stops the agent, keeps its
work on ``kiro-wip/<taskId>`` and fails the row ``cancelled``. A task that has ended is refused with
a sentence (exit 1).
"""

from __future__ import annotations

import argparse
from typing import Any

from ec2_runner.commands import context
from ec2_runner.console import CliError, ExitCode, print_json, view


def add_task_cancel(verbs: Any) -> None:
    """``task cancel``, added to the ``task`` group's sub-parsers (``tasks.register``)."""
    cancel = verbs.add_parser(
        "cancel",
        help="stop a task: a pending one ends at once; a running one is stopped by its runner "
        "within one heartbeat, its work kept on kiro-wip/<taskId>",
    )
    cancel.add_argument("task_id")
    cancel.add_argument("--json", action="store_true", help="print the outcome as JSON")
    cancel.set_defaults(func=cmd_cancel, command="task cancel")


def cmd_cancel(args: argparse.Namespace) -> int:
    from shared.store import CancelOutcome, TaskNotFoundError, TransitionError

    try:
        outcome = context.store().cancel(args.task_id)
    except TaskNotFoundError:
        raise CliError(f"no task {args.task_id!r} in the queue table", ExitCode.NOT_FOUND) from None
    except TransitionError as e:
        raise CliError(str(e), ExitCode.FAILED) from None
    if outcome is CancelOutcome.CANCELLED:
        said = "cancelled: the task ended failed (errorKind cancelled)"
    else:
        said = (
            "cancel requested: its runner stops the agent at its next heartbeat, keeps the work on "
            f"kiro-wip/{args.task_id} and ends the task failed (errorKind cancelled)"
        )
    if args.json:
        print_json({"id": args.task_id, "outcome": outcome.value})
    else:
        view({"task": args.task_id, "outcome": said})
    return 0
