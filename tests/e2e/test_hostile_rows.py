"""Rows that cannot stop the system, on the local stack with a real runner process.

Poisoned rows are written with the raw low-level client, as anyone with table access could: a
Number of more than 38 digits (boto3 refuses to read it: ``decimal.Inexact``/``Rounded``), and
``attempts`` that is not a small non-negative integer. Each one ends failed with a reason naming
the field it could not read, and every other row is still reconciled, listed and run. Text with
terminal escapes in a row's title or id never reaches a commit message or the CLI's output raw.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import git
import pytest

from local.poller import StreamPoller
from shared import aws
from shared.dispatch import Dispatcher
from shared.models import TaskSignal
from shared.store import TaskStore
from tests.fixtures import FAKE_AGENT_COMMAND, unique, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
OLD = "2026-11-25T00:00:00.000Z"  # long past the reconciler's one-minute threshold
WRITE = '[fake:write path=src/ok.py text="ok = 1"]'

# case -> (the poisoned attributes, the field the error must name)
POISON: dict[str, tuple[dict[str, Any], str]] = {
    "prNumber of 39 digits": ({"prNumber": {"N": "1" * 39}}, "prNumber"),
    "prNumber of 101 digits": ({"prNumber": {"N": "1" + "0" * 100}}, "prNumber"),
    "leaseExpiresAt of 39 digits": ({"leaseExpiresAt": {"N": "9" * 39}}, "leaseExpiresAt"),
    "attempts 1.5": ({"attempts": {"N": "1.5"}}, "attempts"),
    "attempts -1": ({"attempts": {"N": "-1"}}, "attempts"),
    "attempts of 38 nines": ({"attempts": {"N": "9" * 38}}, "attempts"),
    "attempts of 39 digits": ({"attempts": {"N": "1" * 39}}, "attempts"),
}
# what a terminal would act on: ESC (CSI, OSC 52 clipboard write), C1 controls, a direction override
HOSTILE_TEXT = "Fix \x1b]52;c;ZXZpbA==\x07login \x1b[6n\x1b[2J\x9b31m\x85 form \u202eexe.txt"
RAW_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture(scope="module")
def stack(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The local stack with one runner on the fake agent, its log lines in ``logs/runner-0.log``."""
    from local.stack import LocalStack

    work = tmp_path_factory.mktemp("hostile")
    stack = LocalStack(
        work,
        runners=1,
        stack_name=unique("hostile"),
        endpoint_url=moto_endpoint,
        reconcile_seconds=3600,  # the tests run the reconciler's passes themselves
        log_dir=work / "logs",
        runner_env={
            "AGENT": "kiro",
            "AGENT_COMMAND": FAKE_AGENT_COMMAND,
            "AGENT_TIMEOUT": "10",
            "FAKE_AGENT_LOG": str(work / "fake-agent.log"),
            "SQS_WAIT_SECONDS": "1",
            "RUNNER_SLOTS": "2",
            "LEASE_SECONDS": "30",
        },
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def ddb(stack: Any) -> Any:
    return aws.client("dynamodb", region="us-east-1", endpoint_url=stack.config.endpoint_url)


@pytest.fixture(scope="module")
def store(stack: Any, ddb: Any) -> TaskStore:
    return TaskStore(ddb, stack.config.table_name, branch_locks_table=stack.config.branch_locks_table)


@pytest.fixture(scope="module")
def dispatcher(stack: Any) -> Dispatcher:
    sqs = aws.client("sqs", region="us-east-1", endpoint_url=stack.config.endpoint_url)
    return Dispatcher(sqs, stack.config.task_queue_url)


def raw_row(task_id: str, *, stamp: str = OLD, **attrs: Any) -> dict[str, Any]:
    """A pending row in DynamoDB JSON, as the low-level client writes it."""
    return {
        "id": {"S": task_id},
        "title": {"S": "Poisoned"},
        "details": {"S": WRITE},
        "branch": {"S": f"feature/{task_id}"},
        "prUrl": {"S": "https://github.com/example/aipm/pull/9"},
        "status": {"S": "pending"},
        "createdAt": {"S": stamp},
        "updatedAt": {"S": stamp},
        **attrs,
    }


def put_poisoned(ddb: Any, stack: Any, prefix: str, *, stamp: str = OLD) -> dict[str, str]:
    """One row per poisoned case; returns task id -> the field its error must name."""
    wanted = {}
    for case, (attrs, field) in POISON.items():
        task_id = unique(f"{prefix}-{re.sub(r'[^a-z0-9]+', '-', case.lower())}")
        ddb.put_item(TableName=stack.config.table_name, Item=raw_row(task_id, stamp=stamp, **attrs))
        wanted[task_id] = field
    return wanted


def status_of(ddb: Any, stack: Any, task_id: str) -> dict[str, Any]:
    """The row's status and error read as strings only (the poisoned fields are never parsed)."""
    item = ddb.get_item(TableName=stack.config.table_name, Key={"id": {"S": task_id}}, ConsistentRead=True)[
        "Item"
    ]
    return {k: item[k]["S"] for k in ("status", "error", "commitSha", "errorKind") if "S" in item.get(k, {})}


def wait_final(ddb: Any, stack: Any, task_ids: list[str], timeout: float = 90) -> dict[str, dict]:
    def done() -> dict[str, dict] | None:
        rows = {t: status_of(ddb, stack, t) for t in task_ids}
        return rows if all(r["status"] in ("complete", "failed") for r in rows.values()) else None

    return wait_until(done, timeout, interval=0.3, what=f"{len(task_ids)} tasks to end")


def runner_lines(stack: Any) -> list[dict[str, Any]]:
    lines = []
    for raw in (stack.log_dir / "runner-0.log").read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            lines.append({"message": raw, "raw": True})
    return lines


def assert_runner_healthy(stack: Any) -> None:
    assert stack.runners[0].poll() is None, "the runner process exited"
    text = (stack.log_dir / "runner-0.log").read_text(errors="replace")
    for crash in ("Traceback", "decimal.Inexact", "decimal.Rounded", "InvalidOperation"):
        assert crash not in text, f"runner log shows {crash}"


@contextlib.contextmanager
def signals_lost(stack: Any) -> Iterator[None]:
    """The stream's event source is down meanwhile: rows written now get no signal (as when the
    event source mapping is disabled or a signal is lost). It resumes from the stream's end."""
    poller: StreamPoller = stack.stream
    poller.stop()
    try:
        yield
    finally:
        poller.start(from_start=False)


def dlq_event(*task_ids: str, receive_count: int, requeues: int) -> dict[str, Any]:
    """events/sqs_dlq.json's record once per task id: signals received ``receive_count`` times and
    requeued from the DLQ ``requeues`` times already (so the dead letter gives them up)."""
    template = json.loads((ROOT / "events" / "sqs_dlq.json").read_text())["Records"][0]
    return {
        "Records": [
            {
                **template,
                "messageId": f"msg-{i}",
                "body": json.dumps({"taskId": task_id, "reason": "insert", "requeues": requeues}),
                "attributes": {**template["attributes"], "ApproximateReceiveCount": str(receive_count)},
            }
            for i, task_id in enumerate(task_ids)
        ]
    }


def reconcile_once(stack: Any) -> dict[str, list[str]]:
    event = json.loads((ROOT / "events" / "schedule.json").read_text())
    return stack.functions["reconciler"].invoke(event)


def test_one_reconciler_pass_recovers_a_lost_signal_beside_poisoned_rows(
    stack: Any, ddb: Any, store: TaskStore
) -> None:
    """With poisoned rows pending (and processing ones under an expired or a 39-digit lease), a task
    whose signal was lost is re-signalled by ONE reconciler pass and completes, as does a row held
    under a lease no runner could have written; each poisoned row is signalled too and ends failed,
    its error naming the field that could not be read."""
    # given: rows whose signals were lost, poisoned ones among them
    lost = unique("lost")
    dead_owner = unique("deadowner")
    with signals_lost(stack):
        ddb.put_item(TableName=stack.config.table_name, Item=raw_row(lost))
        poisoned = put_poisoned(ddb, stack, "rec")
        # a dead runner's row: processing, its lease long past, attempts 38 nines (10^38 after a +1)
        ddb.put_item(
            TableName=stack.config.table_name,
            Item=raw_row(
                dead_owner,
                status={"S": "processing"},
                runnerId={"S": "dead-runner"},
                attempts={"N": "9" * 38},
                leaseExpiresAt={"N": "1764000000.000"},
            ),
        )
        poisoned[dead_owner] = "attempts"
        # a lease no runner wrote: 39 digits, forever in the future
        forever = unique("forever")
        ddb.put_item(
            TableName=stack.config.table_name,
            Item=raw_row(
                forever, status={"S": "processing"}, runnerId={"S": "nobody"}, leaseExpiresAt={"N": "9" * 39}
            ),
        )
        poisoned[forever] = "leaseExpiresAt"
        # a readable lease no runner wrote (30 digits, ten thousand times the age of the universe)
        squatted = unique("squatted")
        ddb.put_item(
            TableName=stack.config.table_name,
            Item=raw_row(
                squatted, status={"S": "processing"}, runnerId={"S": "nobody"}, leaseExpiresAt={"N": "9" * 30}
            ),
        )
        assert status_of(ddb, stack, lost)["status"] == "pending"
    # when: one pass
    report = reconcile_once(stack)
    # then
    assert lost in report["pending"], report
    assert set(poisoned) <= set(report["pending"]) | set(report["expired"]), report
    assert {dead_owner, forever, squatted} <= set(report["expired"]), report
    rows = wait_final(ddb, stack, [lost, squatted, *poisoned])
    for recovered in (lost, squatted):
        assert rows[recovered]["status"] == "complete", rows[recovered]
        assert store.get(recovered).attempts == 1
    for task_id, field in poisoned.items():
        row = rows[task_id]
        assert row["status"] == "failed", (task_id, row)
        assert row["error"].startswith("invalid task row: ") and field in row["error"], (task_id, row)
        assert row.get("errorKind") == "invalid_task", (task_id, row)
        assert "Traceback" not in row["error"]
    assert_runner_healthy(stack)


def test_runner_given_signals_for_poisoned_rows_fails_them_and_keeps_serving(
    stack: Any, ddb: Any, dispatcher: Dispatcher
) -> None:
    """Poisoned rows signalled by the stream (dispatch reads them) and again by hand, twice each:
    every one ends failed with its reason, nothing is claimed, and the runner then runs a good task."""
    # given
    poisoned = put_poisoned(ddb, stack, "run", stamp="2026-12-01T00:00:00.000Z")
    # when: more signals for the same rows, as duplicates and re-signals send
    for _ in range(2):
        for task_id in poisoned:
            dispatcher.send(TaskSignal(task_id=task_id, reason="test: duplicate signal"))
    rows = wait_final(ddb, stack, list(poisoned))
    good = unique("good")
    ddb.put_item(TableName=stack.config.table_name, Item=raw_row(good, stamp="2026-12-01T00:00:00.000Z"))
    # then
    for task_id, field in poisoned.items():
        assert rows[task_id]["status"] == "failed" and field in rows[task_id]["error"], (
            task_id,
            rows[task_id],
        )
    assert wait_final(ddb, stack, [good])[good]["status"] == "complete"
    claimed = [
        ln
        for ln in runner_lines(stack)
        if ln.get("task_id") in poisoned and "claimed" in str(ln.get("message"))
    ]
    assert not claimed, claimed  # refused before the claim: no attempt was spent on them
    assert_runner_healthy(stack)


def test_a_poisoned_rows_stream_record_never_holds_up_the_next_rows_signal(stack: Any, ddb: Any) -> None:
    """The dispatch function skips the record of a row it cannot read (a log line says so) instead
    of failing its batch, which would hold up the shard: the good row written right after it is
    signalled and completes; the poisoned row is left to the reconciler's next pass."""
    poisoned, good = unique("dispatch-poisoned"), unique("dispatch-good")
    stamp = "2026-12-01T00:00:00.000Z"
    ddb.put_item(
        TableName=stack.config.table_name, Item=raw_row(poisoned, stamp=stamp, prNumber={"N": "1" * 39})
    )
    ddb.put_item(TableName=stack.config.table_name, Item=raw_row(good, stamp=stamp))
    assert wait_final(ddb, stack, [good], timeout=60)[good]["status"] == "complete"
    # its signal comes from the reconciler (whose next pass here is an hour away)
    assert status_of(ddb, stack, poisoned)["status"] == "pending"
    reconcile_once(stack)
    row = wait_final(ddb, stack, [poisoned], timeout=60)[poisoned]
    assert row["status"] == "failed" and "prNumber" in row["error"], row


def test_dead_letter_of_a_poisoned_row_marks_it_failed_with_its_reason(stack: Any, ddb: Any) -> None:
    """The dead-letter function reads a poisoned row without raising (a raise would keep the
    message coming back forever) and fails it, saying which field could not be read."""
    with signals_lost(stack):
        ids = put_poisoned(ddb, stack, "dlq", stamp="2026-12-01T00:00:00.000Z")
    result = stack.functions["dead_letter"].invoke(dlq_event(*ids, receive_count=5, requeues=2))
    assert not result.get("batchItemFailures"), result
    for task_id, field in ids.items():
        row = status_of(ddb, stack, task_id)
        assert row["status"] == "failed" and field in row["error"], (task_id, row)
        assert row["error"].startswith("gave up"), row


def test_aipm_list_shows_poisoned_rows_as_invalid_and_escapes_nothing_raw(
    stack: Any, ddb: Any, store: TaskStore, tmp_path: Path
) -> None:
    """``aipm list`` lists every other row beside a poisoned one (shown as invalid with its reason),
    and what it prints carries no raw escape, control or direction character from a row's text;
    the row itself keeps its text."""
    # given: pending rows nobody will signal
    hostile_id = unique("esc") + "\x1b[2J\x9b"
    with signals_lost(stack):
        poisoned = put_poisoned(ddb, stack, "list", stamp="2026-12-01T00:00:00.000Z")
        ddb.put_item(
            TableName=stack.config.table_name,
            Item=raw_row(hostile_id, stamp="2026-12-01T00:00:00.000Z", title={"S": HOSTILE_TEXT}),
        )
    try:
        # when
        out = subprocess.run(
            [sys.executable, "-m", "ec2_runner.cli", "list", "--status", "pending", "--limit", "500"],
            capture_output=True,
            env=stack.runner_env(0),
            cwd=tmp_path,
            timeout=60,
        )
        # then
        assert out.returncode == 0, out.stderr.decode(errors="replace")[-2000:]
        text = out.stdout.decode("utf-8")
        assert not RAW_CONTROLS.search(text), [m.group() for m in RAW_CONTROLS.finditer(text)][:5]
        listed = {row["id"]: row for row in map(json.loads, text.splitlines())}
        for task_id, field in poisoned.items():
            assert field in listed[task_id]["invalid"], listed[task_id]
        assert listed[hostile_id]["title"] == HOSTILE_TEXT  # the row keeps its text; JSON escapes it
    finally:
        for task_id in [*poisoned, hostile_id]:
            store.fail_unowned(task_id, "test: cleaned up")


def test_escapes_in_a_title_or_id_never_reach_the_pushed_commit_message(stack: Any, ddb: Any) -> None:
    """A row whose title and id carry terminal escapes completes; the commit on the bare remote
    carries their text without a single ESC, C1 control or direction override."""
    task_id = unique("esc") + "\x1b]52;c;aGk=\x07\x1b[6n"
    branch = f"feature/{unique('esc')}"
    ddb.put_item(
        TableName=stack.config.table_name,
        Item={
            **raw_row(task_id, stamp="2026-12-01T00:00:00.000Z", title={"S": HOSTILE_TEXT}),
            "branch": {"S": branch},
        },
    )
    row = wait_final(ddb, stack, [task_id], timeout=60)[task_id]
    assert row["status"] == "complete", row
    raw = subprocess.run(
        ["git", "-C", stack.config.git_remote, "log", "--format=%B", f"refs/heads/{branch}"],
        capture_output=True,
        check=True,
    ).stdout
    message = raw.decode("utf-8")
    assert not RAW_CONTROLS.search(message), repr(message)
    assert b"\x1b" not in raw and "Fix" in message and "login" in message, repr(message)
    assert row["commitSha"] == git.Repo(stack.config.git_remote).git.rev_parse(f"refs/heads/{branch}")
