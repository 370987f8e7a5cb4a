"""The task store's contract: every transition is one conditional write (or one transaction with
the branch lock), made through the ``Claim`` handle a claim returns.

Most tests run against both implementations of ``TaskRepository``: ``TaskStore`` on the moto
server over HTTP, and the in-memory fake the pipeline's unit tests use, so the fake is held to the
same conditions. What only DynamoDB has (its status index queried directly, its Query pages) is
checked on moto alone."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from shared import aws
from shared.models import MAX_ATTEMPTS, ErrorKind, InvalidRow, Task, TaskStatus, from_dynamodb, to_dynamodb
from shared.store import (
    CANCELLED_ERROR,
    LOCK_TTL_SECONDS,
    LOG_TAIL_CHARS,
    STATUS_INDEX,
    BranchBusyError,
    CancelOutcome,
    CancelRequestedError,
    Claim,
    ClaimLostError,
    InvalidRowError,
    LeaseLostError,
    TaskNotFoundError,
    TaskRepository,
    TaskStore,
    TransitionError,
)
from tests.fakes.memory_store import MemoryTaskStore
from tests.fixtures import unique

pytestmark = pytest.mark.integration


class Backend:
    """One implementation under the contract tests, and the raw access a test needs to set up or
    look at what the repository API does not show: lock items, and rows no backend would write."""

    def __init__(self, kind: str, ddb: Any = None, deployed: Any = None) -> None:
        self.kind = kind
        self._ddb = ddb
        self._deployed = deployed
        self._memory: MemoryTaskStore | None = None

    def store(self, now: list[float] | None = None) -> TaskRepository:
        """The repository; ``now`` (a one-item list) is its clock when given. One per test."""
        clock = (lambda: now[0]) if now is not None else time.time
        if self.kind == "dynamodb":
            return TaskStore(
                self._ddb,
                self._deployed.table_name,
                clock,
                branch_locks_table=self._deployed.branch_locks_table,
            )
        self._memory = MemoryTaskStore(clock)
        return self._memory

    @property
    def memory(self) -> MemoryTaskStore:
        assert self._memory is not None, "make the store first"
        return self._memory

    def lock(self, branch: str) -> dict[str, Any]:
        """The branch's lock item as plain values ({} when there is none)."""
        if self.kind == "memory":
            return dict(self.memory.locks.get(branch, {}))
        return lock_item(self._ddb, self._deployed, branch)

    def put_lock(self, item: dict[str, Any]) -> None:
        if self.kind == "memory":
            self.memory.locks[item["branch"]] = from_dynamodb(to_dynamodb(item))
        else:
            self._ddb.put_item(TableName=self._deployed.branch_locks_table, Item=to_dynamodb(item))

    def delete_lock(self, branch: str) -> None:
        if self.kind == "memory":
            del self.memory.locks[branch]
        else:
            self._ddb.delete_item(TableName=self._deployed.branch_locks_table, Key={"branch": {"S": branch}})

    def put_raw(self, row: dict[str, Any]) -> None:
        """A row as a backend may write it, without ``put_new``'s defaults (no createdAt)."""
        if self.kind == "memory":
            self.memory.rows[row["id"]] = from_dynamodb(to_dynamodb(row))
        else:
            self._ddb.put_item(TableName=self._deployed.table_name, Item=to_dynamodb(row))

    def set_raw(self, task_id: str, **values: Any) -> None:
        """Overwrite attributes of a row directly (wire names), with any value DynamoDB takes."""
        if self.kind == "memory":
            self.memory.rows[task_id].update(from_dynamodb(to_dynamodb(values)))
            return
        names = {f"#n{i}": k for i, k in enumerate(values)}
        self._ddb.update_item(
            TableName=self._deployed.table_name,
            Key={"id": {"S": task_id}},
            UpdateExpression="SET " + ", ".join(f"{n} = :v{i}" for i, n in enumerate(names)),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={f":v{i}": v for i, v in enumerate(to_dynamodb(values).values())},
        )


@pytest.fixture(params=["dynamodb", "memory"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each contract test runs on the DynamoDB adapter (moto over HTTP) and on the in-memory fake."""
    if request.param == "dynamodb":
        return Backend("dynamodb", request.getfixturevalue("ddb"), request.getfixturevalue("deployed"))
    return Backend("memory")


@pytest.fixture
def store(backend: Backend) -> TaskRepository:
    return backend.store()


def locking_store(ddb: Any, deployed: Any, now: list[float] | None = None) -> TaskStore:
    """The DynamoDB store; ``now`` (a one-item list) is its clock when given."""
    clock = (lambda: now[0]) if now is not None else time.time
    return TaskStore(ddb, deployed.table_name, clock, branch_locks_table=deployed.branch_locks_table)


def lock_item(ddb: Any, deployed: Any, branch: str) -> dict[str, Any]:
    got = ddb.get_item(
        TableName=deployed.branch_locks_table, Key={"branch": {"S": branch}}, ConsistentRead=True
    )
    return from_dynamodb(got.get("Item", {}))


def branch_task(store: TaskRepository, branch: str) -> str:
    task_id = unique("br")
    store.put_new({"id": task_id, "title": "T", "details": "d", "branch": branch})
    return task_id


def new_task(store: TaskRepository, **extra: Any) -> str:
    task_id = unique("st")
    store.put_new({"id": task_id, "title": "T", "details": "d", "branch": f"feature/{task_id}", **extra})
    return task_id


def not_mine(store: TaskRepository, claim: Claim, runner_id: str = "r2") -> Claim:
    """A handle naming a runner that does not own the row (as a runner whose claim was lost, or
    one that never made it, would write): every write through it must be refused."""
    return Claim(store, claim.task, runner_id, claim.branch)


def test_claim_sets_owner_attempt_and_lease(store: TaskRepository) -> None:
    task_id = new_task(store)
    claim = store.claim(task_id, "r1", lease_seconds=60)
    task = claim.task
    assert task.status == "processing" and task.runner_id == "r1" and task.attempts == 1
    assert task.lease_expires_at is not None and task.lease_expires_at > 0 and task.started_at
    assert (claim.task_id, claim.runner_id, claim.attempt, claim.branch) == (task_id, "r1", 1, task.branch)


def race_claims(store: TaskRepository, task_id: str, runners: int = 8) -> list[str]:
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


def test_only_one_of_many_concurrent_claims_wins(store: TaskRepository) -> None:
    """8 runners claim each of 15 rows at the same instant: exactly one wins every time (the local
    AWS keeps DynamoDB's atomic conditional writes; plain moto let two win under load)."""
    for _ in range(15):
        task_id = new_task(store)
        winners = race_claims(store, task_id)
        assert len(winners) == 1, (task_id, winners)
        assert store.get_row(task_id)["runnerId"] == winners[0]


def test_a_second_claim_loses_until_the_lease_expires(backend: Backend) -> None:
    now = [1000.0]
    store = backend.store(now)
    task_id = new_task(store)
    first = store.claim(task_id, "r1", lease_seconds=30)
    with pytest.raises(ClaimLostError):
        store.claim(task_id, "r2", lease_seconds=30)
    now[0] += 31
    second = store.claim(task_id, "r2", lease_seconds=30)
    assert second.task.runner_id == "r2" and second.task.attempts == 2
    with pytest.raises(LeaseLostError):
        first.complete("a" * 40)
    with pytest.raises(LeaseLostError):
        first.renew(30)
    second.complete("b" * 40)
    assert store.get_row(task_id)["status"] == "complete"


def test_a_renewal_cannot_bring_back_a_lease_that_ran_out(backend: Backend) -> None:
    """Others act on an expired lease without taking the row (another task of the branch starts, the
    lock is taken over, the dead letter handler fails the row): its runner must not revive it. The
    row stays its runner's until someone reclaims it, so the runner can still record its work."""
    # given: r1's 30 s lease, renewed once, then silent past it
    now = [1000.0]
    store = backend.store(now)
    task_id = new_task(store)
    claim = store.claim(task_id, "r1", 30)
    now[0] += 20
    assert claim.renew(30) == 1050
    # when
    now[0] += 31
    # then
    with pytest.raises(LeaseLostError):
        claim.renew(30)
    row = store.get_row(task_id)
    assert row["leaseExpiresAt"] == 1050 and row["runnerId"] == "r1"
    assert backend.lock(f"feature/{task_id}")["leaseExpiresAt"] == 1050
    claim.record(wip_sha="d" * 40)
    assert store.get_row(task_id)["wipSha"] == "d" * 40


def test_complete_and_fail_need_the_owner(store: TaskRepository) -> None:
    task_id = new_task(store)
    claim = store.claim(task_id, "r1", 60)
    with pytest.raises(LeaseLostError):
        not_mine(store, claim).fail("not mine", kind=ErrorKind.AGENT_EXIT)
    claim.fail("agent failed (exit 1): boom", "tail", kind=ErrorKind.AGENT_EXIT)
    row = store.get_row(task_id)
    assert row["status"] == "failed" and row["error"] == "agent failed (exit 1): boom"
    assert "leaseExpiresAt" not in row and row["finishedAt"]


def test_ended_rows_are_not_claimable_until_reset(store: TaskRepository) -> None:
    task_id = new_task(store)
    store.claim(task_id, "r1", 60).complete("c" * 40)
    with pytest.raises(ClaimLostError):
        store.claim(task_id, "r2", 60)
    store.reset(task_id)
    assert store.claim(task_id, "r2", 60).task.attempts == 2
    with pytest.raises(TransitionError):
        store.reset(task_id)


def test_a_reset_and_the_next_claim_clear_what_the_last_attempt_left(store: TaskRepository) -> None:
    """A retried task starts clean: the reset drops the owner, the claim drops the old outcome."""
    task_id = new_task(store)
    store.claim(task_id, "r1", 60).fail("agent failed (exit 1)", kind=ErrorKind.AGENT_EXIT)
    store.reset(task_id)
    row = store.get_row(task_id)
    assert row["status"] == "pending" and "runnerId" not in row and "leaseExpiresAt" not in row
    store.claim(task_id, "r2", 60)
    row = store.get_row(task_id)
    assert row["runnerId"] == "r2" and not {"error", "commitSha", "finishedAt"} & row.keys()


def test_release_gives_the_task_back_with_a_note(store: TaskRepository) -> None:
    task_id = new_task(store)
    store.claim(task_id, "r1", 60).release("runner shutting down")
    row = store.get_row(task_id)
    assert row["status"] == "pending" and row["error"] == "runner shutting down" and "runnerId" not in row


def test_fail_unowned_leaves_ended_and_live_rows_alone(backend: Backend) -> None:
    now = [1000.0]
    store = backend.store(now)
    done = new_task(store)
    store.claim(done, "r1", 60).complete("d" * 40)
    assert store.fail_unowned(done, "gave up") is False
    stuck = new_task(store)
    store.claim(stuck, "r1", 60)
    assert store.fail_unowned(stuck, "gave up after 5 attempts: x") is False  # lease still live
    now[0] += 61
    assert store.fail_unowned(stuck, "gave up after 5 attempts: x") is True
    assert store.get_row(stuck)["status"] == "failed"
    assert store.fail_unowned(new_task(store), "never claimed") is True


def test_a_failure_writes_its_error_kind_with_its_error(store: TaskRepository) -> None:
    """``Claim.fail`` writes ``errorKind`` in the same write as ``error``; the row reads back as a
    ``Task`` with the kind."""
    task_id = new_task(store)
    store.claim(task_id, "r1", 60).fail("agent timed out after 30 s", kind=ErrorKind.AGENT_TIMEOUT)
    row = store.get_row(task_id)
    assert row["status"] == "failed" and row["error"] == "agent timed out after 30 s"
    assert row["errorKind"] == "agent_timeout"
    assert store.get(task_id).error_kind is ErrorKind.AGENT_TIMEOUT


def test_giving_up_writes_its_error_kind_with_its_error(backend: Backend) -> None:
    """``fail_unowned`` writes the kind it is given (``gave_up`` by default) with the error."""
    now = [1000.0]
    store = backend.store(now)
    stuck, garbage = new_task(store), new_task(store)
    store.claim(stuck, "r1", 60)
    now[0] += 61
    assert store.fail_unowned(stuck, "gave up after 1 attempt: runner gone") is True
    assert store.fail_unowned(garbage, "invalid task row: title: too short", ErrorKind.INVALID_TASK)
    assert {k: store.get_row(stuck)[k] for k in ("status", "error", "errorKind")} == {
        "status": "failed",
        "error": "gave up after 1 attempt: runner gone",
        "errorKind": "gave_up",
    }
    assert store.get_row(garbage)["errorKind"] == "invalid_task"


def test_a_row_that_did_not_fail_carries_no_error_kind(store: TaskRepository) -> None:
    """The next claim, a completion and a release each leave no ``errorKind`` behind: the kind
    belongs to a failure, and only while the row shows it."""
    task_id = new_task(store)
    store.claim(task_id, "r1", 60).fail("agent failed (exit 1)", kind=ErrorKind.AGENT_EXIT)
    store.reset(task_id)
    claim = store.claim(task_id, "r2", 60)
    assert "errorKind" not in store.get_row(task_id)
    claim.complete("c" * 40)
    assert "errorKind" not in store.get_row(task_id)
    released = new_task(store)
    store.claim(released, "r1", 60).fail("agent failed", kind=ErrorKind.AGENT_EXIT)
    store.reset(released)
    store.claim(released, "r1", 60).release("runner shutting down")
    row = store.get_row(released)
    assert row["status"] == "pending" and "errorKind" not in row


def test_a_row_with_an_error_kind_this_version_does_not_know_stays_readable(store: TaskRepository) -> None:
    """A newer runner's kind (the set is add-only) is kept as written; the row is still a task."""
    task_id = new_task(store, errorKind="some_newer_kind", status="failed", error="x")
    assert store.get(task_id).error_kind == "some_newer_kind"


def test_giving_up_on_a_task_frees_its_branch_lock(backend: Backend) -> None:
    """The dead-letter path gives up on a task whose runner died holding its branch: the lock goes
    with it, so the next task of the branch need not wait for the dead lease."""
    # given: r1 died holding the branch; its lease has passed
    now = [1000.0]
    store = backend.store(now)
    branch = f"feature/{unique('gaveup')}"
    dead, waiting = branch_task(store, branch), branch_task(store, branch)
    store.claim(dead, "r1", 30)
    now[0] += 31
    # when
    assert store.fail_unowned(dead, "gave up after 5 attempts: runner gone") is True
    # then
    assert backend.lock(branch) == {}
    assert store.claim(waiting, "r2", 30).task.runner_id == "r2"


def test_giving_up_on_a_task_leaves_another_tasks_lock_alone(backend: Backend) -> None:
    """A task given up after another task of its branch took the lock over (or one that never held
    it) must not free the branch under the task that holds it now."""
    # given: r1 died holding the branch, and the next task took the expired lock over
    now = [1000.0]
    store = backend.store(now)
    branch = f"feature/{unique('keep')}"
    dead, holder, never = branch_task(store, branch), branch_task(store, branch), branch_task(store, branch)
    store.claim(dead, "r1", 30)
    now[0] += 31
    store.claim(holder, "r2", 30)
    # when
    assert store.fail_unowned(dead, "gave up after 5 attempts: runner gone") is True
    assert store.fail_unowned(never, "gave up: unreadable") is True
    # then
    lock = backend.lock(branch)
    assert lock["taskId"] == holder and lock["runnerId"] == "r2"
    with pytest.raises(BranchBusyError):
        store.claim(branch_task(store, branch), "r3", 30)


def test_list_by_status_filters_by_branch(store: TaskRepository) -> None:
    """Two pending rows of two branches: each branch's query finds its own row and not the other."""
    a, b = new_task(store), new_task(store)
    assert [t.id for t in store.list_by_status(TaskStatus.PENDING, branch=f"feature/{a}")] == [a]
    assert [t.id for t in store.list_by_status(TaskStatus.PENDING, branch=f"feature/{b}")] == [b]
    assert store.list_by_status(TaskStatus.PROCESSING, branch=f"feature/{a}") == []


def test_list_by_status_uses_the_index(store: TaskRepository) -> None:
    ids = [new_task(store) for _ in range(3)]
    store.claim(ids[0], "r1", 60)
    pending = {t.id for t in store.list_by_status(TaskStatus.PENDING, limit=100_000)}
    assert set(ids[1:]) <= pending and ids[0] not in pending


def test_listings_are_oldest_first_and_stop_at_the_limit(store: TaskRepository) -> None:
    """The waiter woken when a branch frees is the first one listed: the oldest."""
    branch = f"feature/{unique('order')}"
    ids = [unique("o") for _ in range(3)]
    for task_id, created in zip(
        ids, ["2026-01-03T00:00:00.000Z", "2026-01-01T00:00:00.000Z", "2026-01-02T00:00:00.000Z"], strict=True
    ):
        store.put_new({"id": task_id, "title": "T", "branch": branch, "createdAt": created})
    listed = store.list_by_status(TaskStatus.PENDING, branch=branch, limit=2)
    assert [t.id for t in listed] == [ids[1], ids[2]]
    before = store.list_by_status(
        TaskStatus.PENDING, created_before="2026-01-02T00:00:00.000Z", branch=branch
    )
    assert [t.id for t in before] == [ids[1]]


def test_an_unreadable_row_is_an_invalid_row_error_skipped_by_listings_and_shown_by_list_tasks(
    store: TaskRepository, backend: Backend
) -> None:
    """A row the backend wrote wrongly (an empty title) is no Task: ``get`` says why, ``get_row``
    still shows it, ``list_by_status`` skips it and ``list_tasks`` shows it in its place."""
    branch = f"feature/{unique('bad')}"
    bad, good = branch_task(store, branch), branch_task(store, branch)
    backend.set_raw(bad, title="")
    with pytest.raises(InvalidRowError) as unreadable:
        store.get(bad)
    assert unreadable.value.task_id == bad and unreadable.value.reason.startswith("invalid task row: title")
    assert store.get_row(bad)["title"] == ""
    assert [t.id for t in store.list_by_status(TaskStatus.PENDING, branch=branch)] == [good]
    shown = {r.id: r for r in store.list_tasks(TaskStatus.PENDING, limit=100_000) if r.id in (bad, good)}
    assert isinstance(shown[good], Task)
    assert isinstance(shown[bad], InvalidRow) and shown[bad].reason == unreadable.value.reason


def test_missing_rows_and_duplicate_inserts_are_errors(store: TaskRepository) -> None:
    with pytest.raises(TaskNotFoundError):
        store.get_row("nope-" + unique("x"))
    with pytest.raises(TaskNotFoundError):
        store.get("nope-" + unique("x"))
    with pytest.raises(ClaimLostError):
        store.claim("nope-" + unique("x"), "r1", 60)
    task_id = new_task(store)
    with pytest.raises(TransitionError):
        store.put_new({"id": task_id, "title": "T", "branch": "feature/x"})


def test_record_sets_fields_only_for_the_owner(store: TaskRepository) -> None:
    task_id = new_task(store)
    claim = store.claim(task_id, "r1", 60)
    claim.record(base_sha="e" * 40)
    assert store.get_row(task_id)["baseSha"] == "e" * 40
    with pytest.raises(LeaseLostError):
        not_mine(store, claim).record(base_sha="f" * 40)
    with pytest.raises(TypeError):
        claim.record(baseSha="f" * 40)  # the Task's attribute names, not the wire names
    assert store.get_row(task_id)["baseSha"] == "e" * 40


def test_complete_clears_the_wip_so_a_retry_starts_afresh(store: TaskRepository) -> None:
    """A task that completed (from its WIP or not) and is retried must not resume from that old WIP."""
    task_id = new_task(store)
    claim = store.claim(task_id, "r1", 60)
    claim.record(wip_sha="a" * 40, wip_ref=f"kiro-wip/{task_id}-1")
    claim.complete("b" * 40)
    row = store.get_row(task_id)
    assert row["status"] == "complete" and row["commitSha"] == "b" * 40
    assert "wipSha" not in row and "wipRef" not in row
    store.reset(task_id)
    assert store.claim(task_id, "r2", 60).task.wip_sha is None


def test_fail_keeps_the_wip_for_the_retry(store: TaskRepository) -> None:
    task_id = new_task(store)
    claim = store.claim(task_id, "r1", 60)
    claim.record(wip_sha="c" * 40)
    claim.fail("agent timed out; work kept on kiro-wip", kind=ErrorKind.AGENT_TIMEOUT)
    store.reset(task_id)
    assert store.claim(task_id, "r2", 60).task.wip_sha == "c" * 40


def test_stamp_created_only_fills_a_missing_created_at(store: TaskRepository, backend: Backend) -> None:
    """A row written without createdAt is not in the status index until it has one; stamping never
    overwrites one the row has, nor makes a row."""
    task_id = unique("stamp")
    backend.put_raw({"id": task_id, "title": "t", "branch": f"feature/{task_id}", "status": "pending"})
    assert task_id not in {t.id for t in store.list_by_status(TaskStatus.PENDING, limit=100_000)}
    assert store.stamp_created(task_id, "2026-01-01T00:00:00.000Z") is True
    assert store.stamp_created(task_id, "2027-01-01T00:00:00.000Z") is False
    assert store.get(task_id).created_at == "2026-01-01T00:00:00.000Z"
    assert task_id in {t.id for t in store.list_by_status(TaskStatus.PENDING, limit=100_000)}
    assert store.stamp_created("nope-" + unique("x"), "2026-01-01T00:00:00.000Z") is False


def test_a_claim_holds_only_on_the_row_as_the_caller_read_it(store: TaskRepository, backend: Backend) -> None:
    """A claim made from a Task read earlier is refused once the row's attempts or branch moved."""
    task_id = new_task(store)
    stale = store.get(task_id)
    store.claim(task_id, "r1", 60).release("runner shutting down")  # attempts is 1 now
    with pytest.raises(ClaimLostError):
        store.claim(stale, "r2", 60)
    moved = store.get(task_id)
    backend.set_raw(task_id, branch=f"feature/{unique('moved')}")
    with pytest.raises(ClaimLostError):
        store.claim(moved, "r2", 60)
    assert store.claim(store.get(task_id), "r2", 60).task.attempts == 2


def test_list_by_status_with_a_branch_reads_pages_not_single_rows(moto_endpoint: str, deployed: Any) -> None:
    """DynamoDB applies Limit before the filter: asking for the first row of a branch among many
    pending rows must not cost one Query per row read."""
    # given: 40 pending rows of other branches, then one of the branch asked for
    ddb = aws.client("dynamodb", region="us-east-1", endpoint_url=moto_endpoint)
    store = locking_store(ddb, deployed)
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
    assert [t.id for t in rows] == [wanted]
    assert pending > 40 and len(queries) <= pending // 100 + 1, (pending, len(queries))


def test_a_row_whose_attempts_is_not_a_number_is_refused_as_invalid(
    store: TaskRepository, backend: Backend
) -> None:
    task_id = new_task(store)
    backend.set_raw(task_id, attempts="three")
    with pytest.raises(InvalidRowError):
        store.claim(task_id, "r1", 60)
    assert store.get_row(task_id)["status"] == "pending"


def test_a_store_without_a_branch_locks_table_is_refused(ddb: Any, deployed: Any) -> None:
    """One branch-lock model: there is no fallback to run without the locks table."""
    for missing in ("", None):
        with pytest.raises(ValueError, match="BRANCH_LOCKS_TABLE"):
            TaskStore(ddb, deployed.table_name, branch_locks_table=missing)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        TaskStore(ddb, deployed.table_name)  # type: ignore[call-arg]


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
    store: TaskRepository, backend: Backend
) -> None:
    """Two runners claim two tasks of one branch at the same instant, 10 times over: exactly one
    claim wins; the other is refused as BranchBusyError naming the winner, its row untouched."""
    for _ in range(10):
        # given
        branch = f"feature/{unique('same')}"
        a, b = branch_task(store, branch), branch_task(store, branch)
        # when
        results = race_two(
            [functools.partial(store.claim, a, "r1", 60), functools.partial(store.claim, b, "r2", 60)]
        )
        # then
        won = [r for r in results if isinstance(r, Claim)]
        busy = [r for r in results if isinstance(r, BranchBusyError)]
        assert len(won) == 1 and len(busy) == 1, results
        winner, loser = won[0].task_id, busy[0].task_id
        assert busy[0].holder == winner and busy[0].branch == branch
        assert store.get_row(winner)["status"] == "processing"
        row = store.get_row(loser)
        assert row["status"] == "pending" and "runnerId" not in row and "attempts" not in row
        assert backend.lock(branch)["taskId"] == winner


def test_the_lock_holds_the_claim_and_its_lease(backend: Backend) -> None:
    now = [1000.0]
    store = backend.store(now)
    task_id = new_task(store)
    claim = store.claim(task_id, "r1", 30)
    lock = backend.lock(f"feature/{task_id}")
    assert lock == {
        "branch": f"feature/{task_id}",
        "taskId": task_id,
        "runnerId": "r1",
        "attempt": 1,
        "leaseExpiresAt": 1030,
        "expiresAt": 1030 + LOCK_TTL_SECONDS,
    }
    assert claim.task.lease_expires_at == lock["leaseExpiresAt"]
    # the renewal moves both leases in one transaction
    now[0] += 20
    claim.renew(30)
    assert backend.lock(f"feature/{task_id}")["leaseExpiresAt"] == 1050
    assert store.get_row(task_id)["leaseExpiresAt"] == 1050


@pytest.mark.parametrize("end", ["complete", "fail", "release"])
def test_the_branch_is_free_for_the_next_task_once_its_holder_ends(
    store: TaskRepository, backend: Backend, end: str
) -> None:
    # given: a holder and a task refused behind it
    branch = f"feature/{unique('next')}"
    first, second = branch_task(store, branch), branch_task(store, branch)
    holder = store.claim(first, "r1", 60)
    with pytest.raises(BranchBusyError):
        store.claim(second, "r2", 60)
    # when
    if end == "complete":
        holder.complete("a" * 40)
    elif end == "fail":
        holder.fail("agent failed", kind=ErrorKind.AGENT_EXIT)
    else:
        holder.release("runner shutting down")
    # then: the lock is gone and the second task claims the branch
    assert backend.lock(branch) == {}
    assert store.claim(second, "r2", 60).task.runner_id == "r2"
    assert backend.lock(branch)["taskId"] == second
    if end == "release":  # the task given back waits in turn
        with pytest.raises(BranchBusyError):
            store.claim(first, "r1", 60)


def test_a_lock_whose_lease_passed_is_taken_over_and_its_old_holder_loses_the_renewal(
    backend: Backend,
) -> None:
    """r1 died holding the branch (its lease runs out); the next task of the branch takes the lock
    over. Should r1 come back, its renewal fails even though its own row was never reclaimed."""
    now = [1000.0]
    store = backend.store(now)
    branch = f"feature/{unique('expired')}"
    dead, next_task = branch_task(store, branch), branch_task(store, branch)
    old = store.claim(dead, "r1", 30)
    with pytest.raises(BranchBusyError):
        store.claim(next_task, "r2", 30)
    # when: the lease has passed
    now[0] += 31
    assert store.claim(next_task, "r2", 30).task.runner_id == "r2"
    # then
    with pytest.raises(LeaseLostError):
        old.renew(30)
    assert backend.lock(branch)["taskId"] == next_task
    # the old holder's end still writes its status, and leaves the new holder's lock alone
    old.fail("lease lost", kind=ErrorKind.AGENT_EXIT)
    assert store.get_row(dead)["status"] == "failed"
    assert backend.lock(branch)["taskId"] == next_task


def test_a_reclaim_of_the_same_task_takes_its_own_expired_lock(backend: Backend) -> None:
    now = [1000.0]
    store = backend.store(now)
    task_id = new_task(store)
    first = store.claim(task_id, "r1", 30)
    now[0] += 31
    second = store.claim(task_id, "r2", 30)
    assert second.task.runner_id == "r2" and second.task.attempts == 2
    lock = backend.lock(f"feature/{task_id}")
    assert lock["runnerId"] == "r2" and lock["attempt"] == 2
    with pytest.raises(LeaseLostError):
        first.renew(30)
    second.renew(30)


def test_a_renewal_by_a_runner_whose_lock_is_gone_fails(store: TaskRepository, backend: Backend) -> None:
    task_id = new_task(store)
    claim = store.claim(task_id, "r1", 60)
    backend.delete_lock(f"feature/{task_id}")
    with pytest.raises(LeaseLostError):
        claim.renew(60)
    # the row itself is still r1's: it can still end the task
    claim.complete("c" * 40)
    assert store.get_row(task_id)["status"] == "complete"


def test_a_runner_that_reclaims_its_own_task_cannot_write_through_its_old_claim(backend: Backend) -> None:
    """The attempt is part of the ownership: a runner (restarted under the same id) that reclaims
    its own expired task holds a new claim, and the old one's writes are refused."""
    now = [1000.0]
    store = backend.store(now)
    task_id = new_task(store)
    old = store.claim(task_id, "r1", 30)
    now[0] += 31
    new = store.claim(task_id, "r1", 30)
    assert new.attempt == 2
    for write in (
        lambda: old.renew(30),
        lambda: old.record(base_sha="a" * 40),
        lambda: old.fail("stale", kind=ErrorKind.AGENT_EXIT),
    ):
        with pytest.raises(LeaseLostError):
            write()
    new.complete("b" * 40)
    assert store.get_row(task_id)["status"] == "complete"
    assert backend.lock(f"feature/{task_id}") == {}


def test_a_task_whose_own_lock_outlived_its_end_is_claimed_again(
    store: TaskRepository, backend: Backend
) -> None:
    """The lock's delete is a separate write that may fail (it is only logged): a task given back
    with its own lock still in place under a live lease is not kept waiting for itself."""
    task_id = new_task(store)
    branch = f"feature/{task_id}"
    store.claim(task_id, "r1", 60).release("runner shutting down")
    backend.put_lock(
        {
            "branch": branch,
            "taskId": task_id,
            "runnerId": "r1",
            "attempt": 1,
            "leaseExpiresAt": round(time.time() + 60, 3),
            "expiresAt": int(time.time()) + 60 + LOCK_TTL_SECONDS,
        }
    )
    assert store.claim(task_id, "r2", 60).task.attempts == 2
    assert backend.lock(branch)["runnerId"] == "r2"


def test_a_renewal_fails_once_the_branch_lock_is_another_tasks(
    store: TaskRepository, backend: Backend
) -> None:
    """The lock is half of the lease: a live row whose lock now names another task is no longer
    this claim's to renew."""
    task_id = new_task(store)
    branch = f"feature/{task_id}"
    claim = store.claim(task_id, "r1", 60)
    backend.put_lock({**backend.lock(branch), "taskId": unique("other")})
    with pytest.raises(LeaseLostError):
        claim.renew(60)


def test_an_end_deletes_only_its_own_runners_lock(store: TaskRepository, backend: Backend) -> None:
    """The status write stands; the lock is deleted only while it is this claim's (task and runner)."""
    task_id = new_task(store)
    branch = f"feature/{task_id}"
    claim = store.claim(task_id, "r1", 60)
    foreign = {**backend.lock(branch), "runnerId": "r-other"}
    backend.put_lock(foreign)
    claim.complete("c" * 40)
    assert store.get_row(task_id)["status"] == "complete"
    assert backend.lock(branch) == foreign


def test_a_claim_on_another_branch_is_not_held_up(store: TaskRepository) -> None:
    busy = f"feature/{unique('busy')}"
    holder, waiting = branch_task(store, busy), branch_task(store, busy)
    other = branch_task(store, f"feature/{unique('other')}")
    store.claim(holder, "r1", 60)
    with pytest.raises(BranchBusyError):
        store.claim(waiting, "r2", 60)
    assert store.claim(other, "r2", 60).task.status == "processing"


def test_the_lock_refuses_a_claim_the_status_index_cannot_see(
    store: TaskRepository, backend: Backend
) -> None:
    """What the status index misses (in DynamoDB it lags behind the claims it indexes), the lock
    does not: a lock item written directly, for a task whose row still reads pending, refuses the
    claim of another task of the branch."""
    # given: the branch held by task X, which the index shows as pending, not processing
    branch = f"feature/{unique('unseen')}"
    held, task_id = branch_task(store, branch), branch_task(store, branch)
    backend.put_lock(
        {
            "branch": branch,
            "taskId": held,
            "runnerId": "r-elsewhere",
            "attempt": 1,
            "leaseExpiresAt": round(time.time() + 60, 3),
            "expiresAt": int(time.time()) + 60 + LOCK_TTL_SECONDS,
        }
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
    store = locking_store(ddb, deployed)
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
    claimed = store.claim(task_id, "runner-1", 60).task
    assert isinstance(claimed.created_at, str) and claimed.created_at.endswith("Z")
    seen = ddb.query(
        TableName=deployed.table_name,
        IndexName=STATUS_INDEX,
        KeyConditionExpression="#s = :p",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":p": {"S": "processing"}},
    )["Items"]
    assert task_id in {i["id"]["S"] for i in seen}


def test_a_waiting_note_is_written_only_while_no_claim_was_made_since_the_row_was_read(
    ddb: Any, deployed: Any
) -> None:
    """note_waiting never undoes a claim: it applies to the row as the caller read it (pending, not
    claimed since), and the claim removes it."""
    # given
    store = locking_store(ddb, deployed)
    task_id = new_task(store)
    # when / then: written on the pending row, which stays pending
    assert store.note_waiting(task_id, "branch b is being worked on by task t", attempts=None) is True
    row = store.get_row(task_id)
    assert row["waitingFor"] == "branch b is being worked on by task t" and row["status"] == "pending"
    # the claim clears it, and a note from before the claim no longer applies
    claimed = store.claim(task_id, "r1", 60)
    assert claimed.task.waiting_for is None and "waitingFor" not in store.get_row(task_id)
    assert store.note_waiting(task_id, "stale", attempts=None) is False
    assert store.note_waiting(task_id, "stale", attempts=1) is False  # processing under a live lease
    claimed.release("runner shutting down")
    assert store.note_waiting(task_id, "stale", attempts=None) is False  # claimed (and let go) since
    assert store.note_waiting(task_id, "again", attempts=1) is True
    assert store.get_row(task_id)["waitingFor"] == "again"


def test_a_running_claim_says_what_its_run_waits_for_and_none_removes_it(store: TaskRepository) -> None:
    """A run held for a person (APPROVAL=escalate) notes it on its row through its claim
    (``waitingFor``); recording None removes the field and leaves the others; the end removes it."""
    task_id = new_task(store)
    claim = store.claim(task_id, "r1", 60)
    claim.record(waiting_for="a person's answer (y/n/t) to: Allow this action?", base_sha="abc")
    row = store.get_row(task_id)
    assert (row["status"], row["waitingFor"]) == (
        "processing",
        "a person's answer (y/n/t) to: Allow this action?",
    )
    claim.record(waiting_for=None)
    row = store.get_row(task_id)
    assert "waitingFor" not in row and row["baseSha"] == "abc" and row["status"] == "processing"
    claim.record(waiting_for="again")
    claim.fail("nobody answered", kind=ErrorKind.APPROVAL_REQUIRED)
    assert "waitingFor" not in store.get_row(task_id)


def test_a_reclaim_refused_by_the_branch_lock_can_say_what_it_waits_for(ddb: Any, deployed: Any) -> None:
    """A dead runner's row (processing, lease passed) waiting for its branch takes the note; the
    same row under a live lease (reclaimed meanwhile) does not."""
    now = [1000.0]
    store = locking_store(ddb, deployed, now)
    task_id = new_task(store)
    store.claim(task_id, "r-dead", 30)
    now[0] += 60
    assert store.note_waiting(task_id, "branch b is being worked on by task t", attempts=1) is True
    store.claim(task_id, "r2", 30)  # the reclaim went through after all
    assert store.note_waiting(task_id, "stale", attempts=2) is False
    assert "waitingFor" not in store.get_row(task_id)


def test_a_claimed_row_without_created_at_is_listed(store: TaskRepository, backend: Backend) -> None:
    """The same through the repository, on both implementations: the claim stamps createdAt, so
    listings (and the reconciler) see the row from then on."""
    task_id = unique("no-created")
    backend.put_raw({"id": task_id, "title": "t", "branch": unique("feature/x"), "status": "pending"})
    assert task_id not in {t.id for t in store.list_by_status(TaskStatus.PENDING, limit=100_000)}
    store.claim(task_id, "runner-1", 60)
    assert task_id in {t.id for t in store.list_by_status(TaskStatus.PROCESSING, limit=100_000)}


def test_a_claim_at_the_attempts_limit_is_refused_and_the_row_stays_as_it_was(
    store: TaskRepository, backend: Backend
) -> None:
    """The claim's +1 never writes a count no read accepts (38 nines would become 10^38)."""
    task_id = new_task(store)
    backend.set_raw(task_id, attempts=MAX_ATTEMPTS)
    with pytest.raises(InvalidRowError) as refused:
        store.claim(task_id, "r1", 60)
    assert "attempts" in refused.value.reason
    row = store.get_row(task_id)
    assert row["status"] == "pending" and row["attempts"] == MAX_ATTEMPTS and "runnerId" not in row


def test_rows_with_numbers_beyond_38_digits_never_stop_a_read(
    ddb: Any, deployed: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows written with the raw client holding a 39-digit Number (boto3 raises decimal.Inexact on
    it) or attempts 1.5: ``get`` says which field, ``get_row`` shows the exact value, listings
    list every other row (``list_by_status`` skips them with a structured log line), and
    ``fail_unowned`` ends them."""
    store = locking_store(ddb, deployed)
    branch = f"feature/{unique('poison')}"
    good = branch_task(store, branch)
    poisoned = {unique("big"): ("prNumber", {"N": "1" * 39}), unique("half"): ("attempts", {"N": "1.5"})}
    for task_id, (field, value) in poisoned.items():
        now = "2026-11-25T00:00:00.000Z"
        item = {"id": task_id, "title": "T", "branch": branch, "status": "pending", "createdAt": now}
        ddb.put_item(TableName=deployed.table_name, Item={**to_dynamodb(item), field: value})
    big = next(iter(poisoned))
    # then
    for task_id, (field, _) in poisoned.items():
        with pytest.raises(InvalidRowError) as unreadable:
            store.get(task_id)
        assert unreadable.value.reason.startswith(f"invalid task row: {field}: ")
    assert store.get_row(big)["prNumber"] == int("1" * 39)
    with caplog.at_level("WARNING", logger="shared.store"):
        assert [t.id for t in store.list_by_status(TaskStatus.PENDING, branch=branch)] == [good]
    skipped = {r.row_id: r.reason for r in caplog.records if hasattr(r, "row_id")}  # type: ignore[attr-defined]
    assert set(skipped) == set(poisoned) and all(r.startswith("invalid task row: ") for r in skipped.values())
    shown = {
        r.id: r for r in store.list_tasks(TaskStatus.PENDING, limit=100_000) if r.id in {good, *poisoned}
    }
    assert isinstance(shown[good], Task) and all(isinstance(shown[t], InvalidRow) for t in poisoned)
    for task_id in poisoned:
        assert store.fail_unowned(task_id, "unreadable") and store.get_row(task_id)["status"] == "failed"


def test_fail_unowned_ends_a_processing_row_under_a_lease_no_runner_wrote(
    store: TaskRepository, backend: Backend
) -> None:
    """A lease more than LEASE_HORIZON_SECONDS ahead holds nothing (runners' leases are minutes
    long): such a row is failed, where one under a real live lease is left alone."""
    absurd, live = new_task(store), new_task(store)
    backend.set_raw(
        absurd, status="processing", runnerId="nobody", leaseExpiresAt=time.time() + 10 * 365 * 86400
    )
    backend.set_raw(live, status="processing", runnerId="r1", leaseExpiresAt=time.time() + 600)
    assert store.fail_unowned(absurd, "unreadable")
    assert store.get_row(absurd)["status"] == "failed"
    assert not store.fail_unowned(live, "unreadable")
    assert store.get_row(live)["status"] == "processing"


def test_a_processing_row_under_a_lease_no_runner_wrote_can_be_reclaimed(
    store: TaskRepository, backend: Backend
) -> None:
    """A lease more than LEASE_HORIZON_SECONDS ahead holds the row for nobody: a claim takes it."""
    task_id = new_task(store)
    backend.set_raw(task_id, status="processing", runnerId="nobody", leaseExpiresAt=1e30)
    claim = store.claim(task_id, "r1", 60)
    assert claim.attempt == 1 and store.get(task_id).runner_id == "r1"


# -- cancel (aipm task cancel) and live progress ---------------------------------------------------
def test_a_cancel_of_a_pending_task_ends_it_failed_cancelled_at_once(store: TaskRepository) -> None:
    task_id = new_task(store)
    assert store.cancel(task_id) is CancelOutcome.CANCELLED
    row = store.get_row(task_id)
    assert (row["status"], row["errorKind"]) == ("failed", "cancelled")
    assert row["error"] == CANCELLED_ERROR and row["finishedAt"]
    with pytest.raises(ClaimLostError):  # a signal still on its way finds nothing to run
        store.claim(task_id, "r1", 60)


def test_a_cancel_of_a_running_task_refuses_its_next_renewal_and_leaves_the_row_to_its_runner(
    store: TaskRepository,
) -> None:
    # given: a running task
    task_id = new_task(store)
    claim = store.claim(task_id, "r1", 60)
    # when
    assert store.cancel(task_id) is CancelOutcome.REQUESTED
    # then: the row still runs, its runner hears of it at its renewal and can still save and end it
    row = store.get_row(task_id)
    assert row["status"] == "processing" and row["cancelRequestedAt"]
    with pytest.raises(CancelRequestedError):
        claim.renew(60)
    assert issubclass(CancelRequestedError, LeaseLostError)  # code that does not know it stops too
    claim.record(wip_sha="e" * 40, wip_ref=f"kiro-wip/{task_id}")
    claim.fail("cancelled", kind=ErrorKind.CANCELLED)
    row = store.get_row(task_id)
    assert (row["status"], row["errorKind"], row["wipSha"]) == ("failed", "cancelled", "e" * 40)


def test_a_renewal_refused_for_another_reason_is_a_lost_lease_not_a_cancel(store: TaskRepository) -> None:
    task_id = new_task(store)
    claim = store.claim(task_id, "r1", 60)
    store.cancel(task_id)
    with pytest.raises(LeaseLostError) as lost:
        not_mine(store, claim).renew(60)
    assert not isinstance(lost.value, CancelRequestedError)


def test_a_cancel_of_an_ended_task_is_refused_with_a_sentence(store: TaskRepository) -> None:
    done, failed = new_task(store), new_task(store)
    store.claim(done, "r1", 60).complete("a" * 40)
    store.claim(failed, "r1", 60).fail("boom", kind=ErrorKind.AGENT_EXIT)
    with pytest.raises(TransitionError, match=r"already complete \(pushed aaaaaaaaaaaa\): there is nothing"):
        store.cancel(done)
    with pytest.raises(TransitionError, match=r"already ended failed \(agent_exit\)"):
        store.cancel(failed)
    with pytest.raises(TaskNotFoundError):
        store.cancel(unique("nope"))
    assert store.get_row(done)["status"] == "complete" and "cancelRequestedAt" not in store.get_row(done)


def test_a_cancel_of_a_task_whose_runner_died_ends_it_at_once(backend: Backend) -> None:
    now = [1000.0]
    store = backend.store(now)
    task_id = new_task(store)
    store.claim(task_id, "r1", 30)
    now[0] += 31  # r1 never renewed: nobody would see a request
    assert store.cancel(task_id) is CancelOutcome.CANCELLED
    assert store.get_row(task_id)["errorKind"] == "cancelled"


def test_a_retry_and_a_claim_clear_an_old_cancel_request(backend: Backend) -> None:
    store = backend.store()
    task_id = new_task(store)
    claim = store.claim(task_id, "r1", 60)
    store.cancel(task_id)
    claim.fail("cancelled", kind=ErrorKind.CANCELLED)
    store.reset(task_id)
    assert "cancelRequestedAt" not in store.get_row(task_id)
    # the seed's own fix (status back to pending) leaves the field: the next claim clears it
    other = new_task(store)
    backend.set_raw(other, cancelRequestedAt="2026-01-01T00:00:00.000Z")
    fresh = store.claim(other, "r1", 60)
    assert "cancelRequestedAt" not in store.get_row(other)
    fresh.renew(60)


def test_progress_lands_only_while_the_claim_holds_a_live_lease(backend: Backend) -> None:
    now = [1000.0]
    store = backend.store(now)
    task_id = new_task(store)
    claim = store.claim(task_id, "r1", 30)
    claim.progress("step 1\n" + "x" * 5000)
    tail = store.get_row(task_id)["logTail"]
    assert tail.endswith("x" * 100) and len(tail) == LOG_TAIL_CHARS  # bounded
    # the lease runs out: nobody has reclaimed the row yet, but the runner no longer owns its progress
    now[0] += 31
    with pytest.raises(LeaseLostError):
        claim.progress("step 2")
    # another runner reclaims it and writes its own tail; the old claim never writes over it
    new = store.claim(task_id, "r2", 30)
    new.progress("r2 step 1")
    now[0] -= 20  # even with a clock that says the old lease holds
    with pytest.raises(LeaseLostError):
        claim.progress("r1 step 3")
    assert store.get_row(task_id)["logTail"] == "r2 step 1"
