"""Every transition is one conditional write, checked against the moto server over HTTP."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from shared import aws
from shared.models import TaskStatus
from shared.store import ClaimLostError, LeaseLostError, TaskNotFoundError, TaskStore, TransitionError
from tests.fixtures import unique

pytestmark = pytest.mark.integration


def new_task(store: TaskStore, **extra: Any) -> str:
    task_id = unique("st")
    store.put_new({"id": task_id, "title": "T", "details": "d", "branch": f"feature/{task_id}", **extra})
    return task_id


def test_claim_sets_owner_attempt_and_lease(store: TaskStore) -> None:
    task_id = new_task(store)
    row = store.claim(task_id, "r1", lease_seconds=60)
    assert row["status"] == "processing" and row["runnerId"] == "r1" and row["attempts"] == 1
    assert row["leaseExpiresAt"] > 0 and row["startedAt"]


def race_claims(store: TaskStore, task_id: str, runners: int = 8) -> list[str]:
    """``runners`` threads claim ``task_id`` at the same instant; the winners."""
    winners: list[str] = []
    barrier = threading.Barrier(runners)

    def claim(me: str) -> None:
        barrier.wait()
        try:
            store.claim(task_id, me, 60)
            winners.append(me)
        except ClaimLostError:
            pass

    threads = [threading.Thread(target=claim, args=(f"r{i}",)) for i in range(runners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return winners


def test_only_one_of_many_concurrent_claims_wins(store: TaskStore) -> None:
    """8 runners claim each of 15 rows at the same instant: exactly one wins every time (the local
    AWS keeps DynamoDB's atomic conditional writes; plain moto let two win under load)."""
    for _ in range(15):
        task_id = new_task(store)
        winners = race_claims(store, task_id)
        assert len(winners) == 1, (task_id, winners)
        assert store.get(task_id)["runnerId"] == winners[0]


def test_a_second_claim_loses_until_the_lease_expires(ddb: Any, deployed: Any) -> None:
    now = [1000.0]
    store = TaskStore(ddb, deployed.table_name, clock=lambda: now[0])
    task_id = new_task(store)
    store.claim(task_id, "r1", lease_seconds=30)
    with pytest.raises(ClaimLostError):
        store.claim(task_id, "r2", lease_seconds=30)
    now[0] += 31
    row = store.claim(task_id, "r2", lease_seconds=30)
    assert row["runnerId"] == "r2" and row["attempts"] == 2
    with pytest.raises(LeaseLostError):
        store.complete(task_id, "r1", 1, "a" * 40)
    with pytest.raises(LeaseLostError):
        store.renew(task_id, "r1", 1, 30)
    store.complete(task_id, "r2", 2, "b" * 40)
    assert store.get(task_id)["status"] == "complete"


def test_complete_and_fail_need_the_owner(store: TaskStore) -> None:
    task_id = new_task(store)
    store.claim(task_id, "r1", 60)
    with pytest.raises(LeaseLostError):
        store.fail(task_id, "r2", 1, "not mine")
    store.fail(task_id, "r1", 1, "agent failed (exit 1): boom", "tail")
    row = store.get(task_id)
    assert row["status"] == "failed" and row["error"] == "agent failed (exit 1): boom"
    assert "leaseExpiresAt" not in row and row["finishedAt"]


def test_ended_rows_are_not_claimable_until_reset(store: TaskStore) -> None:
    task_id = new_task(store)
    store.claim(task_id, "r1", 60)
    store.complete(task_id, "r1", 1, "c" * 40)
    with pytest.raises(ClaimLostError):
        store.claim(task_id, "r2", 60)
    store.reset(task_id)
    assert store.claim(task_id, "r2", 60)["attempts"] == 2
    with pytest.raises(TransitionError):
        store.reset(task_id)


def test_release_gives_the_task_back_with_a_note(store: TaskStore) -> None:
    task_id = new_task(store)
    store.claim(task_id, "r1", 60)
    store.release(task_id, "r1", 1, "runner shutting down")
    row = store.get(task_id)
    assert row["status"] == "pending" and row["error"] == "runner shutting down" and "runnerId" not in row


def test_fail_unowned_leaves_ended_and_live_rows_alone(ddb: Any, deployed: Any) -> None:
    now = [1000.0]
    store = TaskStore(ddb, deployed.table_name, clock=lambda: now[0])
    done = new_task(store)
    store.claim(done, "r1", 60)
    store.complete(done, "r1", 1, "d" * 40)
    assert store.fail_unowned(done, "gave up") is False
    stuck = new_task(store)
    store.claim(stuck, "r1", 60)
    assert store.fail_unowned(stuck, "gave up after 5 attempts: x") is False  # lease still live
    now[0] += 61
    assert store.fail_unowned(stuck, "gave up after 5 attempts: x") is True
    assert store.get(stuck)["status"] == "failed"
    assert store.fail_unowned(new_task(store), "never claimed") is True


def test_list_by_status_filters_by_branch(store: TaskStore) -> None:
    """Two pending rows of two branches: each branch's query finds its own row and not the other."""
    a, b = new_task(store), new_task(store)
    assert [r["id"] for r in store.list_by_status(TaskStatus.PENDING, branch=f"feature/{a}")] == [a]
    assert [r["id"] for r in store.list_by_status(TaskStatus.PENDING, branch=f"feature/{b}")] == [b]
    assert store.list_by_status(TaskStatus.PROCESSING, branch=f"feature/{a}") == []


def test_list_by_status_uses_the_index(store: TaskStore) -> None:
    ids = [new_task(store) for _ in range(3)]
    store.claim(ids[0], "r1", 60)
    pending = {r["id"] for r in store.list_by_status(TaskStatus.PENDING)}
    assert set(ids[1:]) <= pending and ids[0] not in pending


def test_missing_rows_and_duplicate_inserts_are_errors(store: TaskStore) -> None:
    with pytest.raises(TaskNotFoundError):
        store.get("nope-" + unique("x"))
    with pytest.raises(ClaimLostError):
        store.claim("nope-" + unique("x"), "r1", 60)
    task_id = new_task(store)
    with pytest.raises(TransitionError):
        store.put_new({"id": task_id, "title": "T", "branch": "feature/x"})


def test_record_sets_fields_only_for_the_owner(store: TaskStore) -> None:
    task_id = new_task(store)
    store.claim(task_id, "r1", 60)
    store.record(task_id, "r1", 1, baseSha="e" * 40)
    assert store.get(task_id)["baseSha"] == "e" * 40
    with pytest.raises(LeaseLostError):
        store.record(task_id, "r2", 1, baseSha="f" * 40)


def test_complete_clears_the_wip_so_a_retry_starts_afresh(store: TaskStore) -> None:
    """A task that completed (from its WIP or not) and is retried must not resume from that old WIP."""
    task_id = new_task(store)
    store.claim(task_id, "r1", 60)
    store.record(task_id, "r1", 1, wipSha="a" * 40, wipRef=f"kiro-wip/{task_id}-1")
    store.complete(task_id, "r1", 1, "b" * 40)
    row = store.get(task_id)
    assert row["status"] == "complete" and row["commitSha"] == "b" * 40
    assert "wipSha" not in row and "wipRef" not in row
    store.reset(task_id)
    assert "wipSha" not in store.claim(task_id, "r2", 60)


def test_fail_keeps_the_wip_for_the_retry(store: TaskStore) -> None:
    task_id = new_task(store)
    store.claim(task_id, "r1", 60)
    store.record(task_id, "r1", 1, wipSha="c" * 40)
    store.fail(task_id, "r1", 1, "agent timed out; work kept on kiro-wip")
    store.reset(task_id)
    assert store.claim(task_id, "r2", 60)["wipSha"] == "c" * 40


def test_list_by_status_with_a_branch_reads_pages_not_single_rows(moto_endpoint: str, deployed: Any) -> None:
    """DynamoDB applies Limit before the filter: asking for the first row of a branch among many
    pending rows must not cost one Query per row read."""
    # given: 40 pending rows of other branches, then one of the branch asked for
    ddb = aws.client("dynamodb", region="us-east-1", endpoint_url=moto_endpoint)
    store = TaskStore(ddb, deployed.table_name)
    for _ in range(40):
        new_task(store)
    wanted = new_task(store)
    pending = len(store.list_by_status(TaskStatus.PENDING, limit=100_000))
    queries: list[dict] = []
    ddb.meta.events.register(
        "provide-client-params.dynamodb.Query", lambda params, **_: queries.append(params)
    )
    # when
    rows = store.list_by_status(TaskStatus.PENDING, branch=f"feature/{wanted}", limit=1)
    # then: the row, found in as many pages as the pending rows fill (not one call per row)
    assert [r["id"] for r in rows] == [wanted]
    assert pending > 40 and len(queries) <= pending // 100 + 1, (pending, len(queries))
