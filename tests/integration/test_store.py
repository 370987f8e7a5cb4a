"""Every transition is one conditional write, checked against the moto server over HTTP."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from shared import aws
from shared.models import TaskStatus, from_dynamodb
from shared.store import (
    LOCK_TTL_SECONDS,
    BranchBusyError,
    ClaimLostError,
    InvalidRowError,
    LeaseLostError,
    TaskNotFoundError,
    TaskStore,
    TransitionError,
)
from tests.fixtures import unique

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["status-index", "branch-locks"])
def store(request: pytest.FixtureRequest, ddb: Any, deployed: Any) -> TaskStore:
    """Every transition test runs without a lock table (one task per branch is the caller's
    business, as before) and with one (each claim also takes its branch's lock)."""
    locks = deployed.branch_locks_table if request.param == "branch-locks" else None
    return TaskStore(ddb, deployed.table_name, branch_locks_table=locks)


def locking_store(ddb: Any, deployed: Any, now: list[float] | None = None) -> TaskStore:
    """A store with the branch locks table; ``now`` (a one-item list) is its clock when given."""
    clock = (lambda: now[0]) if now is not None else time.time
    return TaskStore(ddb, deployed.table_name, clock, branch_locks_table=deployed.branch_locks_table)


def lock_item(ddb: Any, deployed: Any, branch: str) -> dict[str, Any]:
    got = ddb.get_item(
        TableName=deployed.branch_locks_table, Key={"branch": {"S": branch}}, ConsistentRead=True
    )
    return from_dynamodb(got.get("Item", {}))


def branch_task(store: TaskStore, branch: str) -> str:
    task_id = unique("br")
    store.put_new({"id": task_id, "title": "T", "details": "d", "branch": branch})
    return task_id


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
        assert store.get_row(task_id)["runnerId"] == winners[0]


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
    assert store.get_row(task_id)["status"] == "complete"


@pytest.mark.parametrize("locks", [False, True], ids=["status-index", "branch-locks"])
def test_a_renewal_cannot_bring_back_a_lease_that_ran_out(ddb: Any, deployed: Any, locks: bool) -> None:
    """Others act on an expired lease without taking the row (another task of the branch starts, the
    lock is taken over, the dead letter handler fails the row): its runner must not revive it. The
    row stays its runner's until someone reclaims it, so the runner can still record its work."""
    # given: r1's 30 s lease, renewed once, then silent past it
    now = [1000.0]
    lock_table = deployed.branch_locks_table if locks else None
    store = TaskStore(ddb, deployed.table_name, lambda: now[0], branch_locks_table=lock_table)
    task_id = new_task(store)
    store.claim(task_id, "r1", 30)
    now[0] += 20
    assert store.renew(task_id, "r1", 1, 30) == 1050
    # when
    now[0] += 31
    # then
    with pytest.raises(LeaseLostError):
        store.renew(task_id, "r1", 1, 30)
    row = store.get_row(task_id)
    assert row["leaseExpiresAt"] == 1050 and row["runnerId"] == "r1"
    if locks:
        assert lock_item(ddb, deployed, f"feature/{task_id}")["leaseExpiresAt"] == 1050
    store.record(task_id, "r1", 1, wipSha="d" * 40)
    assert store.get_row(task_id)["wipSha"] == "d" * 40


def test_complete_and_fail_need_the_owner(store: TaskStore) -> None:
    task_id = new_task(store)
    store.claim(task_id, "r1", 60)
    with pytest.raises(LeaseLostError):
        store.fail(task_id, "r2", 1, "not mine")
    store.fail(task_id, "r1", 1, "agent failed (exit 1): boom", "tail")
    row = store.get_row(task_id)
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
    row = store.get_row(task_id)
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
    assert store.get_row(stuck)["status"] == "failed"
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
        store.get_row("nope-" + unique("x"))
    with pytest.raises(ClaimLostError):
        store.claim("nope-" + unique("x"), "r1", 60)
    task_id = new_task(store)
    with pytest.raises(TransitionError):
        store.put_new({"id": task_id, "title": "T", "branch": "feature/x"})


def test_record_sets_fields_only_for_the_owner(store: TaskStore) -> None:
    task_id = new_task(store)
    store.claim(task_id, "r1", 60)
    store.record(task_id, "r1", 1, baseSha="e" * 40)
    assert store.get_row(task_id)["baseSha"] == "e" * 40
    with pytest.raises(LeaseLostError):
        store.record(task_id, "r2", 1, baseSha="f" * 40)


def test_complete_clears_the_wip_so_a_retry_starts_afresh(store: TaskStore) -> None:
    """A task that completed (from its WIP or not) and is retried must not resume from that old WIP."""
    task_id = new_task(store)
    store.claim(task_id, "r1", 60)
    store.record(task_id, "r1", 1, wipSha="a" * 40, wipRef=f"kiro-wip/{task_id}-1")
    store.complete(task_id, "r1", 1, "b" * 40)
    row = store.get_row(task_id)
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


def test_a_row_whose_attempts_is_not_a_number_is_refused_as_invalid(store: TaskStore, ddb: Any) -> None:
    task_id = new_task(store)
    ddb.update_item(
        TableName=store.table_name,
        Key={"id": {"S": task_id}},
        UpdateExpression="SET attempts = :x",
        ExpressionAttributeValues={":x": {"S": "three"}},
    )
    with pytest.raises(InvalidRowError):
        store.claim(task_id, "r1", 60)
    assert store.get_row(task_id)["status"] == "pending"


# -- one task per branch: the lock ---------------------------------------------------------------
def race_two(claims: list[Callable[[], Any]]) -> list[Any]:
    """Run ``claims`` from threads released at the same instant; each one's result or exception."""
    results: list[Any] = [None] * len(claims)
    barrier = threading.Barrier(len(claims))

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = claims[i]()
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(claims))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_tasks_of_one_branch_claimed_at_once_one_runs_and_the_other_waits_pending(
    ddb: Any, deployed: Any
) -> None:
    """Two runners claim two tasks of one branch at the same instant, 10 times over: exactly one
    claim wins; the other is refused as BranchBusyError naming the winner, its row untouched."""
    store = locking_store(ddb, deployed)
    for _ in range(10):
        # given
        branch = f"feature/{unique('same')}"
        a, b = branch_task(store, branch), branch_task(store, branch)
        # when
        results = race_two(
            [functools.partial(store.claim, a, "r1", 60), functools.partial(store.claim, b, "r2", 60)]
        )
        # then
        won = [r for r in results if isinstance(r, dict)]
        busy = [r for r in results if isinstance(r, BranchBusyError)]
        assert len(won) == 1 and len(busy) == 1, results
        winner, loser = won[0]["id"], busy[0].task_id
        assert busy[0].holder == winner and busy[0].branch == branch
        assert store.get_row(winner)["status"] == "processing"
        row = store.get_row(loser)
        assert row["status"] == "pending" and "runnerId" not in row and "attempts" not in row
        assert lock_item(ddb, deployed, branch)["taskId"] == winner


def test_the_lock_holds_the_claim_and_its_lease(ddb: Any, deployed: Any) -> None:
    now = [1000.0]
    store = locking_store(ddb, deployed, now)
    task_id = new_task(store)
    row = store.claim(task_id, "r1", 30)
    lock = lock_item(ddb, deployed, f"feature/{task_id}")
    assert lock == {
        "branch": f"feature/{task_id}",
        "taskId": task_id,
        "runnerId": "r1",
        "attempt": 1,
        "leaseExpiresAt": 1030,
        "expiresAt": 1030 + LOCK_TTL_SECONDS,
    }
    assert row["leaseExpiresAt"] == lock["leaseExpiresAt"]
    # the renewal moves both leases in one transaction
    now[0] += 20
    store.renew(task_id, "r1", 1, 30)
    assert lock_item(ddb, deployed, f"feature/{task_id}")["leaseExpiresAt"] == 1050
    assert store.get_row(task_id)["leaseExpiresAt"] == 1050


@pytest.mark.parametrize("end", ["complete", "fail", "release"])
def test_the_branch_is_free_for_the_next_task_once_its_holder_ends(ddb: Any, deployed: Any, end: str) -> None:
    # given: a holder and a task refused behind it
    store = locking_store(ddb, deployed)
    branch = f"feature/{unique('next')}"
    first, second = branch_task(store, branch), branch_task(store, branch)
    store.claim(first, "r1", 60)
    with pytest.raises(BranchBusyError):
        store.claim(second, "r2", 60)
    # when
    if end == "complete":
        store.complete(first, "r1", 1, "a" * 40)
    elif end == "fail":
        store.fail(first, "r1", 1, "agent failed")
    else:
        store.release(first, "r1", 1, "runner shutting down")
    # then: the lock is gone and the second task claims the branch
    assert lock_item(ddb, deployed, branch) == {}
    assert store.claim(second, "r2", 60)["runnerId"] == "r2"
    assert lock_item(ddb, deployed, branch)["taskId"] == second
    if end == "release":  # the task given back waits in turn
        with pytest.raises(BranchBusyError):
            store.claim(first, "r1", 60)


def test_a_lock_whose_lease_passed_is_taken_over_and_its_old_holder_loses_the_renewal(
    ddb: Any, deployed: Any
) -> None:
    """r1 died holding the branch (its lease runs out); the next task of the branch takes the lock
    over. Should r1 come back, its renewal fails even though its own row was never reclaimed."""
    now = [1000.0]
    store = locking_store(ddb, deployed, now)
    branch = f"feature/{unique('expired')}"
    dead, next_task = branch_task(store, branch), branch_task(store, branch)
    store.claim(dead, "r1", 30)
    with pytest.raises(BranchBusyError):
        store.claim(next_task, "r2", 30)
    # when: the lease has passed
    now[0] += 31
    assert store.claim(next_task, "r2", 30)["runnerId"] == "r2"
    # then
    with pytest.raises(LeaseLostError):
        store.renew(dead, "r1", 1, 30)
    assert lock_item(ddb, deployed, branch)["taskId"] == next_task
    # the old holder's end still writes its status, and leaves the new holder's lock alone
    store.fail(dead, "r1", 1, "lease lost")
    assert store.get_row(dead)["status"] == "failed"
    assert lock_item(ddb, deployed, branch)["taskId"] == next_task


def test_a_reclaim_of_the_same_task_takes_its_own_expired_lock(ddb: Any, deployed: Any) -> None:
    now = [1000.0]
    store = locking_store(ddb, deployed, now)
    task_id = new_task(store)
    store.claim(task_id, "r1", 30)
    now[0] += 31
    row = store.claim(task_id, "r2", 30)
    assert row["runnerId"] == "r2" and row["attempts"] == 2
    lock = lock_item(ddb, deployed, f"feature/{task_id}")
    assert lock["runnerId"] == "r2" and lock["attempt"] == 2
    with pytest.raises(LeaseLostError):
        store.renew(task_id, "r1", 1, 30)
    store.renew(task_id, "r2", 2, 30)


def test_a_renewal_by_a_runner_whose_lock_is_gone_fails(ddb: Any, deployed: Any) -> None:
    store = locking_store(ddb, deployed)
    task_id = new_task(store)
    store.claim(task_id, "r1", 60)
    ddb.delete_item(TableName=deployed.branch_locks_table, Key={"branch": {"S": f"feature/{task_id}"}})
    with pytest.raises(LeaseLostError):
        store.renew(task_id, "r1", 1, 60)
    # the row itself is still r1's: it can still end the task
    store.complete(task_id, "r1", 1, "c" * 40)
    assert store.get_row(task_id)["status"] == "complete"


def test_a_claim_on_another_branch_is_not_held_up(ddb: Any, deployed: Any) -> None:
    store = locking_store(ddb, deployed)
    busy = f"feature/{unique('busy')}"
    holder, waiting = branch_task(store, busy), branch_task(store, busy)
    other = branch_task(store, f"feature/{unique('other')}")
    store.claim(holder, "r1", 60)
    with pytest.raises(BranchBusyError):
        store.claim(waiting, "r2", 60)
    assert store.claim(other, "r2", 60)["status"] == "processing"


def test_the_lock_refuses_a_claim_the_status_index_cannot_see(ddb: Any, deployed: Any) -> None:
    """What the status index misses (in DynamoDB it lags behind the claims it indexes), the lock
    does not: a lock item written directly, for a task whose row still reads pending, refuses the
    claim of another task of the branch."""
    # given: the branch held by task X, which the index shows as pending, not processing
    store = locking_store(ddb, deployed)
    branch = f"feature/{unique('unseen')}"
    held, task_id = branch_task(store, branch), branch_task(store, branch)
    ddb.put_item(
        TableName=deployed.branch_locks_table,
        Item={
            "branch": {"S": branch},
            "taskId": {"S": held},
            "runnerId": {"S": "r-elsewhere"},
            "attempt": {"N": "1"},
            "leaseExpiresAt": {"N": f"{time.time() + 60:.3f}"},
            "expiresAt": {"N": str(int(time.time()) + 60 + LOCK_TTL_SECONDS)},
        },
    )
    assert store.list_by_status(TaskStatus.PROCESSING, branch=branch) == []
    # when / then
    with pytest.raises(BranchBusyError) as refused:
        store.claim(task_id, "r1", 60)
    assert refused.value.holder == held
    row = store.get_row(task_id)
    assert row["status"] == "pending" and "runnerId" not in row


def test_a_claim_gives_a_row_without_created_at_one(ddb: Any, deployed: Any) -> None:
    """A row the backend wrote without createdAt enters the status index at the latest when it is
    claimed, so an expired lease on it is still found by the reconciler."""
    from shared.store import STATUS_INDEX

    store = TaskStore(ddb, deployed.table_name, branch_locks_table=deployed.branch_locks_table)
    task_id = unique("no-created")
    ddb.put_item(
        TableName=deployed.table_name,
        Item={
            "id": {"S": task_id},
            "title": {"S": "t"},
            "branch": {"S": unique("feature/x")},
            "status": {"S": "pending"},
        },
    )
    claimed = store.claim(task_id, "runner-1", 60)
    assert isinstance(claimed.get("createdAt"), str) and claimed["createdAt"].endswith("Z")
    seen = ddb.query(
        TableName=deployed.table_name,
        IndexName=STATUS_INDEX,
        KeyConditionExpression="#s = :p",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":p": {"S": "processing"}},
    )["Items"]
    assert task_id in {i["id"]["S"] for i in seen}
