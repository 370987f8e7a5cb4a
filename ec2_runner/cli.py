"""``aipm``: the runner, the local stack, and operator commands."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any

# the dev stack's own entry point (``python -m local``): a checkout's dev install has it, the runner's
# wheel does not, and the runner never imports it
LOCAL_STACK_PACKAGE = "local"


def _settings() -> Any:
    from ec2_runner.commands.context import settings

    return settings()


def _store() -> Any:
    from ec2_runner.commands.context import store

    return store()


def cmd_runner(args: argparse.Namespace) -> int:
    from ec2_runner.main import main

    return main(max_tasks=args.max_tasks, stop_when_idle=args.stop_when_idle)


def cmd_local(args: argparse.Namespace) -> int:
    return run_local_stack(args.local_args)


def run_local_stack(local_args: list[str]) -> int:
    """``aipm local ...`` is ``python -m local ...`` in this process's place (same pid, signals and
    exit code), so ``aipm`` stays the one command while the runner never imports the dev stack."""
    if importlib.util.find_spec(LOCAL_STACK_PACKAGE) is None:
        print(
            "aipm local: the local stack is not installed here; it is dev tooling that runs from a "
            "checkout of this project: `make demo`, or `pip install -e '.[dev]'` in the checkout",
            file=sys.stderr,
        )
        return 2
    # -P: a `local` module in the working folder must not stand in for the stack
    argv = [sys.executable, "-P", "-m", LOCAL_STACK_PACKAGE, *local_args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
    return 0  # not reached: execv replaced this process


def _token_secret() -> str:
    from ec2_runner.commands.context import token_secret

    return token_secret()


def _protected_branches() -> list[str]:
    """PROTECTED_BRANCHES as the runner reads it (comma-separated), else the default set."""
    from shared.branches import DEFAULT_PROTECTED

    raw = os.environ.get("PROTECTED_BRANCHES")
    return [p.strip() for p in raw.split(",") if p.strip()] if raw else list(DEFAULT_PROTECTED)


def _refused_branch(command: str, branch: str | None, read_only: bool) -> bool:
    """A read-write grant on a protected or unsafe branch lets its holder type, and push, there: say
    so and refuse (True). A read-only grant, or a task's, is fine."""
    from shared.branches import UnsafeBranchError, check_branch

    if branch is None or read_only:
        return False
    try:
        check_branch(branch, _protected_branches())
    except UnsafeBranchError as e:
        print(
            f"aipm {command}: {e}; no token minted. A read-only token can still watch it: add --read-only.",
            file=sys.stderr,
        )
        return True
    return False


def cmd_token(args: argparse.Namespace) -> int:
    from ec2_runner.terminal_cli import mint_token

    if _refused_branch("token", args.branch, args.read_only):
        return 2
    print(
        mint_token(
            task_id=args.task,
            branch=args.branch,
            read_only=args.read_only,
            ttl=args.ttl,
            secret=_token_secret(),
            user=args.user,
        )
    )
    return 0


def cmd_terminal(args: argparse.Namespace) -> int:
    from ec2_runner.terminal_cli import attach, mint_token
    from shared.store import TaskNotFoundError

    secret = _token_secret()
    ws_url = _settings().ws_url
    if not ws_url:
        raise SystemExit("aipm terminal: no WS_URL (start `aipm local up`, or set WS_URL)")
    try:
        _store().get(args.target)
        grant = {"task_id": args.target}
    except TaskNotFoundError:
        grant = {"branch": args.target}
        if _refused_branch("terminal", args.target, args.read_only):
            return 2
    token = mint_token(**grant, read_only=args.read_only, ttl=args.ttl, secret=secret, user=args.user)
    return attach(ws_url, token)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aipm-kiro-runner")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    import re

    # the help is read by people: the docstring without its reStructuredText literals
    description = re.sub(r"``(.+?)``", r"\1", __doc__ or "")
    p = argparse.ArgumentParser(prog="aipm", description=description)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("runner", help="run the runner daemon (finds the local stack via .aipm/local.json)")
    r.add_argument("--max-tasks", type=int, default=None)
    r.add_argument("--stop-when-idle", action="store_true")
    r.set_defaults(func=cmd_runner)

    # the local stack parses its own arguments (``aipm local --help`` is its help)
    loc = sub.add_parser(
        "local", help="the local stack: up, demo (dev tooling, from a checkout)", add_help=False
    )
    loc.add_argument("local_args", nargs=argparse.REMAINDER)
    loc.set_defaults(func=cmd_local)

    from ec2_runner.commands import cancel, logs, submit, tasks

    submit.register(sub)
    tasks.register(sub, cancel.add_task_cancel)
    logs.register(sub)

    tk = sub.add_parser("token", help="mint a browser token for the Refine terminal, as the backend does")
    target = tk.add_mutually_exclusive_group(required=True)
    target.add_argument("--task")
    target.add_argument("--branch")
    tk.add_argument("--read-only", action="store_true")
    tk.add_argument("--ttl", type=int, default=900, help="seconds the token is valid (default 900)")
    tk.add_argument("--user", default="cli")
    tk.set_defaults(func=cmd_token)

    tm = sub.add_parser("terminal", help="attach this terminal to a Refine session (Ctrl-] detaches)")
    tm.add_argument("target", help="a task id or a branch")
    tm.add_argument("--read-only", action="store_true")
    tm.add_argument("--ttl", type=int, default=3600)
    tm.add_argument("--user", default="cli")
    tm.set_defaults(func=cmd_terminal)
    from ec2_runner.commands import doctor, runners

    runners.register(sub)
    doctor.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["local"]:
        # all that follows is the local stack's own, options included (`aipm local --help`)
        return run_local_stack(argv[1:])
    args = build_parser().parse_args(argv)
    from botocore.exceptions import BotoCoreError, ClientError
    from pydantic import ValidationError

    from ec2_runner.commands import aws_errors
    from ec2_runner.console import CliError, ExitCode

    try:
        try:
            return int(args.func(args) or 0)
        except (BotoCoreError, ClientError) as e:
            raise aws_errors.as_cli_error(e) from e
        except ValidationError as e:
            if not e.title.endswith("Settings"):  # a model at a border, not the configuration
                raise
            raise aws_errors.settings_error(e) from e
        except KeyboardInterrupt:
            raise CliError("interrupted", ExitCode.INTERRUPTED) from None
    except CliError as e:
        # a group's sub-command names itself (``set_defaults(command="task show")``)
        print(f"aipm {getattr(args, 'command', None) or args.cmd}: {e.message}", file=sys.stderr)
        return int(e.code)


if __name__ == "__main__":
    sys.exit(main())
