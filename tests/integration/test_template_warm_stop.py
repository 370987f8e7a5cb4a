"""template.yaml's warm stop, Spot and runner metrics, read after SAM's transform as CloudFormation
would create them (tests/integration/test_template_ops.py's ``Stack``): the lifecycle hook the
runner completes, the names the user data gives the runner for it, the Spot option, and the
dashboard's runner widgets named as the runner's EMF metrics are."""

from __future__ import annotations

import json
import re

import pytest

from ec2_runner import metrics
from ec2_runner.config import RunnerSettings
from ec2_runner.main import EXIT_INSTANCE_LEAVING
from tests.conftest import ROOT
from tests.integration.bootstrap_support import parse_unit, user_data_template
from tests.integration.test_template_ops import FLEET, Stack, _cfn, _dashboard

pytestmark = pytest.mark.integration


def _runner_env_lines() -> dict[str, str]:
    """runner.env as the user data writes it (before Fn::Sub)."""
    text = user_data_template()
    body = text.split("cat > /etc/aipm/runner.env <<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    return dict(line.split("=", 1) for line in body.splitlines())


def test_the_group_holds_a_leaving_runner_until_it_completes_the_hook_the_user_data_names() -> None:
    stack = Stack(_cfn(), FLEET)
    (hook,) = stack.of_type("AWS::AutoScaling::LifecycleHook").values()
    assert hook["AutoScalingGroupName"] == {"Ref": "RunnerGroup"}
    assert hook["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    assert hook["DefaultResult"] == "CONTINUE"  # a runner that never completes is let go anyway
    env = _runner_env_lines()
    assert env["LIFECYCLE_HOOK_NAME"] == hook["LifecycleHookName"]
    group = stack.resources["RunnerGroup"]["Properties"]
    assert env["AUTOSCALING_GROUP_NAME"] == group["AutoScalingGroupName"]["Fn::Sub"]
    assert env["INSTANCE_METADATA_URL"] == "http://169.254.169.254"
    # the wait covers the longest warm stop systemd allows the runner
    unit = parse_unit((ROOT / "ec2_runner" / "aipm-runner.service").read_text())
    assert hook["HeartbeatTimeout"] > float(unit.service["TimeoutStopSec"][-1])


def test_the_runner_role_may_complete_the_lifecycle_action_of_its_own_group_only() -> None:
    stack = Stack(_cfn(), FLEET)
    statements = [
        st
        for policy in stack.resources["RunnerRole"]["Properties"]["Policies"]
        for st in policy["PolicyDocument"]["Statement"]
    ]
    (complete,) = [
        st for st in statements if "autoscaling:CompleteLifecycleAction" in json.dumps(st["Action"])
    ]
    group = stack.resources["RunnerGroup"]["Properties"]["AutoScalingGroupName"]["Fn::Sub"]
    assert complete["Resource"]["Fn::Sub"].endswith(f":autoScalingGroup:*:autoScalingGroupName/{group}")


@pytest.mark.parametrize(("refine", "on_demand"), [("true", 1), ("false", 0)])
def test_spot_runners_come_from_a_mixed_instances_policy_with_the_refine_runner_on_demand(
    refine: str, on_demand: int
) -> None:
    on_demand_stack = Stack(_cfn(), FLEET | {"RefineEnabled": refine})
    plain = on_demand_stack.resources["RunnerGroup"]["Properties"]
    assert plain["LaunchTemplate"]["LaunchTemplateId"] == {"Ref": "RunnerLaunchTemplate"}
    assert plain["MixedInstancesPolicy"] is None and plain["CapacityRebalance"] is False

    spot = Stack(_cfn(), FLEET | {"RefineEnabled": refine, "RunnerSpot": "true"})
    props = spot.resources["RunnerGroup"]["Properties"]
    assert props["LaunchTemplate"] is None  # CloudFormation takes one or the other
    mixed = props["MixedInstancesPolicy"]
    assert mixed["LaunchTemplate"]["LaunchTemplateSpecification"] == plain["LaunchTemplate"]
    distribution = mixed["InstancesDistribution"]
    assert distribution["OnDemandBaseCapacity"] == on_demand
    assert distribution["OnDemandPercentageAboveBaseCapacity"] == 0
    assert distribution["SpotAllocationStrategy"] == "price-capacity-optimized"
    assert props["CapacityRebalance"] is True


def test_the_dashboard_draws_the_runner_s_emf_metrics_by_their_names() -> None:
    body = _dashboard(Stack(_cfn(), FLEET))
    drawn = {
        (m[0], m[1], m[3])
        for w in body["widgets"]
        if w["type"] == "metric"
        for m in w["properties"]["metrics"]
        if isinstance(m[0], str)
    }
    for name in (
        metrics.TASK_DURATION,
        metrics.AGENT_TIME,
        metrics.PUSH_TIME,
        metrics.PICKUP_LATENCY,
        metrics.TASKS_COMPLETED,
        metrics.TASKS_RELEASED,
    ):
        assert (metrics.DEFAULT_NAMESPACE, name, metrics.SERVICE) in drawn, name
    searches = [
        m[0]["expression"]
        for w in body["widgets"]
        if w["type"] == "metric"
        for m in w["properties"]["metrics"]
        if isinstance(m[0], dict)
    ]
    failures = [e for e in searches if metrics.TASK_FAILURES in e]
    assert failures and re.search(r"\{aipm,errorKind,service\}", failures[0])


def test_the_runner_s_log_file_setting_is_one_the_runner_reads() -> None:
    env = _runner_env_lines()
    aliases = {
        f.validation_alias
        for f in RunnerSettings.model_fields.values()
        if isinstance(f.validation_alias, str)
    }
    for name in ("LOG_FILE", "INSTANCE_METADATA_URL", "AUTOSCALING_GROUP_NAME", "LIFECYCLE_HOOK_NAME"):
        assert name in env and name in aliases, name


def test_a_runner_stopped_for_its_leaving_instance_is_not_restarted() -> None:
    """The runner's exit after a stop notice is the unit's RestartPreventExitStatus: systemd's
    Restart=always would otherwise start it again, to find the same notice and take no task."""
    unit = parse_unit((ROOT / "ec2_runner" / "aipm-runner.service").read_text())
    assert unit.service["Restart"][-1] == "always"
    assert unit.service["RestartPreventExitStatus"][-1].split() == [str(EXIT_INSTANCE_LEAVING)]
