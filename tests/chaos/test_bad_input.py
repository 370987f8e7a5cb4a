"""The malformed corpus in tests/data: stream records to the dispatch handler, bodies to the task
queue, rows to the table. Nothing crashes, each one leaves a clear log line or error field, and a
good task inserted after them still completes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from shared.models import from_dynamodb
from tests.chaos.conftest import Chaos, summary
from tests.fixtures import lambdas_to_current_stdout, unique, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]

DATA = Path(__file__).resolve().parent.parent / "data"


def corpus(name: str) -> list[dict]:
    return json.loads((DATA / f"{name}.json").read_text())


def queue_depth(chaos: Chaos) -> int:
    attrs = chaos.sqs.get_queue_attributes(
        QueueUrl=chaos.stack.config.task_queue_url,  # type: ignore[union-attr]
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def test_malformed_corpus_is_logged_or_failed_and_the_queue_keeps_flowing(
    chaos_factory: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    with lambdas_to_current_stdout():
        _malformed_corpus(chaos_factory, capfd)


def _malformed_corpus(chaos_factory: Any, capfd: pytest.CaptureFixture[str]) -> None:
    stream, bodies, rows = (
        corpus("malformed_stream_records"),
        corpus("malformed_sqs_bodies"),
        corpus("malformed_rows"),
    )
    assert len(stream) + len(bodies) + len(rows) >= 50
    chaos: Chaos = chaos_factory("badinput", runner_env={"LEASE_SECONDS": "10"})
    chaos.start_runner(0)
    config = chaos.stack.config
    assert config

    # 1. stream records, one batch each and all in one batch, to the real dispatch handler
    dispatch = chaos.stack.functions["dispatch"]
    capfd.readouterr()
    crashed_handler = []
    for case in stream:
        try:
            result = dispatch.invoke({"Records": [case["record"]]})
        except Exception as e:  # a whole batch failing would block the shard behind it
            crashed_handler.append((case["case"], type(e).__name__))
            continue
        assert not result.get("batchItemFailures"), f"{case['case']}: {result}"
    assert not crashed_handler, f"stream records that failed the batch: {crashed_handler}"
    result = dispatch.invoke({"Records": [c["record"] for c in stream]})
    assert not result.get("batchItemFailures"), result
    out = capfd.readouterr().out
    lines = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    skipped = {ln.get("record_id") for ln in lines if ln.get("message") == "skipping malformed stream record"}
    unexplained = [
        c["case"] for c in stream if c["expect"] == "skipped" and c["record"]["eventID"] not in skipped
    ]
    assert not unexplained, f"malformed stream records without a log line: {unexplained}"
    signalled = sum(1 for ln in lines if ln.get("message") == "signalled runners")
    assert signalled == 2 * sum(1 for c in stream if c["expect"] == "signal"), out[-2000:]

    # 2. bodies straight onto the task queue
    sent = {}
    for case in bodies:
        sent[
            chaos.sqs.send_message(QueueUrl=config.task_queue_url, MessageBody=case["body"] or " ")[
                "MessageId"
            ]
        ] = case

    # 3. rows straight into the table (the stream signals the pending ones)
    expected: dict[str, dict] = {}
    rejected = 0
    for case in rows:
        task_id = unique("bad")
        now = "2026-11-25T00:00:00.000Z"
        item = {
            "id": {"S": task_id},
            "title": {"S": "Malformed"},
            "details": {"S": "d"},
            "branch": {"S": f"feature/{task_id}"},
            "status": {"S": "pending"},
            "createdAt": {"S": now},
            "updatedAt": {"S": now},
            **case["item"],
        }
        if "details_bytes" in case:
            item["details"] = {"S": "x" * case["details_bytes"]}
        for key in case.get("drop", []):
            item.pop(key, None)
        try:
            chaos.store._ddb.put_item(TableName=config.table_name, Item=item)
        except Exception as e:  # the table itself refuses it: a clear error at the source
            assert case["expect"] == "rejected", f"{case['case']}: {e}"
            rejected += 1
            continue
        assert case["expect"] != "rejected", case["case"]
        expected[task_id] = case

    # then: a good task after all of them completes
    good = unique("good")
    chaos.put(good, f"feature/{good}", details="[fake:sleep=0.2]")
    to_end = [t for t, c in expected.items() if c["expect"] == "failed"] + [good]
    final = chaos.wait_final(to_end, timeout=90)
    wait_until(lambda: queue_depth(chaos) == 0, 30, what="the task queue to drain")
    time.sleep(0.5)

    runner_lines = chaos.runner_lines()
    text = "\n".join(json.dumps(ln) for ln in runner_lines)
    body_unexplained = []
    for message_id, case in sent.items():
        if case.get("unknown"):
            task_id = json.loads(case["body"])["taskId"]
            ok = any(
                ln.get("task_id") == task_id and "no such task" in str(ln.get("message"))
                for ln in runner_lines
            )
        else:
            ok = message_id in text and "is not a task signal" in text
        if not ok:
            body_unexplained.append(case["case"])
    row_problems = []
    for task_id, case in expected.items():
        row = chaos.store.get_row(task_id)
        if case["expect"] == "failed":
            if row["status"] != "failed" or case["error"] not in (row.get("error") or ""):
                row_problems.append((case["case"], row["status"], row.get("error")))
        else:
            written = from_dynamodb({"s": case["item"]["status"]})["s"] if "status" in case["item"] else None
            if row.get("status") != written or row.get("runnerId"):
                row_problems.append((case["case"], row.get("status"), "touched"))
    crashed = chaos.procs[0].poll() is not None
    line = summary(
        capfd,
        "malformed corpus",
        tasks=len(stream) + len(bodies) + len(rows) + 1,
        kills=0,
        lost=int(final[good]["status"] != "complete"),
        double_owned=0,
        stream=len(stream),
        bodies=len(bodies),
        rows=len(rows),
        rejected_by_table=rejected,
        unexplained=len(body_unexplained) + len(row_problems),
        duration=chaos.elapsed(),
    )
    assert not crashed, line
    assert not body_unexplained, f"{line}; bodies without a log line: {body_unexplained}"
    assert not row_problems, f"{line}; {row_problems}"
    assert final[good]["status"] == "complete", f"{line}; {final[good].get('error')}"
    assert not Path("/tmp/chaos-pwned").exists()


def test_stream_records_with_bad_numbers_are_skipped_without_failing_the_batch(chaos_factory: Any) -> None:
    known = [c for c in corpus("malformed_stream_records") if "regression" in c]
    assert known
    chaos: Chaos = chaos_factory("knownbad")
    for case in known:
        result = chaos.stack.functions["dispatch"].invoke({"Records": [case["record"]]})
        assert not result.get("batchItemFailures"), case["case"]
