"""``aipm runners``: every runner of the fleet from its heartbeat record: live ones with what they
hold, and the ones that stopped heartbeating shown as gone (until their record's TTL ends)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from botocore.exceptions import ClientError

from ec2_runner import console
from ec2_runner.commands import context
from ec2_runner.console import CliError, ExitCode
from shared.runners import RunnerRecord, RunnerRegistry

COLUMNS = [
    ("runnerId", "runner"),
    ("liveness", "status"),
    ("host", "host"),
    ("agent", "agent"),
    ("slots", "slots busy"),
    ("tasks", "tasks"),
    ("terminalSessions", "terminals"),
    ("lastSeen", "last seen"),
    ("version", "version"),
]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "runners", help="the fleet: every runner's heartbeat (live, gone or stopped) and what it holds"
    )
    p.add_argument("--json", action="store_true", help="one JSON document for scripts")
    p.set_defaults(func=cmd_runners)


def fleet() -> list[RunnerRecord]:
    """The records of the configured runners table; CliError sentences when it cannot be read."""
    s = context.settings()
    try:
        return RunnerRegistry(context.client("dynamodb"), s.runners_table).list()
    except ClientError as e:
        # a missing runners table by its own name; every other AWS error goes to aipm's one
        # translation (commands.aws_errors: the endpoint, what to do, the README's exit code)
        if e.response.get("Error", {}).get("Code", "") != "ResourceNotFoundException":
            raise
        where = s.aws_endpoint_url or f"AWS ({s.aws_region})"
        raise CliError(
            f"no runners table {s.runners_table!r} at {where}: deploy the stack, or set RUNNERS_TABLE "
            "to its RunnersTable",
            ExitCode.NOT_FOUND,
        ) from None


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _agent(record: RunnerRecord) -> str:
    if record.agent_logged_in is None:
        return record.agent
    return f"{record.agent} ({'logged in' if record.agent_logged_in else 'NOT logged in'})"


def rows(records: list[RunnerRecord], now: float) -> list[dict[str, Any]]:
    out = []
    for r in sorted(records, key=lambda r: (r.liveness(now) != "live", r.runner_id)):
        liveness = r.liveness(now).value
        out.append(
            {
                "runnerId": r.runner_id,
                "liveness": liveness if liveness != "live" else r.state.value,
                "host": r.host,
                "agent": _agent(r),
                "slots": f"{r.slots_busy}/{r.slots_total}",
                "tasks": ", ".join(r.tasks),
                "terminalSessions": r.terminal_sessions,
                "lastSeen": _ago(now - r.last_seen),
                "version": r.version,
            }
        )
    return out


def cmd_runners(args: argparse.Namespace) -> int:
    records = fleet()
    now = time.time()
    if args.json:
        console.print_json(
            [
                {
                    **r.model_dump(by_alias=True, mode="json"),
                    "liveness": r.liveness(now).value,
                    "secondsSinceSeen": round(now - r.last_seen, 1),
                }
                for r in sorted(records, key=lambda r: r.runner_id)
            ]
        )
        return ExitCode.OK
    if not records:
        console.out().print("no runner has written a heartbeat record (none started, or all expired)")
        return ExitCode.OK
    live = sum(1 for r in records if r.liveness(now) == "live")
    console.table(rows(records, now), COLUMNS, title=f"runners: {live} live of {len(records)}")
    return ExitCode.OK
