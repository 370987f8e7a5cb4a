"""``aipm``'s task commands as an operator runs them: real ``aipm`` processes against the moto
server over HTTP, with the template deployed. Every AWS call they make is recorded
(``AIPM_RECORD_AWS_CALLS``), so "nothing was written" and "never a scan" are read from what the
processes really sent."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.models import utc_now_iso
from tests import prefork
from tests.fixtures import unique

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WRITES = {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"}


@dataclass
class Ran:
    code: int
    out: str
    err: str
    calls: list[dict[str, Any]]

    def operations(self) -> list[str]:
        return [c["operation"] for c in self.calls]

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture(scope="module")
def env(moto_endpoint: str, deployed: Any) -> dict[str, str]:
    """An operator's environment for the deployed stack (no local.json: the environment names it)."""
    return {
        # (pytest-xdist's workers set COLUMNS=80; an operator's pipe has none)
        **{
            k: v
            for k, v in os.environ.items()
            if k not in ("PROTECTED_BRANCHES", "MAX_DETAILS_BYTES", "COLUMNS")
        },
        "AWS_ENDPOINT_URL": moto_endpoint,
        "TABLE_NAME": deployed.table_name,
        "BRANCH_LOCKS_TABLE": deployed.branch_locks_table,
        "PYTHONPATH": str(ROOT),
    }


def aipm(env: dict[str, str], tmp_path: Path, *args: str, cwd: Path | None = None, **extra: str) -> Ran:
    """``aipm ARGS`` in a process of its own; its exit code, output and the AWS calls it made."""
    record = tmp_path / f"calls-{unique('r')}.jsonl"
    done = prefork.aipm(args, env={**env, **extra, "AIPM_RECORD_AWS_CALLS": str(record)}, cwd=cwd or tmp_path)
    calls = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    assert "Traceback" not in done.stderr, done.stderr
    return Ran(done.returncode, done.stdout, done.stderr, calls)


Aipm = Callable[..., Ran]


@pytest.fixture
def run(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Aipm:
    """``aipm ARGS`` through ``cli.main`` in this process, in ``env`` (plus keyword overrides) and
    ``tmp_path``: what a process would print and exit with, without a process's start-up each
    time. Where the process itself matters (its folder, its whole environment) tests use ``aipm``."""
    from ec2_runner.cli import main
    from ec2_runner.commands import context

    def call(*args: str, **extra: str) -> Ran:
        record = tmp_path / f"calls-{unique('r')}.jsonl"
        with monkeypatch.context() as m:
            for name in set(os.environ) - set(env):
                m.delenv(name)
            for name, value in {**env, **extra, "AIPM_RECORD_AWS_CALLS": str(record)}.items():
                m.setenv(name, value)
            m.chdir(tmp_path)
            context.settings.cache_clear()  # settings and clients are made once per process
            context._client.cache_clear()
            capsys.readouterr()
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's usage errors
                code = int(e.code or 0)
            finally:
                context.settings.cache_clear()
                context._client.cache_clear()
            out, err = capsys.readouterr()
        calls = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
        return Ran(code, out, err, calls)

    return call


def put_row(ddb: Any, table: str, task_id: str, **fields: str) -> None:
    now = utc_now_iso()
    item = {
        "id": task_id,
        "title": "A task",
        "details": "x",
        "branch": f"feature/{task_id}",
        "status": "pending",
        "createdAt": now,
        "updatedAt": now,
        **fields,
    }
    ddb.put_item(TableName=table, Item={k: {"S": v} for k, v in item.items()})


def row_of(ddb: Any, table: str, task_id: str) -> dict[str, Any] | None:
    item = ddb.get_item(TableName=table, Key={"id": {"S": task_id}}, ConsistentRead=True).get("Item")
    return {k: next(iter(v.values())) for k, v in item.items()} if item else None


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- every command's --json ---------------------------------------------------------------------


def test_each_task_commands_json_parses_and_says_what_happened(run: Aipm, ddb: Any, deployed: Any) -> None:
    """submit, tasks, list, task show, task retry and retry with ``--json`` print JSON a script
    reads: the new task, the listing that holds it, its row, and the reset it got."""
    table = deployed.table_name
    branch = f"feature/{unique('json')}"
    task_id = unique("json")
    # submit
    ran = run("submit", "--id", task_id, "--title", "Add login", "--branch", branch,
               "--pr-number", "42", "--pr-url", "https://example.test/pull/42", "--json")  # fmt: skip
    assert ran.code == 0, ran.err
    assert ran.json() == {"id": task_id, "status": "pending"}
    stored = row_of(ddb, table, task_id)
    assert stored and (stored["status"], stored["prNumber"], stored["branch"]) == ("pending", "42", branch)
    # tasks --json, list (JSON lines)
    listed = run("tasks", "--branch", branch, "--json")
    assert listed.code == 0, listed.err
    assert [(r["id"], r["status"], r["prNumber"]) for r in listed.json()] == [(task_id, "pending", 42)]
    lines = run("list", "--branch", branch)
    assert [json.loads(line)["id"] for line in lines.out.splitlines()] == [task_id]
    # task show --json: every field of the row
    shown = run("task", "show", task_id, "--json")
    assert shown.code == 0, shown.err
    assert {k: shown.json()[k] for k in ("id", "title", "branch", "prNumber", "prUrl", "status")} == {
        "id": task_id,
        "title": "Add login",
        "branch": branch,
        "prNumber": 42,
        "prUrl": "https://example.test/pull/42",
        "status": "pending",
    }
    # task retry --json and retry --json, once the task ended
    ddb.update_item(
        TableName=table,
        Key={"id": {"S": task_id}},
        UpdateExpression="SET #s = :failed, errorKind = :kind",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":failed": {"S": "failed"}, ":kind": {"S": "agent_exit"}},
    )
    for command in (["task", "retry"], ["retry"]):
        retried = run(*command, task_id, "--json")
        assert retried.code == 0, retried.err
        assert retried.json() == {"id": task_id, "status": "pending"}
        assert row_of(ddb, table, task_id)["status"] == "pending"  # type: ignore[index]
        ddb.update_item(
            TableName=table,
            Key={"id": {"S": task_id}},
            UpdateExpression="SET #s = :complete",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":complete": {"S": "complete"}},
        )


# -- tasks --------------------------------------------------------------------------------------


def test_tasks_lists_newest_first_by_status_branch_and_limit_through_the_status_index(
    run: Aipm, ddb: Any, deployed: Any
) -> None:
    """``aipm tasks`` reads the status index (Query, never Scan), newest first across statuses,
    filtered by status and branch, cut at --limit."""
    table = deployed.table_name
    branch = f"feature/{unique('order')}"
    ids = [unique(f"order{i}") for i in range(4)]
    statuses = ["pending", "failed", "complete", "failed"]
    for i, (task_id, status) in enumerate(zip(ids, statuses, strict=True)):
        put_row(
            ddb, table, task_id, branch=branch, status=status, createdAt=f"2026-11-0{i + 1}T00:00:00.000Z"
        )
    everything = run("tasks", "--branch", branch, "--json")
    assert [r["id"] for r in everything.json()] == ids[::-1]
    assert set(everything.operations()) == {"Query"}
    assert {c["resources"]["IndexName"] for c in everything.calls} == {"status-createdAt-index"}
    failed = run("tasks", "--branch", branch, "--status", "failed", "--json")
    assert [r["id"] for r in failed.json()] == [ids[3], ids[1]]
    assert failed.operations() == ["Query"]
    newest_two = run("tasks", "--branch", branch, "--limit", "2", "--json")
    assert [r["id"] for r in newest_two.json()] == [ids[3], ids[2]]
    # the table a person reads holds them too
    table_view = run("tasks", "--branch", branch, "--status", "failed")
    assert table_view.code == 0 and ids[1] in table_view.out and ids[3] in table_view.out


def test_tasks_table_shows_no_raw_escape_from_a_rows_text(run: Aipm, ddb: Any, deployed: Any) -> None:
    """A title carrying terminal escapes (a screen clear, a clipboard write) is shown cleaned."""
    branch = f"feature/{unique('esc')}"
    put_row(
        ddb, deployed.table_name, unique("esc"), branch=branch, title="evil\x1b[2J\x1b]52;c;aGk=\x07 title"
    )
    ran = run("tasks", "--branch", branch)
    assert ran.code == 0, ran.err
    assert "\x1b" not in ran.out and "\x07" not in ran.out
    assert "evil" in ran.out


@pytest.mark.parametrize("limit", ["0", "-3", "many", "1001"])
def test_tasks_refuses_a_bad_limit_as_a_usage_error(run: Aipm, limit: str) -> None:
    ran = run("tasks", "--limit", limit)
    assert ran.code == 2
    assert "--limit" in ran.err
    assert ran.calls == []


# -- submit -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "extra_env", "field", "why"),
    [
        (["--branch", "main"], {}, "--branch", "is protected"),
        (["--branch", "Release/2.0"], {}, "--branch", "is protected"),
        (["--branch=-x"], {}, "--branch", "must not start with '-'"),
        (["--branch", "feature/a..b"], {}, "--branch", "'..'"),
        (["--branch", "trunk"], {"PROTECTED_BRANCHES": "trunk"}, "--branch", "is protected (trunk)"),
        (["--branch", "feature/ok", "--title", ""], {}, "--title", "must not be empty"),
        (["--branch", "feature/ok", "--title", "   "], {}, "--title", "must not be empty"),
        (["--branch", "feature/ok", "--id", ""], {}, "--id", "must not be empty"),
        (["--branch", "feature/ok", "--id", "x" * 300], {}, "--id", "at most 256"),
        (
            ["--branch", "feature/ok", "--details", "y" * 65],
            {"MAX_DETAILS_BYTES": "64"},
            "--details",
            "64-byte",
        ),
    ],
)
def test_submit_refuses_what_the_runner_would_refuse_before_writing_anything(
    run: Aipm, args: list[str], extra_env: dict[str, str], field: str, why: str
) -> None:
    """An unsafe or protected branch, an empty title or id, details over the limit: exit 2 and a
    sentence naming the field and why; the process makes no AWS call at all."""
    full = ["submit", "--title", "A task", *args] if "--title" not in args else ["submit", *args]
    ran = run(*full, **extra_env)
    assert ran.code == 2, (ran.out, ran.err)
    assert ran.err.startswith(f"aipm submit: {field}: "), ran.err
    assert why in ran.err and "nothing was written" in ran.err
    assert ran.calls == []


@pytest.mark.parametrize("missing", ["--title", "--branch"])
def test_submit_without_a_required_field_is_a_usage_error(run: Aipm, missing: str) -> None:
    args = {"--title": "A task", "--branch": "feature/ok"}
    del args[missing]
    ran = run("submit", *[x for kv in args.items() for x in kv])
    assert ran.code == 2
    assert missing in ran.err and "required" in ran.err
    assert ran.calls == []


def test_submit_of_an_existing_id_says_so_and_leaves_the_row(run: Aipm, ddb: Any, deployed: Any) -> None:
    task_id = unique("dup")
    put_row(ddb, deployed.table_name, task_id, status="complete", commitSha="a" * 40)
    ran = run("submit", "--id", task_id, "--title", "again", "--branch", "feature/dup")
    assert ran.code == 1
    assert f"task {task_id!r} already exists; nothing was written" in ran.err
    assert "TransitionError" not in ran.err
    row = row_of(ddb, deployed.table_name, task_id)
    assert row and (row["status"], row["commitSha"], row["title"]) == ("complete", "a" * 40, "A task")


def test_submit_keeps_pr_as_the_old_name_of_pr_number(run: Aipm, ddb: Any, deployed: Any) -> None:
    task_id = unique("pr")
    ran = run("submit", "--id", task_id, "--title", "t", "--branch", "feature/pr", "--pr", "7")
    assert ran.code == 0, ran.err
    assert ran.out.strip() == task_id
    assert row_of(ddb, deployed.table_name, task_id)["prNumber"] == "7"  # type: ignore[index]


# -- unknown ids, tasks that have not ended -----------------------------------------------------


@pytest.mark.parametrize("command", [["task", "show"], ["task", "retry"], ["retry"]])
def test_an_unknown_task_id_is_not_found_and_nothing_is_written(
    run: Aipm, ddb: Any, deployed: Any, command: list[str]
) -> None:
    task_id = unique("nope")
    ran = run(*command, task_id)
    assert ran.code == 3
    assert f"no such task {task_id!r}" in ran.err
    assert "is not complete or failed" not in ran.err
    assert row_of(ddb, deployed.table_name, task_id) is None  # the conditional reset created nothing


def test_retry_of_a_task_that_has_not_ended_says_its_status_and_leaves_it(
    run: Aipm, ddb: Any, deployed: Any
) -> None:
    task_id = unique("busy")
    put_row(ddb, deployed.table_name, task_id, status="processing", runnerId="r-1")
    ran = run("task", "retry", task_id)
    assert ran.code == 1
    assert f"task {task_id!r} is processing, not complete or failed" in ran.err
    row = row_of(ddb, deployed.table_name, task_id)
    assert row and (row["status"], row["runnerId"]) == ("processing", "r-1")


def test_task_show_has_every_field_of_the_row(run: Aipm, ddb: Any, deployed: Any) -> None:
    """Times, attempts, commit, WIP ref, error and its kind, the log tail, and a backend's own field."""
    task_id = unique("show")
    fields = {
        "status": "failed",
        "startedAt": "2026-11-25T10:00:00.000Z",
        "finishedAt": "2026-11-25T10:02:05.000Z",
        "runnerId": "runner-a",
        "commitSha": "c" * 40,
        "wipRef": f"kiro-wip/{task_id}",
        "wipSha": "d" * 40,
        "error": "agent exited with code 1",
        "errorKind": "agent_exit",
        "logTail": "working...\nall done\n",
        "backendNote": "from the planning tool",
    }
    put_row(ddb, deployed.table_name, task_id, **fields)
    ddb.update_item(
        TableName=deployed.table_name,
        Key={"id": {"S": task_id}},
        UpdateExpression="SET attempts = :n",
        ExpressionAttributeValues={":n": {"N": "2"}},
    )
    ran = run("task", "show", task_id)
    assert ran.code == 0, ran.err
    for name, value in {**fields, "attempts": "2", "id": task_id}.items():
        assert name in ran.out, name
        for line in value.splitlines():
            assert line in ran.out, (name, line)
    assert "2 min 5 s" in ran.out  # how long it ran, from startedAt to finishedAt


# -- unreachable, unconfigured ------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["tasks"],
        ["list"],
        ["task", "show", "t-1"],
        ["task", "retry", "t-1"],
        ["retry", "t-1"],
        ["submit", "--title", "t", "--branch", "feature/x"],
    ],
)
def test_an_unreachable_endpoint_is_named_with_exit_4(run: Aipm, command: list[str]) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    ran = run(*command, AWS_ENDPOINT_URL=endpoint)
    assert ran.code == 4, ran.err
    assert ran.err.startswith(f"aipm {' '.join(command[:2] if command[0] == 'task' else command[:1])}: ")
    assert f"cannot reach endpoint {endpoint}" in ran.err and "AWS_ENDPOINT_URL" in ran.err
    assert "aipm local up" in ran.err


def test_a_stopped_local_stack_is_named_from_its_folder(env: dict[str, str], tmp_path: Path) -> None:
    """In the folder of a local stack that is not running, the sentence says so and where the
    endpoint came from (its .aipm/local.json)."""
    folder = tmp_path / "stack"
    (folder / ".aipm").mkdir(parents=True)
    endpoint = f"http://127.0.0.1:{closed_port()}"
    (folder / ".aipm" / "local.json").write_text(
        json.dumps({"env": {"AWS_ENDPOINT_URL": endpoint, "TABLE_NAME": "aipm-local-queue"}})
    )
    bare = {k: v for k, v in env.items() if k not in ("AWS_ENDPOINT_URL", "TABLE_NAME", "TASK_QUEUE_URL")}
    ran = aipm(bare, tmp_path, "tasks", cwd=folder)
    assert ran.code == 4
    assert f"cannot reach endpoint {endpoint}" in ran.err
    assert f"from the local stack's .aipm/local.json in {folder}" in ran.err
    assert "is the local stack running?" in ran.err


def test_a_missing_table_is_named_with_exit_4(run: Aipm) -> None:
    ran = run("tasks", TABLE_NAME="no-such-table")
    assert ran.code == 4
    assert "table no-such-table" in ran.err and "TABLE_NAME" in ran.err


def _outside_env(tmp_path: Path) -> dict[str, str]:
    """A shell outside any stack's folder with no AWS configuration at all. Were anything sent, it
    would go to a closed loopback proxy, never to AWS."""
    proxy = f"http://127.0.0.1:{closed_port()}"
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "HTTPS_PROXY": proxy,
        "HTTP_PROXY": proxy,
        "NO_PROXY": "",
    }


@pytest.mark.parametrize(
    "command", [["tasks"], ["task", "show", "t-1"], ["submit", "--title", "t", "--branch", "f/x"]]
)
def test_outside_a_stack_folder_it_says_which_endpoint_region_and_profile_it_uses(
    tmp_path: Path, command: list[str]
) -> None:
    ran = aipm(_outside_env(tmp_path), tmp_path, *command)
    assert ran.code == 4
    assert "NoCredentialsError" not in ran.err
    assert "no AWS credentials to call endpoint https://dynamodb.us-east-1.amazonaws.com" in ran.err
    assert "region us-east-1" in ran.err and "profile default" in ran.err
    assert f"no .aipm/local.json in {tmp_path}" in ran.err
    assert "aipm local up" in ran.err and "AWS_ENDPOINT_URL" in ran.err


def test_runner_outside_a_stack_folder_says_what_it_needs(tmp_path: Path) -> None:
    ran = aipm(_outside_env(tmp_path), tmp_path, "runner")
    assert ran.code == 2
    assert "ValidationError" not in ran.err and "pydantic" not in ran.err
    assert ran.err.startswith("aipm runner: TASK_QUEUE_URL and GIT_REMOTE are not set")
    assert "aipm local up" in ran.err


def test_a_bad_setting_is_named_as_a_usage_error(run: Aipm) -> None:
    ran = run("submit", "--title", "t", "--branch", "feature/x", MAX_DETAILS_BYTES="lots")
    assert ran.code == 2
    assert "MAX_DETAILS_BYTES" in ran.err
    assert ran.calls == []
