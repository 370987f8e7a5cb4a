"""``aipm``: the runner, the local stack, and operator commands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ec2_runner import logs


def _aws_settings() -> Any:
    from ec2_runner.config import apply_local_stack_env
    from shared.config import AwsSettings

    apply_local_stack_env()
    return AwsSettings()


def _store() -> Any:
    from shared import aws
    from shared.store import TaskStore

    s = _aws_settings()
    return TaskStore(
        aws.client("dynamodb", region=s.aws_region, endpoint_url=s.aws_endpoint_url), s.table_name
    )


def cmd_runner(args: argparse.Namespace) -> int:
    from ec2_runner.main import main

    return main(max_tasks=args.max_tasks, stop_when_idle=args.stop_when_idle)


def cmd_local(args: argparse.Namespace) -> int:
    from local import commands

    logs.configure(service="aipm-local")
    if args.local_cmd == "up":
        return commands.up(runners=args.runners, aws_port=args.aws_port, gateway_port=args.port)
    return commands.demo(aws_port=args.aws_port)


def cmd_retry(args: argparse.Namespace) -> int:
    from shared.store import TransitionError

    try:
        _store().reset(args.task_id)
    except TransitionError as e:
        print(f"aipm retry: {e}", file=sys.stderr)
        return 1
    print(f"{args.task_id}: pending again")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from shared.models import TaskStatus

    store = _store()
    for status in [TaskStatus(args.status)] if args.status else list(TaskStatus):
        for row in store.list_by_status(status, limit=args.limit):
            print(
                json.dumps({k: row.get(k) for k in ("id", "status", "branch", "title", "commitSha", "error")})
            )
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    import uuid

    row: dict[str, Any] = {
        "id": args.id or f"task-{uuid.uuid4().hex[:12]}",
        "title": args.title,
        "details": args.details,
        "branch": args.branch,
    }
    if args.pr is not None:
        row["prNumber"] = args.pr
    if args.pr_url:
        row["prUrl"] = args.pr_url
    _store().put_new(row)
    print(row["id"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aipm", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("runner", help="run the runner daemon (finds the local stack via .aipm/local.json)")
    r.add_argument("--max-tasks", type=int, default=None)
    r.add_argument("--stop-when-idle", action="store_true")
    r.set_defaults(func=cmd_runner)

    loc = sub.add_parser("local", help="the local stack")
    lsub = loc.add_subparsers(dest="local_cmd", required=True)
    up = lsub.add_parser("up", help="start the local stack in the foreground")
    up.add_argument("--runners", type=int, default=1)
    up.add_argument("--aws-port", type=int, default=4566, help="moto server port (0: any free port)")
    up.add_argument(
        "--port", type=int, default=None, help="local WebSocket gateway port (default $PORT or 8080)"
    )
    demo = lsub.add_parser("demo", help="the local stack plus a sample task")
    demo.add_argument("--aws-port", type=int, default=4566)
    loc.set_defaults(func=cmd_local)

    rt = sub.add_parser("retry", help="put a complete or failed task back to pending")
    rt.add_argument("task_id")
    rt.set_defaults(func=cmd_retry)

    ls = sub.add_parser("list", help="list tasks by status (status index, no scan)")
    ls.add_argument("--status", choices=["pending", "processing", "complete", "failed"])
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(func=cmd_list)

    sb = sub.add_parser("submit", help="insert a pending task as the backend does")
    sb.add_argument("--title", required=True)
    sb.add_argument("--details", default="")
    sb.add_argument("--branch", required=True)
    sb.add_argument("--pr", type=int)
    sb.add_argument("--pr-url")
    sb.add_argument("--id")
    sb.set_defaults(func=cmd_submit)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
