"""``aipm doctor``: can this host run tasks? Checks AWS, the table, the queues, the WebSocket, the git
remote and the agent, each with a sentence a person can act on; exit 0 when all pass, else 1."""

from __future__ import annotations

import argparse
from typing import Any

from ec2_runner import console
from ec2_runner.console import ExitCode


def register(sub: Any) -> None:
    p = sub.add_parser(
        "doctor",
        help="check that this host can run tasks (AWS, table, queues, WebSocket, git remote, agent login)",
    )
    p.add_argument("--json", action="store_true", help="one JSON document for scripts")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from ec2_runner.doctor_checks import run_checks

    checks = run_checks()
    ok = all(c.ok is not False for c in checks)
    if args.json:
        console.print_json({"ok": ok, "checks": [{**c.model_dump(), "status": c.status} for c in checks]})
    else:
        console.table(
            [{"check": c.name, "status": c.status, "message": c.message} for c in checks],
            [("check", "check"), ("status", "status"), ("message", "what to do / what was found")],
            title="aipm doctor: " + ("all checks pass" if ok else "some checks FAIL"),
        )
    return ExitCode.OK if ok else ExitCode.FAILED
