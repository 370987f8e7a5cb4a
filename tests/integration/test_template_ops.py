"""template.yaml's operations: alarms and where they notify, log retention on every log group, the
WebSocket stage's access log, the dashboard, and the runner fleet's backlog scaling.

CloudWatch, Logs and Auto Scaling are not in the local stack (moto creates tables and queues only),
so the template itself is read, after SAM's transform, as CloudFormation would: its conditions and
``Fn::If`` resolved for given parameters, metric math evaluated on sample values.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from local.deploy import load_template, references, translate

pytestmark = pytest.mark.integration

FUNCTIONS = {
    "DispatchFunction",
    "DeadLetterFunction",
    "ReconcilerFunction",
    "WsAuthorizerFunction",
    "WsConnectFunction",
    "WsDisconnectFunction",
    "WsRelayFunction",
}
FLEET = {
    "RunnerVpcId": "vpc-0123456789abcdef0",
    "RunnerSubnetIds": "subnet-0123456789abcdef0",
    "RunnerPackageUri": "s3://aipm-artifacts/runner/" + "ab" * 32 + "/",
    "GitRemoteUrl": "https://git.example.com/team/repo.git",
    "GitTokenSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:git-AbCdEf",
    "AgentCredentialSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:kiro-AbCdEf",
}
_SUB = re.compile(r"\$\{([^}!]+)\}")


def _cfn() -> dict[str, Any]:
    return translate(load_template(), "us-east-1", {"TableName": "x", "NamePrefix": "x"})


class Stack:
    """The translated template as CloudFormation would create it for ``parameters``: conditions
    evaluated, ``Fn::If`` branches chosen, resources whose condition is false left out."""

    def __init__(self, cfn: dict[str, Any], parameters: dict[str, str] | None = None) -> None:
        self.cfn = cfn
        declared = cfn["Parameters"]
        self.parameters = {k: str(v.get("Default", "")) for k, v in declared.items()} | dict(parameters or {})
        self.conditions: dict[str, bool] = {}
        self.resources = {
            name: self.resolve(res)
            for name, res in cfn["Resources"].items()
            if "Condition" not in res or self.condition(res["Condition"])
        }

    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            self.conditions[name] = bool(self._evaluate(self.cfn["Conditions"][name]))
        return self.conditions[name]

    def _evaluate(self, node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        ((fn, arg),) = node.items()
        if fn == "Ref":
            return self.parameters[arg]
        if fn == "Condition":
            return self.condition(arg)
        if fn == "Fn::Equals":
            return self._evaluate(arg[0]) == self._evaluate(arg[1])
        if fn == "Fn::Not":
            return not self._evaluate(arg[0])
        if fn == "Fn::And":
            return all(self._evaluate(a) for a in arg)
        if fn == "Fn::Or":
            return any(self._evaluate(a) for a in arg)
        if fn == "Fn::Join":  # a CommaDelimitedList joins back to the string it was given as
            return arg[0].join([self._evaluate(arg[1])])
        raise AssertionError(f"condition function {fn} is not modelled here")

    def resolve(self, node: Any) -> Any:
        """``node`` with every ``Fn::If`` replaced by its chosen branch (``AWS::NoValue`` as None)."""
        if isinstance(node, list):
            return [self.resolve(n) for n in node]
        if not isinstance(node, dict):
            return node
        if set(node) == {"Fn::If"}:
            name, yes, no = node["Fn::If"]
            return self.resolve(yes if self.condition(name) else no)
        if node == {"Ref": "AWS::NoValue"}:
            return None
        return {k: self.resolve(v) for k, v in node.items()}

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: v["Properties"] for k, v in self.resources.items() if v["Type"] == kind}


def _metric_alarms(stack: Stack) -> dict[str, dict[str, Any]]:
    return {k: p for k, p in stack.of_type("AWS::CloudWatch::Alarm").items() if "MetricName" in p}


def _dimension(alarm: dict[str, Any], name: str) -> Any:
    (dim,) = [d["Value"] for d in alarm["Dimensions"] if d["Name"] == name]
    return dim


def _metric_math(expression: str, **values: float) -> float:
    """A CloudWatch metric math expression of the few forms the template uses, on one sample."""
    text = expression.replace(" AND ", " and ").replace(" OR ", " or ")
    return float(eval(text, {"IF": lambda c, a, b: a if c else b, "__builtins__": {}}, values))


# -- alarms --------------------------------------------------------------------------------------
def test_each_function_has_an_errors_and_a_throttles_alarm() -> None:
    stack = Stack(_cfn())
    functions = set(stack.of_type("AWS::Lambda::Function"))
    assert functions == FUNCTIONS
    watched = {
        (_dimension(a, "FunctionName")["Ref"], a["MetricName"])
        for a in _metric_alarms(stack).values()
        if a["Namespace"] == "AWS/Lambda" and a["MetricName"] in ("Errors", "Throttles")
    }
    assert watched == {(f, m) for f in functions for m in ("Errors", "Throttles")}
    for alarm in _metric_alarms(stack).values():
        if alarm["MetricName"] in ("Errors", "Throttles"):
            # any failed or throttled invocation in five minutes, and quiet when the function is idle
            assert (alarm["Statistic"], alarm["Threshold"], alarm["ComparisonOperator"]) == (
                "Sum",
                0,
                "GreaterThanThreshold",
            )
            assert alarm["TreatMissingData"] == "notBreaching"


def test_the_queue_and_stream_alarms_watch_the_right_resources_at_their_thresholds() -> None:
    """The DLQ holding anything; the oldest task signal's age (no runner is working) and the stream's
    iterator age (dispatch falls behind), their thresholds parameters."""
    stack = Stack(_cfn())
    by_metric = {(a["Namespace"], a["MetricName"]): a for a in _metric_alarms(stack).values()}

    dlq = by_metric["AWS/SQS", "ApproximateNumberOfMessagesVisible"]
    assert _dimension(dlq, "QueueName") == {"Fn::GetAtt": ["TaskDeadLetterQueue", "QueueName"]}
    assert (dlq["Threshold"], dlq["ComparisonOperator"]) == (0, "GreaterThanThreshold")

    oldest = by_metric["AWS/SQS", "ApproximateAgeOfOldestMessage"]
    assert _dimension(oldest, "QueueName") == {"Fn::GetAtt": ["TaskQueue", "QueueName"]}
    assert oldest["Threshold"] == {"Ref": "OldestTaskAgeAlarmSeconds"}
    assert oldest["Statistic"] == "Maximum"

    lag = by_metric["AWS/Lambda", "IteratorAge"]
    assert _dimension(lag, "FunctionName") == {"Ref": "DispatchFunction"}
    assert lag["Threshold"] == {"Ref": "IteratorAgeAlarmMilliseconds"}
    params = stack.cfn["Parameters"]
    assert (
        params["OldestTaskAgeAlarmSeconds"]["Type"]
        == params["IteratorAgeAlarmMilliseconds"]["Type"]
        == "Number"
    )


@pytest.mark.parametrize(
    ("parameters", "actions"),
    [
        ({}, None),
        (
            {"AlarmTopicArn": "arn:aws:sns:us-east-1:123456789012:ops"},
            ["arn:aws:sns:us-east-1:123456789012:ops"],
        ),
        ({"AlarmEmail": "ops@example.com"}, [{"Ref": "AlarmEmailTopic"}]),
        (
            {"AlarmTopicArn": "arn:aws:sns:us-east-1:123456789012:ops", "AlarmEmail": "ops@example.com"},
            ["arn:aws:sns:us-east-1:123456789012:ops"],
        ),
    ],
    ids=["nobody", "the-topic", "the-email-topic", "the-topic-wins"],
)
def test_every_alarm_notifies_the_topic_or_the_email_or_nobody(
    parameters: dict[str, str], actions: list[Any] | None
) -> None:
    stack = Stack(_cfn(), parameters)
    alarms = _metric_alarms(stack)
    assert len(alarms) == 3 + 2 * len(FUNCTIONS)
    for name, alarm in alarms.items():
        assert alarm.get("AlarmActions") == (
            [{"Ref": "AlarmTopicArn"}] if actions and isinstance(actions[0], str) else actions
        ), name
    topic = stack.resources.get("AlarmEmailTopic")
    if actions == [{"Ref": "AlarmEmailTopic"}]:
        assert topic is not None
        assert topic["Properties"]["Subscription"] == [
            {"Protocol": "email", "Endpoint": {"Ref": "AlarmEmail"}}
        ]
    else:
        assert topic is None


# -- logs ----------------------------------------------------------------------------------------
def test_every_function_logs_to_a_group_of_its_own_kept_for_the_retention_parameter() -> None:
    stack = Stack(_cfn(), FLEET)
    groups = stack.of_type("AWS::Logs::LogGroup")
    targets = {}
    for name, function in stack.of_type("AWS::Lambda::Function").items():
        ref = function["LoggingConfig"]["LogGroup"]["Ref"]
        assert ref in groups, name
        targets[name] = ref
    assert len(set(targets.values())) == len(FUNCTIONS)
    # every log group of the stack, the runners' and the stage's included
    assert {"RunnerLogGroup", "WebSocketAccessLogGroup"} | set(targets.values()) == set(groups)
    for name, group in groups.items():
        assert group["RetentionInDays"] == {"Ref": "LogRetentionDays"}, name
    allowed = stack.cfn["Parameters"]["LogRetentionDays"]["AllowedValues"]
    assert stack.cfn["Parameters"]["LogRetentionDays"]["Default"] in allowed and 3653 in allowed


def test_the_websocket_stage_writes_a_json_access_line_without_the_query_string() -> None:
    stack = Stack(_cfn())
    (stage,) = stack.of_type("AWS::ApiGatewayV2::Stage").values()
    logs = stage["AccessLogSettings"]
    assert logs["DestinationArn"] == {"Fn::GetAtt": ["WebSocketAccessLogGroup", "Arn"]}
    line = json.loads(logs["Format"])
    assert {"requestId", "eventType", "routeKey", "connectionId", "status"} <= set(line)
    assert all(v.startswith("$context.") for v in line.values())
    # the browser's token travels in the query string: it must never reach a log line
    assert "querystring" not in logs["Format"].lower() and "token" not in logs["Format"].lower()


@pytest.mark.parametrize("set_role", ["true", "false"])
def test_the_stage_waits_for_the_accounts_logging_role_when_the_stack_sets_it(set_role: str) -> None:
    """A WebSocket stage with access logs fails without the account's API Gateway CloudWatch role:
    with SetApiGatewayLogsRole the stack sets it (kept on delete, so no other stack loses it) before
    the stage; without it the stack makes neither."""
    stack = Stack(_cfn(), {"SetApiGatewayLogsRole": set_role})
    (stage,) = [k for k, v in stack.resources.items() if v["Type"] == "AWS::ApiGatewayV2::Stage"]
    if set_role == "true":
        account, role = stack.resources["ApiGatewayAccount"], stack.resources["ApiGatewayLogsRole"]
        assert account["Properties"]["CloudWatchRoleArn"] == {"Fn::GetAtt": ["ApiGatewayLogsRole", "Arn"]}
        assert account["DeletionPolicy"] == role["DeletionPolicy"] == "Retain"
        assert "ApiGatewayAccount" in references(stack.resources[stage])
    else:
        assert "ApiGatewayAccount" not in stack.resources and "ApiGatewayLogsRole" not in stack.resources
        assert "ApiGatewayAccount" not in references(stack.resources[stage])


# -- dashboard -----------------------------------------------------------------------------------
def _dashboard(stack: Stack) -> dict[str, Any]:
    """The dashboard's body as CloudFormation's Fn::Sub renders it, names standing for values."""
    (props,) = stack.of_type("AWS::CloudWatch::Dashboard").values()
    text, variables = props["DashboardBody"]["Fn::Sub"]
    names = set(stack.resources) | set(stack.parameters) | {"AWS::Region"}
    rendered = {k: v["Ref"] if isinstance(v, dict) else v for k, v in variables.items()}

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in rendered:
            return str(rendered[name])
        assert name.split(".")[0] in names, f"the dashboard names {name}, which this stack does not have"
        return stack.parameters.get(name, name)

    return dict(json.loads(_SUB.sub(value, text)))


@pytest.mark.parametrize("parameters", [{}, FLEET], ids=["no-fleet", "fleet"])
def test_the_dashboard_shows_the_backlog_the_stream_every_function_and_the_fleet(
    parameters: dict[str, str],
) -> None:
    stack = Stack(_cfn(), parameters)
    body = _dashboard(stack)
    metrics = [
        tuple(m[:4]) for w in body["widgets"] if w["type"] == "metric" for m in w["properties"]["metrics"]
    ]
    assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", "TaskQueue.QueueName") in metrics
    assert ("AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", "TaskQueue.QueueName") in metrics
    dlq = ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", "TaskDeadLetterQueue.QueueName")
    assert dlq in metrics
    assert ("AWS/Lambda", "IteratorAge", "FunctionName", "DispatchFunction") in metrics
    for function in FUNCTIONS:
        for metric in ("Errors", "Throttles"):
            assert ("AWS/Lambda", metric, "FunctionName", function) in metrics
    group = "RunnerGroup" if parameters else "none"  # a stack without the fleet draws an empty graph
    assert ("AWS/AutoScaling", "GroupInServiceInstances", "AutoScalingGroupName", group) in metrics
    (alarms,) = [w for w in body["widgets"] if w["type"] == "alarm"]
    assert all(
        a.endswith(".Arn") and a[: -len(".Arn")] in stack.resources for a in alarms["properties"]["alarms"]
    )


# -- scaling -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("refine", "min_size"), [("true", "1"), ("false", "0")])
def test_the_fleet_keeps_a_runner_for_refine_and_its_desired_count_belongs_to_scaling(
    refine: str, min_size: str
) -> None:
    stack = Stack(_cfn(), FLEET | {"RefineEnabled": refine})
    group = stack.resources["RunnerGroup"]
    props = group["Properties"]
    assert props["MinSize"] == min_size and props["MaxSize"] == {"Ref": "RunnerMaxCapacity"}
    # a fixed desired count would be reset by every update
    assert "DesiredCapacity" not in props and "RunnerDesiredCapacity" not in stack.cfn["Parameters"]
    rolling = group["UpdatePolicy"]["AutoScalingRollingUpdate"]
    assert rolling["MaxBatchSize"] == 1 and rolling["MinInstancesInService"] == 0
    (collected,) = props["MetricsCollection"]
    assert "GroupInServiceInstances" in collected["Metrics"]


def test_the_backlog_policy_holds_tasks_per_in_service_runner_at_the_target() -> None:
    stack = Stack(_cfn(), FLEET)
    (policy,) = [
        p
        for p in stack.of_type("AWS::AutoScaling::ScalingPolicy").values()
        if "TargetTrackingConfiguration" in p
    ]
    assert policy["AutoScalingGroupName"] == {"Ref": "RunnerGroup"}
    tracking = policy["TargetTrackingConfiguration"]
    assert tracking["TargetValue"] == {"Ref": "RunnerTasksPerInstance"}
    metrics = {m["Id"]: m for m in tracking["CustomizedMetricSpecification"]["Metrics"]}
    (returned,) = [m for m in metrics.values() if m["ReturnData"]]
    stats = {i: m["MetricStat"]["Metric"] for i, m in metrics.items() if "MetricStat" in m}
    queue = {"Name": "QueueName", "Value": {"Fn::GetAtt": ["TaskQueue", "QueueName"]}}
    assert stats["waiting"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert stats["inflight"]["MetricName"] == "ApproximateNumberOfMessagesNotVisible"
    assert stats["waiting"]["Dimensions"] == stats["inflight"]["Dimensions"] == [queue]
    assert stats["runners"]["MetricName"] == "GroupInServiceInstances"
    assert stats["runners"]["Dimensions"] == [
        {"Name": "AutoScalingGroupName", "Value": {"Ref": "RunnerGroup"}}
    ]

    def per_runner(waiting: int, inflight: int, runners: int) -> float:
        return _metric_math(returned["Expression"], waiting=waiting, inflight=inflight, runners=runners)

    assert per_runner(waiting=3, inflight=4, runners=2) == 3.5  # tasks wait: above a target of 2
    # busy runners hold their tasks out of sight: they count, or the policy would scale them in
    assert per_runner(waiting=0, inflight=4, runners=2) == 2
    assert per_runner(waiting=5, inflight=0, runners=0) == 5  # no division by zero mid-replacement


@pytest.mark.parametrize("refine", ["true", "false"])
def test_an_empty_fleet_wakes_when_a_task_waits_unless_refine_keeps_a_runner(refine: str) -> None:
    stack = Stack(_cfn(), FLEET | {"RefineEnabled": refine})
    if refine == "true":  # MinSize 1: target tracking has a runner to multiply
        assert "RunnerWakeAlarm" not in stack.resources and "RunnerWakeScaling" not in stack.resources
        return
    wake = stack.resources["RunnerWakeScaling"]["Properties"]
    assert (wake["AdjustmentType"], wake["StepAdjustments"]) == (
        "ExactCapacity",
        [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}],
    )
    alarm = stack.resources["RunnerWakeAlarm"]["Properties"]
    assert alarm["AlarmActions"] == [{"Ref": "RunnerWakeScaling"}]
    (expression,) = [m["Expression"] for m in alarm["Metrics"] if m["ReturnData"]]

    def breaching(waiting: int, runners: int) -> bool:
        return _metric_math(expression, waiting=waiting, runners=runners) > alarm["Threshold"]

    assert breaching(waiting=1, runners=0)
    assert not breaching(waiting=0, runners=0) and not breaching(waiting=3, runners=1)


def test_a_stack_without_the_fleet_refers_to_no_fleet_resource() -> None:
    """Deployable without a VPC: nothing created then names a resource that is not."""
    cfn = _cfn()
    stack = Stack(cfn)
    assert "RunnerGroup" not in stack.resources and "RunnerBacklogScaling" not in stack.resources
    absent = set(cfn["Resources"]) - set(stack.resources)
    for name, resource in stack.resources.items():
        assert not references(resource) & absent, name
    for name, output in cfn["Outputs"].items():
        if "Condition" not in output or stack.condition(output["Condition"]):
            assert not references(stack.resolve(output)) & absent, name
