"""The dead-letter and reconciler functions against a stack deployed from template.yaml."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from local.deploy import LocalStackResources
from shared import aws
from shared.dead_letters import DeadLetter, DeadLetterQueue
from shared.dispatch import Dispatcher
from shared.reconcile import Reconciler, iso_at
from shared.store import STATUS_INDEX, TaskStore
from tests.integration.conftest import emf_metrics, load_event

pytestmark = pytest.mark.integration


@pytest.fixture
def store(fresh_stack: LocalStackResources, moto_endpoint: str) -> TaskStore:
    return TaskStore(
        aws.client("dynamodb", region="us-east-1", endpoint_url=moto_endpoint),
        fresh_stack.table_name,
        branch_locks_table=fresh_stack.branch_locks_table,
    )


def add_row(store: TaskStore, **fields: Any) -> str:
    task_id = fields.pop("id", f"task-{uuid.uuid4().hex[:8]}")
    store.put_new({"id": task_id, "title": "Add login validation", "branch": f"feature/{task_id}", **fields})
    return task_id


def dlq_event(*task_ids: str, receive_count: int = 5, requeues: int = 0) -> dict[str, Any]:
    """events/sqs_dlq.json with its record repeated for each task id (``requeues``: the signal was
    requeued from the DLQ that often already)."""
    template = load_event("sqs_dlq.json")["Records"][0]
    body = {"reason": "insert", **({"requeues": requeues} if requeues else {})}
    records = [
        {
            **template,
            "messageId": f"msg-{task_id}",
            "body": json.dumps({"taskId": task_id, **body}),
            "attributes": {**template["attributes"], "ApproximateReceiveCount": str(receive_count)},
        }
        for task_id in task_ids
    ]
    return {"Records": records}


def queued(queue_url: str, endpoint: str) -> list[dict[str, Any]]:
    sqs = aws.client("sqs", region="us-east-1", endpoint_url=endpoint)
    bodies: list[dict[str, Any]] = []
    while msgs := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
        "Messages", []
    ):
        for m in msgs:
            bodies.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    return bodies


def letters(stack: LocalStackResources, endpoint: str) -> dict[str, DeadLetter]:
    """The letters filed in the stack's DLQ by the signal's message id (read, and left there)."""
    sqs = aws.client("sqs", region="us-east-1", endpoint_url=endpoint)
    with DeadLetterQueue(sqs, stack.dlq_url).held() as held:
        return {str(h.letter.original_message_id or h.letter.message_id): h.letter for h in held}


# -- dead letters ---------------------------------------------------------------------------------
STOPPED = "(it may have been killed, or the agent took it down)"


def test_canonical_dlq_event_gives_the_task_up_and_files_its_letter(
    fresh_stack: LocalStackResources,
    store: TaskStore,
    load_handler: Any,
    lambda_context: Any,
    moto_endpoint: str,
) -> None:
    """events/sqs_dlq.json (received 5 times), claimed 5 times, each runner gone without a word ->
    failed, saying that the runner stopped heartbeating each time; the letter stays in the DLQ with
    the signal's id, first send, receives and the verdict."""
    task_id = add_row(
        store, id=json.loads(load_event("sqs_dlq.json")["Records"][0]["body"])["taskId"], attempts=4
    )
    store.claim(task_id, "runner-1", lease_seconds=-1)  # its fifth claim, then its runner vanished
    app = load_handler("dead_letter", fresh_stack)

    result = app.lambda_handler(load_event("sqs_dlq.json"), lambda_context)

    assert result == {"batchItemFailures": []}
    row = store.get_row(task_id)
    assert row["status"] == "failed"
    assert row["error"] == (
        f"gave up after 5 attempts: the runner working on it stopped heartbeating 5 times {STOPPED}"
    )
    assert row["finishedAt"]
    record = load_event("sqs_dlq.json")["Records"][0]
    letter = letters(fresh_stack, moto_endpoint)[record["messageId"]]
    assert (letter.task_id, letter.verdict, letter.receive_count) == (task_id, "gave_up", 5)
    assert letter.first_sent == iso_at(int(record["attributes"]["SentTimestamp"]) / 1000)
    assert letter.note == row["error"] and letter.body == record["body"]


def test_the_count_given_up_after_is_the_rows_attempts_not_the_receive_count(
    fresh_stack: LocalStackResources, store: TaskStore, load_handler: Any, lambda_context: Any
) -> None:
    """An agent that kills its runner, 5 times: the DLQ's copy of the signal counts one receive more
    (the one that moved it), but the row, which a person reads, says 5 attempts and so does its text."""
    task_id = add_row(store, attempts=4)
    store.claim(task_id, "runner-1", lease_seconds=-1)
    app = load_handler("dead_letter", fresh_stack)

    app.lambda_handler(dlq_event(task_id, receive_count=6), lambda_context)

    row = store.get_row(task_id)
    assert row["attempts"] == 5
    assert row["error"].startswith(
        "gave up after 5 attempts: the runner working on it stopped heartbeating 5 times"
    )


def test_a_task_whose_receives_never_reached_a_claim_is_signalled_afresh(
    fresh_stack: LocalStackResources,
    store: TaskStore,
    load_handler: Any,
    lambda_context: Any,
    sqs: Any,
    moto_endpoint: str,
) -> None:
    """Received 5 times, claimed once (it sat in runners a poison task took down): not the poison.
    It gets a fresh signal (bounded by MAX_REQUEUES) and no letter; a signal already requeued twice
    gives up, and its letter is filed."""
    victim = add_row(store)
    store.claim(victim, "runner-1", lease_seconds=-1)
    app = load_handler("dead_letter", fresh_stack)

    assert app.lambda_handler(dlq_event(victim, receive_count=5), lambda_context) == {"batchItemFailures": []}

    assert store.get_row(victim)["status"] == "processing"  # untouched: the fresh signal reclaims it
    bodies = [
        json.loads(m["Body"])
        for m in sqs.receive_message(
            QueueUrl=fresh_stack.task_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", [])
    ]
    assert [(b["taskId"], b["requeues"]) for b in bodies] == [(victim, 1)]
    assert "5 receives but 1 attempt" in bodies[0]["reason"]
    assert letters(fresh_stack, moto_endpoint) == {}

    app.lambda_handler(dlq_event(victim, receive_count=5, requeues=2), lambda_context)
    assert store.get_row(victim)["error"] == (
        f"gave up after 1 attempt: the runner working on it stopped heartbeating {STOPPED}"
    )
    assert [(x.task_id, x.verdict) for x in letters(fresh_stack, moto_endpoint).values()] == [
        (victim, "gave_up")
    ]


@pytest.mark.parametrize("attempts", [7, 3])
def test_the_last_error_is_reported_after_the_rows_attempts(
    fresh_stack: LocalStackResources, store: TaskStore, load_handler: Any, lambda_context: Any, attempts: int
) -> None:
    """N is the row's attempts, above or below the receive count (once the signal was requeued as
    often as allowed); the row's error is the last error."""
    task_id = add_row(store, attempts=attempts, error="agent exited with code 1")
    app = load_handler("dead_letter", fresh_stack)

    app.lambda_handler(dlq_event(task_id, receive_count=5, requeues=2), lambda_context)

    assert store.get_row(task_id)["error"] == f"gave up after {attempts} attempts: agent exited with code 1"


def test_a_task_no_runner_ever_claimed_says_so(
    fresh_stack: LocalStackResources, store: TaskStore, load_handler: Any, lambda_context: Any
) -> None:
    """Its signal was received 5 times, requeued as often as allowed, never claimed: not "0 attempts"."""
    task_id = add_row(store)
    app = load_handler("dead_letter", fresh_stack)

    app.lambda_handler(dlq_event(task_id, receive_count=5, requeues=2), lambda_context)

    row = store.get_row(task_id)
    assert row["status"] == "failed"
    assert row["error"] == "gave up: its signal was received 5 times and no runner claimed it"


def test_a_task_given_up_is_failed_with_the_gave_up_kind(
    fresh_stack: LocalStackResources, store: TaskStore, load_handler: Any, lambda_context: Any
) -> None:
    """The dead-letter path writes ``errorKind`` with its error: ``gave_up`` for a task its attempts
    could not finish, ``invalid_task`` for a row no runner can read (no attempt would help)."""
    poison = add_row(store, attempts=5, error="agent exited with code 1")
    unreadable = add_row(store, title="")
    app = load_handler("dead_letter", fresh_stack)

    app.lambda_handler(dlq_event(poison, unreadable, receive_count=5, requeues=2), lambda_context)

    given_up, refused = store.get_row(poison), store.get_row(unreadable)
    assert given_up["status"] == "failed" and given_up["errorKind"] == "gave_up"
    assert given_up["error"] == "gave up after 5 attempts: agent exited with code 1"
    assert refused["status"] == "failed" and refused["errorKind"] == "invalid_task"
    assert refused["error"].startswith("gave up: invalid task row: title")


def test_rows_that_already_ended_are_left_alone(
    fresh_stack: LocalStackResources,
    store: TaskStore,
    load_handler: Any,
    lambda_context: Any,
    moto_endpoint: str,
) -> None:
    """Their letters are filed all the same (a signal ran out of receives), saying they had ended."""
    complete = add_row(store, status="complete", commitSha="abc123")
    failed = add_row(store, status="failed", error="agent made no changes")
    app = load_handler("dead_letter", fresh_stack)

    result = app.lambda_handler(dlq_event(complete, failed), lambda_context)

    assert result == {"batchItemFailures": []}
    assert store.get_row(complete)["status"] == "complete" and "error" not in store.get_row(complete)
    assert store.get_row(failed)["error"] == "agent made no changes"
    filed = letters(fresh_stack, moto_endpoint)
    assert {(x.task_id, x.verdict, x.note) for x in filed.values()} == {
        (complete, "already_ended", "already complete"),
        (failed, "already_ended", "already failed"),
    }


def test_a_row_under_a_live_lease_is_retried_not_failed(
    fresh_stack: LocalStackResources, store: TaskStore, load_handler: Any, lambda_context: Any
) -> None:
    """A runner still holds the task: the dead letter comes back later instead of failing its row."""
    working = add_row(store)
    store.claim(working, "runner-1", lease_seconds=300)
    lost = add_row(store, attempts=5)  # tried as often as it was received: given up
    app = load_handler("dead_letter", fresh_stack)

    result = app.lambda_handler(dlq_event(working, lost), lambda_context)

    assert result == {"batchItemFailures": [{"itemIdentifier": f"msg-{working}"}]}
    assert store.get_row(working)["status"] == "processing"
    assert store.get_row(lost)["status"] == "failed"


def test_signals_for_missing_rows_and_garbage_bodies_are_filed_as_such(
    fresh_stack: LocalStackResources, load_handler: Any, lambda_context: Any, moto_endpoint: str
) -> None:
    """Nothing to give up, and nothing lost: operators see them in the DLQ for what they are."""
    event = dlq_event("no-such-task")
    event["Records"].append({**event["Records"][0], "messageId": "garbage", "body": "not json {"})
    app = load_handler("dead_letter", fresh_stack)

    assert app.lambda_handler(event, lambda_context) == {"batchItemFailures": []}

    filed = letters(fresh_stack, moto_endpoint)
    assert (filed["msg-no-such-task"].task_id, filed["msg-no-such-task"].verdict) == (
        "no-such-task",
        "no_such_task",
    )
    garbage = filed["garbage"]
    assert (garbage.task_id, garbage.verdict, garbage.body) == (None, "not_a_task_signal", "not json {")
    assert garbage.signal_error and garbage.note.startswith("not a task signal")


def test_store_errors_fail_the_batch_so_lambda_retries(
    fresh_stack: LocalStackResources, load_handler: Any, lambda_context: Any
) -> None:
    """A table that cannot be read is not a reason to drop the dead letter."""
    app = load_handler("dead_letter", fresh_stack, TABLE_NAME="no-such-table")

    with pytest.raises(BatchProcessingError):
        app.lambda_handler(dlq_event("task-1"), lambda_context)


def test_dead_letters_given_up_requeued_and_malformed_are_counted(
    fresh_stack: LocalStackResources,
    store: TaskStore,
    load_handler: Any,
    lambda_context: Any,
    lambda_stdout: pytest.CaptureFixture[str],
) -> None:
    """One batch: a task given up, one signalled afresh, a body that is no task signal, a row that
    already ended: four DeadLetters, and one each of TasksGivenUp, TasksResignalled, MalformedRecords."""
    spent = add_row(store, attempts=5)
    victim = add_row(store)
    store.claim(victim, "runner-1", lease_seconds=-1)
    done = add_row(store, status="complete", commitSha="abc123")
    event = dlq_event(spent, victim, done)
    event["Records"].append({**event["Records"][0], "messageId": "garbage", "body": "not json {"})
    app = load_handler("dead_letter", fresh_stack)
    lambda_stdout.readouterr()

    assert app.lambda_handler(event, lambda_context) == {"batchItemFailures": []}

    metrics = emf_metrics(lambda_stdout.readouterr().out)
    assert {name: sum(values) for name, values in metrics.items()} == {
        "DeadLetters": 4,
        "TasksGivenUp": 1,
        "TasksResignalled": 1,
        "MalformedRecords": 1,
    }


# -- reconciler -----------------------------------------------------------------------------------
def test_reconciler_resignals_lost_pending_and_expired_leases_only(
    fresh_stack: LocalStackResources,
    store: TaskStore,
    load_handler: Any,
    lambda_context: Any,
    moto_endpoint: str,
) -> None:
    # given
    now = time.time()
    old = iso_at(now - 600)
    lost = add_row(store, createdAt=old, updatedAt=old)
    add_row(store)  # fresh pending: its signal may still be on the way
    reset = add_row(store, createdAt=old, updatedAt=iso_at(now))  # reset just now: the stream signals it
    dead_runner = add_row(store, createdAt=old, updatedAt=old)
    store.claim(dead_runner, "runner-gone", lease_seconds=-300)
    just_expired = add_row(store, createdAt=old, updatedAt=old)
    store.claim(just_expired, "runner-slow", lease_seconds=-5)
    working = add_row(store, createdAt=old, updatedAt=old)
    store.claim(working, "runner-1", lease_seconds=300)
    add_row(store, status="complete", createdAt=old, updatedAt=old)
    app = load_handler("reconciler", fresh_stack)

    # when
    report = app.lambda_handler(load_event("schedule.json"), lambda_context)

    # then
    assert report == {"pending": [lost], "expired": [dead_runner]}
    assert sorted(
        (b["taskId"], b["reason"]) for b in queued(fresh_stack.task_queue_url, moto_endpoint)
    ) == sorted([(lost, "reconcile: pending and unclaimed"), (dead_runner, "reconcile: lease expired")])
    assert reset not in report["pending"]


def test_reconciler_only_queries_the_status_index(
    fresh_stack: LocalStackResources, moto_endpoint: str, store: TaskStore
) -> None:
    """Never a Scan: every DynamoDB call of a pass is a Query on the status GSI."""
    old = iso_at(time.time() - 600)
    add_row(store, createdAt=old, updatedAt=old)
    ddb = aws.client("dynamodb", region="us-east-1", endpoint_url=moto_endpoint)
    calls: list[tuple[str, dict]] = []
    ddb.meta.events.register(
        "provide-client-params.dynamodb.*",
        lambda params, model, **_: calls.append((model.name, dict(params))),
    )
    sqs = aws.client("sqs", region="us-east-1", endpoint_url=moto_endpoint)
    reconciler = Reconciler(
        TaskStore(ddb, fresh_stack.table_name, branch_locks_table=fresh_stack.branch_locks_table),
        Dispatcher(sqs, fresh_stack.task_queue_url),
    )

    report = reconciler.run()

    assert report.total == 1
    assert {name for name, _ in calls} == {"Query"}
    assert all(params["IndexName"] == STATUS_INDEX for _, params in calls)


def test_reconciler_clock_is_injected(
    fresh_stack: LocalStackResources, moto_endpoint: str, store: TaskStore
) -> None:
    """With the clock an hour ahead, a row created now counts as lost."""
    task_id = add_row(store)
    ddb = aws.client("dynamodb", region="us-east-1", endpoint_url=moto_endpoint)
    sqs = aws.client("sqs", region="us-east-1", endpoint_url=moto_endpoint)
    later = Reconciler(
        TaskStore(ddb, fresh_stack.table_name, branch_locks_table=fresh_stack.branch_locks_table),
        Dispatcher(sqs, fresh_stack.task_queue_url),
        clock=lambda: time.time() + 3600,
    )

    assert later.run().pending == [task_id]


def test_reconciler_counts_what_it_resignalled_even_when_nothing(
    fresh_stack: LocalStackResources,
    store: TaskStore,
    load_handler: Any,
    lambda_context: Any,
    lambda_stdout: pytest.CaptureFixture[str],
) -> None:
    """TasksResignalled on every run, zero included, so a quiet queue still draws a line."""
    app = load_handler("reconciler", fresh_stack)
    lambda_stdout.readouterr()
    app.lambda_handler(load_event("schedule.json"), lambda_context)
    old = iso_at(time.time() - 600)
    add_row(store, createdAt=old, updatedAt=old)
    add_row(store, createdAt=old, updatedAt=old)

    app.lambda_handler(load_event("schedule.json"), lambda_context)

    assert emf_metrics(lambda_stdout.readouterr().out) == {"TasksResignalled": [0.0, 2.0]}
