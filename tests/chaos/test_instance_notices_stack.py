"""The instance going away under a runner at work: a scale-in held by the group's warm-stop
lifecycle hook, and a Spot interruption notice. A real runner process on the local stack reads them
from a loopback stand-in of the instance metadata service (IMDSv2) that also serves the group's
``CompleteLifecycleAction`` (moto has none): ``tests/fakes/instance.py``. The runner's metrics are
EMF documents among its log lines, checked against the EMF specification (``tests/emf_spec.py``)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ec2_runner import metrics
from ec2_runner.main import EXIT_INSTANCE_LEAVING
from local.deploy import load_template, translate
from shared import aws
from tests import emf_spec
from tests.chaos.conftest import Chaos, summary
from tests.chaos.test_runner_faults import agent_started
from tests.fakes.instance import InstanceTwin
from tests.fixtures import unique, wait_until
from tests.integration.test_least_privilege import (
    FLEET,
    REGION,
    RUNNER_ROLE,
    Resolver,
    allows,
    grants,
    iam_requests,
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

HOOK = "aipm-warm-stop"


@pytest.fixture
def twin() -> Iterator[InstanceTwin]:
    with InstanceTwin(group=unique("stack") + "-runners", hook=HOOK) as running:
        yield running


def _notice_env(twin: InstanceTwin, calls: Path, log_file: Path) -> dict[str, str]:
    """What the user data writes for the runner on EC2, pointed at the stand-in."""
    return {
        "INSTANCE_METADATA_URL": twin.metadata_url,
        "INSTANCE_NOTICE_POLL_SECONDS": "0.2",
        "AUTOSCALING_GROUP_NAME": twin.group,
        "LIFECYCLE_HOOK_NAME": HOOK,
        "AWS_ENDPOINT_URL_AUTO_SCALING": twin.autoscaling_url,
        "LOG_FILE": str(log_file),
        aws.RECORD_ENV: str(calls),
    }


def _working(chaos: Chaos, task_id: str) -> None:
    """The task's agent has started and streamed output (its checkpoint is written by then)."""
    agent_started(chaos, task_id)
    wait_until(
        lambda: any(
            line.get("task_id") == task_id and str(line.get("message", "")).startswith("agent: ")
            for line in chaos.runner_lines()
        ),
        30,
        what=f"{task_id}'s agent to report progress",
    )


def _parked(chaos: Chaos, task_id: str, row: dict[str, Any]) -> str:
    """The task was given back with its work: pending, its WIP on kiro-wip/<id> with the checkpoint."""
    assert row["status"] == "pending" and "released by runner" in str(row.get("error")), row
    wip = chaos.remote().git.for_each_ref("--format=%(objectname)", f"refs/heads/kiro-wip/{task_id}").strip()
    assert wip and row.get("wipSha") == wip, (wip, row)
    assert "started by pid" in chaos.remote().git.show(f"{wip}:checkpoint.txt")
    return wip


def test_a_scale_in_parks_the_running_task_on_its_wip_then_completes_the_lifecycle_action(
    chaos_factory: Any, twin: InstanceTwin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given: a runner on an instance of the group, working on a long task that checkpoints its work
    chaos: Chaos = chaos_factory("scalein", runner_env={"SHUTDOWN_GRACE_SECONDS": "1", "LEASE_SECONDS": "10"})
    calls, log_file = tmp_path / "calls.jsonl", tmp_path / "runner.log"
    chaos.start_runner(0, **_notice_env(twin, calls, log_file))
    task_id = unique("scalein")
    chaos.put(task_id, f"feature/{task_id}", details="[fake:checkpoint=60]")
    _working(chaos, task_id)
    rows_when_completed: list[dict[str, Any]] = []
    twin.on_complete = lambda: rows_when_completed.append(chaos.store.get_row(task_id))
    # when: the group scales in and holds the instance in Terminating:Wait
    twin.scale_in()
    code = chaos.wait_exit(0, timeout=90)  # the instance is leaving: no restart
    # then: the task went back to pending with its work on its WIP ref before the group was told
    # to go on, once, for this instance, by the runner's role
    line = summary(capsys, "scale-in warm stop", exit_code=code, completed=len(twin.completed))
    assert code == EXIT_INSTANCE_LEAVING, line
    _parked(chaos, task_id, chaos.store.get_row(task_id))
    assert [r["status"] for r in rows_when_completed] == ["pending"], line
    (done,) = twin.completed
    assert (done["AutoScalingGroupName"], done["LifecycleHookName"], done["InstanceId"]) == (
        twin.group,
        HOOK,
        twin.instance_id,
    )
    assert done["LifecycleActionResult"] == "CONTINUE"
    assert not chaos.live_agent_pids([task_id]), line
    # IMDSv2 only: every read carried a session token
    reads = [r for r in twin.requests if r.method == "GET"]
    assert reads and all(r.token_ok for r in reads)
    _granted_to_the_runner_role(calls, twin.group)
    # and the attempt's metrics: an EMF document saying the task was given back, in both outputs
    docs = emf_spec.documents(log_file.read_text().splitlines())
    (parked,) = [d for d in docs if d.get("task_id") == task_id]
    named = emf_spec.metric_names(parked)
    assert {metrics.TASK_DURATION, metrics.AGENT_TIME, metrics.TASKS_RELEASED} <= named
    assert parked["outcome"] == "released"
    assert parked in emf_spec.documents((chaos.logs / "runner-0.log").read_text().splitlines())


def test_a_spot_notice_parks_the_running_task_within_the_two_minutes(
    chaos_factory: Any, twin: InstanceTwin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given: a 30 s grace, more than a Spot notice leaves once the parking is kept aside
    chaos: Chaos = chaos_factory("spot", runner_env={"SHUTDOWN_GRACE_SECONDS": "30", "LEASE_SECONDS": "10"})
    runner_log = chaos.logs / "runner-0.log"
    chaos.start_runner(0, **_notice_env(twin, tmp_path / "calls.jsonl", tmp_path / "runner.log"))
    task_id = unique("spot")
    chaos.put(task_id, f"feature/{task_id}", details="[fake:checkpoint=60]")
    _working(chaos, task_id)
    # when: EC2 will reclaim the instance in 65 s
    twin.interrupt_spot(seconds=65)
    code = chaos.wait_exit(0, timeout=90)  # the instance is leaving: no restart
    # then: parked with its work; the running task got what the notice leaves, not the 30 s
    line = summary(capsys, "spot notice", exit_code=code)
    assert code == EXIT_INSTANCE_LEAVING, line
    _parked(chaos, task_id, chaos.store.get_row(task_id))
    text = runner_log.read_text()
    assert "instance is going away (spot interruption (terminate at" in text, text[-3000:]
    (waited,) = re.findall(r"waiting up to (\d+) s for 1 running task", text)
    assert int(waited) <= 65 - 60
    # no lifecycle hook held this instance: nothing to complete
    assert twin.completed == [] and twin.lifecycle_state == "InService"


def test_a_runner_started_on_an_instance_the_hook_holds_takes_no_task_and_lets_it_go(
    chaos_factory: Any, twin: InstanceTwin, tmp_path: Path
) -> None:
    """A runner restarted (systemd's Restart=always) after its stop, while the group still waits."""
    chaos: Chaos = chaos_factory("held")
    twin.scale_in()
    task_id = unique("held")
    chaos.put(task_id, f"feature/{task_id}", details="[fake:sleep=0.1]")
    chaos.start_runner(0, **_notice_env(twin, tmp_path / "calls.jsonl", tmp_path / "runner.log"))
    assert chaos.wait_exit(0, timeout=60) == EXIT_INSTANCE_LEAVING
    row = chaos.store.get_row(task_id)
    assert row["status"] == "pending" and not row.get("attempts"), row
    assert len(twin.completed) == 1


def test_the_runner_s_emf_metrics_name_durations_pickup_and_failures_by_error_kind(
    chaos_factory: Any, tmp_path: Path
) -> None:
    # given: a runner writing its log file too, as on EC2
    chaos: Chaos = chaos_factory("emf")
    log_file = tmp_path / "runner.log"
    chaos.start_runner(0, LOG_FILE=str(log_file))
    done, bad = unique("emf-done"), unique("emf-bad")
    # when: one task completes and one fails (the agent exits 1)
    chaos.put(done, f"feature/{done}", details="[fake:sleep=0.1]")
    chaos.put(bad, f"feature/{bad}", details="[fake:exit=1]")
    rows = chaos.wait_final([done, bad], timeout=60)
    outcome = (rows[done]["status"], rows[bad]["status"], rows[bad]["errorKind"])
    assert outcome == ("complete", "failed", "agent_exit")

    # then: every EMF document is valid EMF in the stack's namespace (aipm on AWS), service aipm-runner
    def documents() -> list[dict[str, Any]] | None:
        found = emf_spec.documents(log_file.read_text().splitlines())
        return found if len(found) >= 3 else None  # the two attempts' and the failure's

    docs = wait_until(documents, 10, what="the EMF documents in the log file")
    namespace = chaos.stack.runner_env(0).get("POWERTOOLS_METRICS_NAMESPACE", metrics.DEFAULT_NAMESPACE)
    for doc in docs:
        (directive,) = doc["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == namespace and doc["service"] == "aipm-runner"
    (completed,) = [d for d in docs if d.get("task_id") == done]
    assert emf_spec.metric_names(completed) == {
        metrics.TASK_DURATION,
        metrics.AGENT_TIME,
        metrics.PUSH_TIME,
        metrics.PICKUP_LATENCY,
        metrics.TASKS_COMPLETED,
    }
    units = {m["Name"]: m["Unit"] for m in completed["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units[metrics.PUSH_TIME] == units[metrics.PICKUP_LATENCY] == "Milliseconds"
    assert emf_spec.dimensions(completed) == [["service"]]
    (failure,) = [
        d for d in docs if d.get("task_id") == bad and metrics.TASK_FAILURES in emf_spec.metric_names(d)
    ]
    assert [sorted(d) for d in emf_spec.dimensions(failure)] == [["errorKind", "service"]] and failure[
        "errorKind"
    ] == "agent_exit"
    assert emf_spec.values(failure, metrics.TASK_FAILURES) == [1.0]
    # the log lines around them are the runner's JSON lines, task ids on them
    lines = [json.loads(raw) for raw in log_file.read_text().splitlines()]
    claimed = [line for line in lines if str(line.get("message", "")).startswith("claimed")]
    assert done in {line.get("task_id") for line in claimed}


def _granted_to_the_runner_role(calls: Path, group: str) -> None:
    """The runner's CompleteLifecycleAction, as recorded, is allowed by the RunnerRole that
    template.yaml gives a stack whose group this is (test_least_privilege lists the grant as NEEDED
    and points here)."""
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    (call,) = [c for c in recorded if c["service"] == "autoscaling"]
    assert (call["component"], call["operation"]) == ("runner", "CompleteLifecycleAction")
    cfn = translate(load_template(), REGION, {**FLEET, "TableName": "t"})
    stack_name = group.removesuffix("-runners")
    # the runner role's statements on resources this stack deploys need physical names; none of
    # them is the autoscaling one, so placeholders do
    physical = {name: f"placeholder-{name}" for name in cfn["Resources"]}
    physical["TaskQueue"] = "https://sqs.us-east-1.amazonaws.com/123456789012/placeholder"
    resolver = Resolver(cfn, physical, {**FLEET, "TableName": "t"}, stack_name=stack_name)
    granted = [g for g in grants(cfn, resolver) if g.principal == RUNNER_ROLE]
    for action, resource in iam_requests(call, "prod"):
        assert any(allows(g, action, resource) for g in granted), (action, resource)
    # and only that group: another stack's runners are not this role's to let go
    other = {**call, "resources": {"AutoScalingGroupName": "another-stack-runners"}}
    for action, resource in iam_requests(other, "prod"):
        assert not any(allows(g, action, resource) for g in granted), (action, resource)
