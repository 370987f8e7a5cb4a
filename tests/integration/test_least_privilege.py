"""Least privilege, proven without AWS: moto enforces no IAM, so this test is how the template's roles
stay right. Real flows run on the local stack with every AWS call recorded (``shared.aws``'s
``AIPM_RECORD_AWS_CALLS``: component, service, operation, resources); each call is then checked
against the IAM policies ``template.yaml`` gives that component's role, after SAM's own transform,
both ways: every call is granted, and every grant is used here or listed in ``NEEDED`` with a reason.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from local.deploy import load_template, translate
from shared import aws
from shared import frames as fr
from shared.models import utc_now_iso
from tests import prefork
from tests.conftest import EVENTS
from tests.fixtures import FAKE_AGENT_COMMAND, FAKE_KIRO, unique, wait_until
from tests.integration.refine_support import Browser

pytestmark = pytest.mark.timeout(240)

REGION, ACCOUNT = "us-east-1", "123456789012"  # moto's default account
API_ID = "wsapi00001"  # the WebSocket API moto cannot create: its id in the ARNs on both sides
GROUP_UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"  # the runners' Auto Scaling group's id in its ARN
# what the runner, the CLI and each function run under; functions by their folder name
RUNNER_ROLE, CLI_POLICY = "RunnerRole", "OperatorPolicy"
GIT_TOKEN_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:git-token-AbCdEf"
AGENT_KEY_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:kiro-api-key-AbCdEf"
PACKAGE_FOLDER = "aipm-artifacts/runner/"
FLEET = {
    "RunnerVpcId": "vpc-0123456789abcdef0",
    "RunnerSubnetIds": "subnet-0123456789abcdef0",
    "RunnerPackageUri": f"s3://{PACKAGE_FOLDER}",
    "GitRemoteUrl": "https://git.example.com/team/repo.git",
    "GitTokenSecretArn": GIT_TOKEN_ARN,
    "AgentCredentialSecretArn": AGENT_KEY_ARN,
}

# granted, not exercised by these flows: (role or policy, IAM action, resource) -> why it is needed
STACK = "aipm-stack"  # the stack name the grants are resolved with (Resolver's AWS::StackName)
_GROUP = "autoScalingGroup:*:autoScalingGroupName"
_BOOT = "the runner's user data reads it with the AWS CLI at boot (tests/integration/test_bootstrap.py)"
NEEDED: dict[tuple[str, str, str], str] = {
    (RUNNER_ROLE, "secretsmanager:GetSecretValue", "GitTokenSecretArn"): (
        f"{_BOOT}; the git credential helper reads it again at each fetch and push"
    ),
    (RUNNER_ROLE, "secretsmanager:GetSecretValue", "AgentCredentialSecretArn"): f"{_BOOT} into agent.env",
    (RUNNER_ROLE, "s3:GetObject", f"{PACKAGE_FOLDER}*"): f"{_BOOT}: the pinned runner package",
    (RUNNER_ROLE, "autoscaling:CompleteLifecycleAction", f"{_GROUP}/{STACK}-runners"): (
        "a runner held by the warm-stop lifecycle hook lets its instance go once stopped: the local stack"
        " has no Auto Scaling group, so tests/chaos/test_instance_notices_stack.py makes and checks that call"
    ),
    **{
        (RUNNER_ROLE, f"logs:{action}", f"log-group:/aipm/{STACK}/runner:*"): (
            "the CloudWatch agent (installed by the user data, its config checked by test_bootstrap.py)"
            " ships the runner's log file and the boot's output: "
            + {
                "CreateLogStream": "one stream per instance and file",
                "PutLogEvents": "the lines themselves",
                "DescribeLogStreams": "the agent looks up its streams before its first put",
            }[action]
        )
        for action in ("CreateLogStream", "PutLogEvents", "DescribeLogStreams")
    },
}

# AWS managed policies each role carries, and why (SAM adds the Lambda ones for the service itself:
# writing logs, traces, and reading the event sources for the function, never the function's code)
MANAGED: dict[str, dict[str, str]] = {
    RUNNER_ROLE: {"AmazonSSMManagedInstanceCore": "Session Manager instead of SSH"},
    **{
        f"{fn}Role": {
            "AWSLambdaBasicExecutionRole": "the function's log group and streams",
            "AWSXrayWriteOnlyAccess": "Tracing: Active",
        }
        for fn in (
            "DispatchFunction",
            "DeadLetterFunction",
            "ReconcilerFunction",
            "WsAuthorizerFunction",
            "WsConnectFunction",
            "WsDisconnectFunction",
            "WsRelayFunction",
        )
    },
}
MANAGED["DispatchFunctionRole"]["AWSLambdaDynamoDBExecutionRole"] = "the stream event source mapping"
# API Gateway's own account-wide role (SetApiGatewayLogsRole): writes the WebSocket stage's access logs
MANAGED["ApiGatewayLogsRole"] = {"AmazonAPIGatewayPushToCloudWatchLogs": "the WebSocket stage's access logs"}
MANAGED["DeadLetterFunctionRole"]["AWSLambdaSQSQueueExecutionRole"] = "the intake's event source mapping"

# the local stack's own clients (deploy, pollers) and the test's: not a deployed component
NOT_DEPLOYED = {"local", "other"}
_TRANSACT_PART = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
    "Get": "GetItem",
}
_CONNECTION_METHOD = {"PostToConnection": "POST", "GetConnection": "GET", "DeleteConnection": "DELETE"}


# -- the template's grants ---------------------------------------------------------------------
class Resolver:
    """The template's intrinsic functions, resolved against the stack deployed into moto."""

    def __init__(
        self,
        cfn: dict[str, Any],
        physical: dict[str, str],
        parameters: dict[str, Any],
        stack_name: str = STACK,
    ) -> None:
        self.types = {k: v["Type"] for k, v in cfn["Resources"].items()}
        self.physical = physical
        defaults = {k: v.get("Default") for k, v in cfn.get("Parameters", {}).items()}
        self.parameters = {**defaults, **parameters}
        self.pseudo = {
            "AWS::Partition": "aws",
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": stack_name,
        }

    def value(self, node: Any, local: dict[str, Any] | None = None) -> Any:
        if isinstance(node, list):
            return [self.value(n, local) for n in node]
        if not isinstance(node, dict):
            return node
        if "Ref" in node:
            return self.ref(node["Ref"])
        if "Fn::GetAtt" in node:
            logical, attr = node["Fn::GetAtt"]
            return self.get_att(logical, attr)
        if "Fn::Sub" in node:
            spec = node["Fn::Sub"]
            text, given = (spec, {}) if isinstance(spec, str) else (spec[0], spec[1])
            names = {k: self.value(v) for k, v in given.items()}

            def sub(m: re.Match[str]) -> str:
                name = m.group(1)
                if name in names:
                    return str(names[name])
                if "." in name:
                    return str(self.get_att(*name.split(".", 1)))
                return str(self.ref(name))

            return re.sub(r"\$\{([^}!]+)\}", sub, text)
        if "Fn::Select" in node:
            index, items = node["Fn::Select"]
            return self.value(items, local)[int(index)]
        if "Fn::Split" in node:
            delimiter, text = node["Fn::Split"]
            return str(self.value(text, local)).split(delimiter)
        raise AssertionError(f"the test cannot resolve {node}: teach Resolver")

    def ref(self, name: str) -> str:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return str(self.parameters[name])
        if self.types.get(name) == "AWS::ApiGatewayV2::Api":
            return API_ID
        return self.physical[name]

    def get_att(self, logical: str, attr: str) -> str:
        kind, ref = self.types[logical], self.ref(logical)
        if kind == "AWS::DynamoDB::Table" and attr == "Arn":
            return table_arn(ref)
        if kind == "AWS::SQS::Queue" and attr == "Arn":
            return queue_arn(ref.rsplit("/", 1)[-1])
        if kind == "AWS::SQS::Queue" and attr == "QueueName":
            return ref.rsplit("/", 1)[-1]
        raise AssertionError(f"the test cannot resolve {logical}.{attr}: teach Resolver")


def table_arn(name: str) -> str:
    return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"


def queue_arn(name: str) -> str:
    return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"


@dataclass(frozen=True)
class Grant:
    principal: str  # a role, or a managed policy attached to none (the CLI's)
    action: str
    resource: str


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def grants(cfn: dict[str, Any], resolver: Resolver) -> list[Grant]:
    """Every (action, resource) the template's inline and customer managed policies allow, by the
    role (or unattached policy) holding it."""
    found: list[Grant] = []
    resources = cfn["Resources"]

    def add(principal: str, document: dict[str, Any]) -> None:
        for st in _listed(document["Statement"]):
            assert st["Effect"] == "Allow", f"{principal}: this test does not evaluate {st['Effect']}"
            assert "NotAction" not in st and "NotResource" not in st, f"{principal}: {st}"
            for action in _listed(st["Action"]):
                for res in _listed(resolver.value(st["Resource"])):
                    found.append(Grant(principal, action, res))

    for logical, res in resources.items():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                add(logical, policy["PolicyDocument"])
        elif res["Type"] in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
            roles = [r["Ref"] for r in props.get("Roles", [])]
            for principal in roles or [logical]:
                add(principal, props["PolicyDocument"])
    return found


def roles(cfn: dict[str, Any]) -> dict[str, str]:
    """The role (or policy) each component runs under: functions by their folder name."""
    found = {"runner": RUNNER_ROLE, "cli": CLI_POLICY}
    for logical, res in load_template()["Resources"].items():
        if res["Type"] == "AWS::Serverless::Function":
            folder = res["Properties"]["CodeUri"].rstrip("/").rsplit("/", 1)[-1]
            found[folder] = cfn["Resources"][logical]["Properties"]["Role"]["Fn::GetAtt"][0]
    return found


# -- the calls made ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Use:
    component: str
    call: str  # service:Operation as recorded
    action: str
    resource: str


def iam_requests(call: dict[str, Any], stage: str) -> list[tuple[str, str]]:
    """The (IAM action, resource ARN) pairs one recorded API call needs."""
    service, op, res = call["service"], call["operation"], call["resources"]
    if service == "dynamodb":
        if "parts" in res:  # TransactWriteItems is no action of its own: each part needs its own
            return [(f"dynamodb:{_TRANSACT_PART[kind]}", table_arn(t)) for kind, t in res["parts"]]
        if "tables" in res:
            return [(f"dynamodb:{op}", table_arn(t)) for t in res["tables"]]
        index = f"/index/{res['IndexName']}" if "IndexName" in res else ""
        return [(f"dynamodb:{op}", table_arn(res["TableName"]) + index)]
    if service == "sqs":
        name = res["QueueUrl"].rsplit("/", 1)[-1] if "QueueUrl" in res else res["QueueName"]
        # a batch call is authorized as its single action (SendMessageBatch as SendMessage, ...)
        return [(f"sqs:{op.removesuffix('Batch')}", queue_arn(name))]
    if service == "secretsmanager":
        return [(f"secretsmanager:{op}", res["SecretId"])]
    if service == "autoscaling":  # a group's ARN carries an id the caller never names
        group = f"autoScalingGroup:{GROUP_UUID}:autoScalingGroupName/{res['AutoScalingGroupName']}"
        return [(f"autoscaling:{op}", f"arn:aws:autoscaling:{REGION}:{ACCOUNT}:{group}")]
    if service == "sts" and op == "GetCallerIdentity":
        return []  # needs no permission: AWS answers it for any valid credentials
    if service == "apigatewaymanagementapi":
        method = _CONNECTION_METHOD[op]
        connection = f"{stage}/{method}/@connections/{res['ConnectionId']}"
        arn = f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{API_ID}/{connection}"
        return [("execute-api:ManageConnections", arn)]
    raise AssertionError(f"no IAM mapping for {service}:{op}: add one to iam_requests")


def allows(grant: Grant, action: str, resource: str) -> bool:
    """IAM's matching: case-insensitive actions, ``*`` and ``?`` wildcards in both."""
    return fnmatch.fnmatchcase(action.lower(), grant.action.lower()) and fnmatch.fnmatchcase(
        resource, grant.resource
    )


# -- the flows ---------------------------------------------------------------------------------
@dataclass
class Recording:
    """The recorded calls, and the template's roles resolved against the stack they were made on."""

    calls: list[dict[str, Any]]
    cfn: dict[str, Any]  # template.yaml after SAM's transform
    physical: dict[str, str]  # logical id -> name, queue URL or secret ARN in moto
    parameters: dict[str, Any]  # the template parameters it was transformed with
    stage: str
    role: dict[str, str] = field(init=False)
    grants: list[Grant] = field(init=False)

    def __post_init__(self) -> None:
        self.role = roles(self.cfn)
        self.grants = grants(self.cfn, Resolver(self.cfn, self.physical, self.parameters))

    def role_of(self, component: str) -> str:
        assert component in self.role, f"component {component!r} has no role in template.yaml"
        return self.role[component]

    def granted(self, use: Use) -> bool:
        role = self.role_of(use.component)
        return any(g.principal == role and allows(g, use.action, use.resource) for g in self.grants)

    @property
    def deployed_calls(self) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["component"] not in NOT_DEPLOYED]

    def uses(self) -> list[Use]:
        return [
            Use(c["component"], f"{c['service']}:{c['operation']}", action, resource)
            for c in self.deployed_calls
            for action, resource in iam_requests(c, self.stage)
        ]

    def label(self, arn: str) -> str:
        """``arn`` with physical names as logical ids and no partition/region/account prefix."""
        for logical, phys in sorted(self.physical.items(), key=lambda kv: -len(kv[1])):
            name = phys.rsplit("/", 1)[-1] if phys.startswith("http") else phys
            arn = arn.replace(name, logical)
        arn = arn.replace(API_ID, "WebSocketApi")
        for name in ("GitTokenSecretArn", "AgentCredentialSecretArn"):
            arn = arn.replace(self.parameters[name], name)
        return arn.split(":", 5)[5] if arn.startswith("arn:") else arn


def _cli(workdir: Path, env: dict[str, str], *args: str) -> str:
    out = prefork.aipm(args, cwd=workdir, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _row(item: dict[str, Any]) -> dict[str, Any]:
    return {k: ({"N": str(v)} if isinstance(v, int | float) else {"S": v}) for k, v in item.items()}


@pytest.fixture(scope="module")
def recording(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recording]:
    """One of each flow (see ``Flows``) on a local stack whose every AWS call is recorded, with the
    WebSocket functions and the runner reading their keys from Secrets Manager as on AWS."""
    from local.gateway import LocalGateway
    from local.stack import LocalStack

    work = tmp_path_factory.mktemp("least-privilege")
    calls_file = work / "aws-calls.jsonl"
    mp = pytest.MonkeyPatch()
    mp.setenv(aws.RECORD_ENV, str(calls_file))  # the in-process Lambdas, the runner and the CLI
    stack = LocalStack(
        work,
        runners=0,
        stack_name=unique("lp"),
        endpoint_url=moto_endpoint,
        reconcile_seconds=3600,
        runner_env={
            "AGENT": "kiro",
            "AGENT_COMMAND": FAKE_AGENT_COMMAND,
            "AGENT_INTERACTIVE_COMMAND": f"{FAKE_KIRO} chat --wrap never",
            "AGENT_TIMEOUT": "10",
            "SQS_WAIT_SECONDS": "1",
            "RUNNER_SLOTS": "2",  # two tasks of one branch at once: the second waits for the first
        },
    )
    gateway: LocalGateway | None = None
    try:
        cfg = stack.start()
        cfn_client = aws.client("cloudformation", region=REGION, endpoint_url=moto_endpoint)
        physical = {
            r["LogicalResourceId"]: r["PhysicalResourceId"]
            for r in cfn_client.describe_stack_resources(StackName=stack.stack_name)["StackResources"]
        }
        # moto's CloudFormation cannot make generated secrets: local.deploy makes them by name
        secrets = aws.client("secretsmanager", region=REGION, endpoint_url=moto_endpoint)
        for logical in ("TokenSecret", "RunnerSecret"):
            physical[logical] = secrets.describe_secret(SecretId=f"{stack.stack_name}-{logical}")["ARN"]
        # the WebSocket functions as template.yaml gives them their keys: Secrets Manager ARNs
        gateway = LocalGateway(
            {
                **cfg.env,
                "TOKEN_SECRET_ARN": physical["TokenSecret"],
                "RUNNER_SECRET_ARN": physical["RunnerSecret"],
            },
            port=0,
        ).start()
        stack.start_runner({"WS_URL": gateway.ws_url, "RUNNER_SECRET_ARN": physical["RunnerSecret"]})
        cli_env = {
            **{k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL", "TOKEN_SECRET")},
            "TOKEN_SECRET_ARN": physical["TokenSecret"],
        }
        Flows(stack, gateway, cli_env, moto_endpoint, physical["RunnerSecret"]).run_all()
    finally:
        stack.stop()
        if gateway:
            gateway.stop()
        mp.undo()
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()]
    parameters = {**FLEET, "TableName": cfg.table_name}
    cfn = translate(load_template(), REGION, parameters)
    yield Recording(calls, cfn, physical, parameters, gateway.stage if gateway else "local")


class Flows:
    """The flows, each waiting for its own outcome, so the recording holds what each really did:
    tasks submitted, listed and retried by the CLI and run by a real runner (one completes, one
    fails, two share a branch, one lacks createdAt), a lost lease the reconciler re-signals, dead
    letters given up and requeued, the fleet listed and the runner host's doctor, and Refine
    sessions (CLI token, browsers, a runner that dies)."""

    def __init__(
        self, stack: Any, gateway: Any, cli_env: dict[str, str], endpoint: str, runner_secret_arn: str
    ) -> None:
        self.stack, self.gateway, self.cli_env = stack, gateway, cli_env
        self.runner_secret_arn = runner_secret_arn
        self.table = stack.config.table_name
        self.ddb = aws.client("dynamodb", region=REGION, endpoint_url=endpoint)
        self.sqs = aws.client("sqs", region=REGION, endpoint_url=endpoint)

    def cli(self, *args: str) -> str:
        return _cli(self.stack.workdir, self.cli_env, *args)

    def row(self, task_id: str) -> dict[str, Any]:
        item = self.ddb.get_item(TableName=self.table, Key={"id": {"S": task_id}}, ConsistentRead=True)
        return {k: next(iter(v.values())) for k, v in item.get("Item", {}).items()}

    def ended(self, task_id: str, attempts: int = 1) -> str:
        def final() -> str | None:
            row = self.row(task_id)
            done = row.get("status") in ("complete", "failed") and int(row.get("attempts", 0)) >= attempts
            return row["status"] if done else None

        return wait_until(final, 90, what=f"task {task_id} to end")

    def submit(self, task_id: str, branch: str, details: str = "x") -> None:
        self.cli("submit", "--id", task_id, "--title", "A task", "--details", details, "--branch", branch)

    def put_row(self, task_id: str, **fields: Any) -> None:
        row = {"id": task_id, "title": "A row", "details": "x", "branch": f"feature/{task_id}", **fields}
        self.ddb.put_item(TableName=self.table, Item=_row(row))

    def run_all(self) -> None:
        self.tasks()
        self.recovery()
        self.fleet()
        self.refine(self.done)

    def fleet(self) -> None:
        """The operator lists the fleet (the runner's heartbeat records); the runner host's doctor
        checks AWS, the table, the queues, the WebSocket (the runner secret from its ARN), git and
        the agent, as the unit and the boot run it."""
        runners = json.loads(self.cli("runners", "--json"))
        assert [r["liveness"] for r in runners] == ["live"], runners
        env = {
            **{k: v for k, v in self.stack.runner_env(0).items() if k != "RUNNER_SECRET"},
            "WS_URL": self.gateway.ws_url,
            "RUNNER_SECRET_ARN": self.runner_secret_arn,
        }
        report = json.loads(_cli(self.stack.workdir, env, "doctor", "--json"))
        assert report["ok"], report

    def tasks(self) -> None:
        # a task end to end, submitted as the backend does, listed, then retried by an operator
        self.done = unique("lp-done")
        self.submit(self.done, f"feature/{self.done}")
        assert self.ended(self.done) == "complete"
        assert self.done in self.cli("list", "--status", "complete")
        assert self.done in self.cli("tasks", "--status", "complete", "--json")
        assert json.loads(self.cli("task", "show", self.done, "--json"))["status"] == "complete"
        self.cli("retry", self.done)
        assert self.ended(self.done, attempts=2) == "complete"
        # a task whose agent fails
        bad = unique("lp-bad")
        self.submit(bad, f"feature/{bad}", details="[fake:exit=1]")
        assert self.ended(bad) == "failed"
        # two tasks of one branch: the second waits, and the first's runner wakes it when it ends
        first, second, branch = unique("lp-first"), unique("lp-second"), f"feature/{unique('lp')}"
        self.submit(first, branch, details="[fake:sleep=5]")
        wait_until(lambda: self.row(first).get("status") == "processing", 60, what=f"{first} to start")
        # written at once (a CLI process takes a while to start): pending while the first holds
        # the branch, so the first's end finds it waiting however its own signal is timed
        self.put_row(second, branch=branch, status="pending", createdAt=utc_now_iso())
        # a third of the branch, cancelled while it waits (one conditional write by the CLI)
        third = unique("lp-third")
        self.put_row(third, branch=branch, status="pending", createdAt=utc_now_iso())
        self.cli("task", "cancel", third)
        assert (self.ended(first), self.ended(second)) == ("complete", "complete")
        assert self.row(third)["errorKind"] == "cancelled"
        # an operator reads what the agent printed (the row; a task that ended needs no socket)
        assert self.cli("logs", first) == self.cli("logs", first, "--follow")
        # a row the backend wrote without createdAt: dispatch gives it one (the status index needs it)
        bare = unique("lp-bare")
        self.put_row(bare, status="pending")
        assert self.ended(bare) == "complete"

    def recovery(self) -> None:
        long_ago = {"createdAt": "2020-01-01T00:00:00.000Z", "updatedAt": "2020-01-01T00:00:00.000Z"}
        dead_runner = {"status": "processing", "runnerId": "gone", "leaseExpiresAt": time.time() - 3600}
        # a row whose runner died long ago: the reconciler signals it and a runner takes it over
        lost = unique("lp-lost")
        self.put_row(lost, attempts=1, **long_ago, **dead_runner)
        self.stack.functions["reconciler"].invoke(json.loads((EVENTS / "schedule.json").read_text()))
        assert self.ended(lost, attempts=2) == "complete"
        # dead letters: one given up (its attempts used up), one signalled afresh (it never ran)
        given_up = ""
        for prefix, attempts, outcome in (("lp-dead", 5, "failed"), ("lp-requeue", 0, "complete")):
            task_id = unique(prefix)
            given_up = given_up or task_id
            self.put_row(task_id, attempts=attempts, **long_ago, **dead_runner)
            body = json.dumps({"taskId": task_id, "reason": "test"})
            self.sqs.send_message(QueueUrl=self.stack.config.dlq_intake_url, MessageBody=body)
            assert self.ended(task_id, attempts=attempts) == outcome
        # an operator lists the letters, looks at the given-up task's, redrives it, purges the rest
        (letter,) = wait_until(
            lambda: [x for x in json.loads(self.cli("dlq", "list", "--json")) if x["task_id"] == given_up],
            30,
            what="the given-up task's letter",
        )
        assert given_up in self.cli("dlq", "show", letter["message_id"])
        self.cli("dlq", "redrive", letter["message_id"])
        assert self.ended(given_up, attempts=6) == "complete"
        self.cli("dlq", "purge", "--yes")

    def refine(self, task_id: str) -> None:
        """Browsers on a finished task's branch (token from the CLI): one types and closes its
        session; another is in a session when its runner goes away, and is told so; both leave."""
        token = self.cli("token", "--task", task_id, "--ttl", "120")

        async def typed_and_closed() -> None:
            browser = await Browser.connect(self.gateway.ws_url, token)
            try:
                await browser.open(task_id=task_id, timeout=30)
                await browser.wait_text("interactive chat", timeout=30)
                await browser.type("hello\r")
                await browser.wait_text("you said:", timeout=20)
                await browser.send(fr.CloseFrame(session_id=browser.session_id))
                await browser.wait_frame(fr.ExitFrame, timeout=20, session_id=browser.session_id)
            finally:
                await browser.close()

        async def runner_gone() -> None:
            browser = await Browser.connect(self.gateway.ws_url, token)
            try:
                await browser.open(task_id=task_id, timeout=30)
                await browser.wait_text("interactive chat", timeout=30)
                runner = self.stack.runners[0]  # a crash: no goodbye from the runner
                runner.kill()
                runner.wait(timeout=30)
                gone = await browser.wait_frame(fr.ErrorFrame, timeout=30, code="runner_gone")
                assert gone.session_id == browser.session_id
            finally:
                await browser.close()

        asyncio.run(typed_and_closed())
        asyncio.run(runner_gone())


# -- the proof ---------------------------------------------------------------------------------
def test_every_component_made_calls_in_these_flows(recording: Recording) -> None:
    """The proof below is not vacuous: the runner, the CLI and every function were recorded."""
    made = {c["component"] for c in recording.deployed_calls}
    functions = {
        res["Properties"]["CodeUri"].rstrip("/").rsplit("/", 1)[-1]
        for res in load_template()["Resources"].values()
        if res["Type"] == "AWS::Serverless::Function"
    }
    assert made == {"runner", "cli"} | functions


def test_every_call_is_granted_to_its_components_role(recording: Recording) -> None:
    """No component makes a call its role does not allow: on AWS it would be AccessDenied."""
    denied = sorted(
        {
            f"{u.component} ({recording.role_of(u.component)}) {u.call}: "
            f"{u.action} on {recording.label(u.resource)}"
            for u in set(recording.uses())
            if not recording.granted(u)
        }
    )
    assert not denied, "calls the template does not grant:\n" + "\n".join(denied)


def test_every_grant_is_used_or_needed_for_a_reason(recording: Recording) -> None:
    """No role holds a permission nothing uses: each grant matches a recorded call of its
    component, or is listed in NEEDED with why it is needed beyond these flows."""
    uses = set(recording.uses())
    unused = {
        (g.principal, g.action, recording.label(g.resource))
        for g in recording.grants
        if not any(
            recording.role_of(u.component) == g.principal and allows(g, u.action, u.resource) for u in uses
        )
    }
    unexplained = sorted(unused - set(NEEDED))
    assert not unexplained, "granted but never used (remove, or add to NEEDED with a reason):\n" + "\n".join(
        map(str, unexplained)
    )
    stale = sorted(set(NEEDED) - unused)
    assert not stale, "NEEDED lists grants that are used or gone (remove them):\n" + "\n".join(
        map(str, stale)
    )


def test_each_role_carries_only_the_managed_policies_it_needs(recording: Recording) -> None:
    """AWS managed policies are outside the recording (the services use them, not the code): each
    role's are the ones listed in MANAGED with their reasons."""
    found = {}
    for logical, res in recording.cfn["Resources"].items():
        if res["Type"] == "AWS::IAM::Role":
            arns = Resolver(recording.cfn, recording.physical, recording.parameters).value(
                res["Properties"].get("ManagedPolicyArns", [])
            )
            found[logical] = sorted(arn.rsplit("/", 1)[-1] for arn in arns)
    assert found == {role: sorted(policies) for role, policies in MANAGED.items()}


def test_recording_is_chosen_when_a_client_is_made(
    moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Production pays nothing: only a client made while AIPM_RECORD_AWS_CALLS is set records, and
    a call from no deployed component's code is recorded as ``other``."""
    calls_file = tmp_path / "calls.jsonl"
    monkeypatch.setenv(aws.RECORD_ENV, str(calls_file))
    recorded = aws.client("sqs", region=REGION, endpoint_url=moto_endpoint)
    monkeypatch.delenv(aws.RECORD_ENV)
    silent = aws.client("sqs", region=REGION, endpoint_url=moto_endpoint)

    recorded.list_queues(QueueNamePrefix="recorded")
    silent.list_queues(QueueNamePrefix="silent")

    lines = [json.loads(line) for line in calls_file.read_text().splitlines()]
    assert [(c["component"], c["service"], c["operation"]) for c in lines] == [("other", "sqs", "ListQueues")]
