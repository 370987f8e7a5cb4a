"""template.yaml deployed into moto by local/deploy.py: the resources the local stack relies on."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest

from local.deploy import LocalStackResources, deploy, for_moto, load_template, translate
from local.poller import passes
from shared import aws
from shared.store import STATUS_INDEX
from tests.integration.conftest import load_event

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(moto_endpoint: str) -> LocalStackResources:
    return deploy(moto_endpoint, "us-east-1", stack_name=f"tpl{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def ddb(moto_endpoint: str) -> Any:
    return aws.client("dynamodb", region="us-east-1", endpoint_url=moto_endpoint)


@pytest.fixture(scope="module")
def sqs(moto_endpoint: str) -> Any:
    return aws.client("sqs", region="us-east-1", endpoint_url=moto_endpoint)


def test_queue_table_has_the_stream_and_the_status_index(stack: LocalStackResources, ddb: Any) -> None:
    table = ddb.describe_table(TableName=stack.table_name)["Table"]
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert table["LatestStreamArn"] == stack.table_stream_arn
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    backups = ddb.describe_continuous_backups(TableName=stack.table_name)["ContinuousBackupsDescription"]
    assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"
    (gsi,) = table["GlobalSecondaryIndexes"]
    assert gsi["IndexName"] == STATUS_INDEX
    assert gsi["KeySchema"] == [
        {"AttributeName": "status", "KeyType": "HASH"},
        {"AttributeName": "createdAt", "KeyType": "RANGE"},
    ]


def test_task_queue_redrives_to_the_dlq_at_max_receive_count(stack: LocalStackResources, sqs: Any) -> None:
    attrs = sqs.get_queue_attributes(QueueUrl=stack.task_queue_url, AttributeNames=["All"])["Attributes"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=stack.dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq_arn
    assert int(redrive["maxReceiveCount"]) == 5
    assert attrs["VisibilityTimeout"] == "120"


def test_max_receive_count_comes_from_the_parameter(moto_endpoint: str, sqs: Any) -> None:
    stack = deploy(
        moto_endpoint, "us-east-1", stack_name=f"mrc{uuid.uuid4().hex[:8]}", parameters={"MaxReceiveCount": 2}
    )
    attrs = sqs.get_queue_attributes(QueueUrl=stack.task_queue_url, AttributeNames=["RedrivePolicy"])[
        "Attributes"
    ]
    assert int(json.loads(attrs["RedrivePolicy"])["maxReceiveCount"]) == 2


def test_a_message_received_max_receive_count_times_lands_in_the_dlq(moto_endpoint: str, sqs: Any) -> None:
    """The redrive the dead-letter function relies on, as moto plays it."""
    stack = deploy(
        moto_endpoint,
        "us-east-1",
        stack_name=f"red{uuid.uuid4().hex[:8]}",
        parameters={"MaxReceiveCount": 2, "TaskVisibilityTimeout": 30},
    )
    sqs.send_message(QueueUrl=stack.task_queue_url, MessageBody='{"taskId":"t-1","reason":"insert"}')
    for _ in range(2):
        (msg,) = sqs.receive_message(QueueUrl=stack.task_queue_url, WaitTimeSeconds=1)["Messages"]
        sqs.change_message_visibility(
            QueueUrl=stack.task_queue_url, ReceiptHandle=msg["ReceiptHandle"], VisibilityTimeout=0
        )
    assert sqs.receive_message(QueueUrl=stack.task_queue_url, WaitTimeSeconds=0).get("Messages", []) == []
    (dead,) = sqs.receive_message(
        QueueUrl=stack.dlq_url, WaitTimeSeconds=1, MessageSystemAttributeNames=["ApproximateReceiveCount"]
    )["Messages"]
    assert json.loads(dead["Body"])["taskId"] == "t-1"


def test_connections_table_has_ttl_and_session_index(stack: LocalStackResources, ddb: Any) -> None:
    assert stack.connections_table
    table = ddb.describe_table(TableName=stack.connections_table)["Table"]
    assert table["KeySchema"] == [{"AttributeName": "connectionId", "KeyType": "HASH"}]
    assert [g["IndexName"] for g in table["GlobalSecondaryIndexes"]] == ["sessionId-index"]
    ttl = ddb.describe_time_to_live(TableName=stack.connections_table)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expiresAt"}


def test_branch_locks_table_is_keyed_on_the_branch_with_ttl(stack: LocalStackResources, ddb: Any) -> None:
    assert stack.branch_locks_table == f"{stack.stack_name}-branch-locks"
    assert stack.branch_locks_table not in (stack.table_name, stack.connections_table)
    table = ddb.describe_table(TableName=stack.branch_locks_table)["Table"]
    assert table["KeySchema"] == [{"AttributeName": "branch", "KeyType": "HASH"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert not table.get("GlobalSecondaryIndexes") and not table.get("StreamSpecification")
    ttl = ddb.describe_time_to_live(TableName=stack.branch_locks_table)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expiresAt"}


def test_dispatch_filter_matches_pending_insert_and_reset_not_processing(stack: LocalStackResources) -> None:
    """The FilterCriteria parsed from the template, applied to the canonical events."""
    filters = stack.dispatch_filters
    assert filters, "the dispatch stream event declares FilterCriteria"

    def first(name: str) -> dict:
        return load_event(name)["Records"][0]

    assert passes(filters, first("stream_insert.json"))
    assert passes(filters, first("stream_modify_reset.json"))
    assert not passes(filters, first("stream_modify_processing.json"))
    assert not passes(filters, {**first("stream_insert.json"), "eventName": "REMOVE"})


def test_the_local_stream_mapping_takes_batch_size_and_retries_from_the_template(
    stack: LocalStackResources,
) -> None:
    assert stack.dispatch_batch_size == 100
    assert stack.dispatch_max_retries == 20


def test_function_env_is_resolved_against_the_local_stack(stack: LocalStackResources) -> None:
    dispatch = stack.function("DispatchFunction")
    assert dispatch.handler == "app.lambda_handler" and dispatch.code_uri == "functions/dispatch/"
    assert stack.function_env("dispatch")["TASK_QUEUE_URL"] == stack.task_queue_url
    assert stack.function_env("dispatch")["TABLE_NAME"] == stack.table_name
    assert stack.function_env("reconciler")["PENDING_AGE_SECONDS"] == "60"
    relay = stack.function_env("ws_relay")
    assert relay["CONNECTIONS_TABLE"] == stack.connections_table
    assert relay["TOKEN_SECRET_ARN"] == stack.token_secret_arn
    (dlq_source,) = stack.function("dead_letter").events
    assert dlq_source.type == "SQS" and dlq_source.queue_url == stack.dlq_url
    assert dlq_source.function_response_types == ["ReportBatchItemFailures"]


def test_generated_secrets_exist_in_the_local_secrets_manager(
    stack: LocalStackResources, moto_endpoint: str
) -> None:
    sm = aws.client("secretsmanager", region="us-east-1", endpoint_url=moto_endpoint)
    value = sm.get_secret_value(SecretId=stack.token_secret_arn)["SecretString"]
    assert len(value) == 64 and value.isalnum()
    assert value != sm.get_secret_value(SecretId=stack.runner_secret_arn)["SecretString"]


def test_websocket_routes_come_from_the_template(stack: LocalStackResources) -> None:
    ws = stack.websocket
    assert ws is not None
    assert ws.route_selection_expression == "$request.body.action"
    assert ws.routes == {"$connect": "ws_connect", "$disconnect": "ws_disconnect", "$default": "ws_relay"}
    assert ws.authorizer == "ws_authorizer"
    assert ws.identity_sources == ["route.request.querystring.token"]
    assert ws.stage == "prod"


def test_two_stacks_live_side_by_side(moto_endpoint: str, stack: LocalStackResources) -> None:
    other = deploy(moto_endpoint, "us-east-1", stack_name=f"two{uuid.uuid4().hex[:8]}")
    assert {other.table_name, other.task_queue_url, other.dlq_url}.isdisjoint(
        {stack.table_name, stack.task_queue_url, stack.dlq_url}
    )


def test_moto_template_keeps_tables_and_queues_and_drops_what_moto_cannot_create() -> None:
    cfn = translate(load_template(), "us-east-1", {"TableName": "x", "NamePrefix": "x"})
    kept, dropped = for_moto(cfn)
    assert {r["Type"] for r in kept["Resources"].values()} == {"AWS::DynamoDB::Table", "AWS::SQS::Queue"}
    assert set(kept["Resources"]) == {
        "QueueTable",
        "TaskQueue",
        "TaskDeadLetterQueue",
        "ConnectionsTable",
        "BranchLocksTable",
        "RunnersTable",
    }
    assert (
        dropped["WebSocketApi"] == "AWS::ApiGatewayV2::Api"
        and dropped["DispatchFunction"] == "AWS::Lambda::Function"
    )
    assert "WebSocketUrl" not in kept.get("Outputs", {}) and "TaskQueueUrl" in kept["Outputs"]
    assert "RunnerAmiId" not in kept.get("Parameters", {})


def _allowed_actions(role: dict[str, Any]) -> set[str]:
    actions: set[str] = set()
    for policy in role["Properties"].get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            if statement.get("Effect") == "Allow":
                action = statement["Action"]
                actions.update([action] if isinstance(action, str) else action)
    return actions


def test_roles_allow_the_calls_their_code_makes() -> None:
    """moto enforces no IAM, so the permissions each component's code needs are checked here:
    $disconnect and $default post to connections, the runner wakes a task waiting for its branch,
    the authorizer reads the secrets, every function writes its traces."""
    cfn = translate(load_template(), "us-east-1", {"TableName": "x", "NamePrefix": "x"})
    res = cfn["Resources"]
    assert "execute-api:ManageConnections" in _allowed_actions(res["WsDisconnectFunctionRole"])
    assert "execute-api:ManageConnections" in _allowed_actions(res["WsRelayFunctionRole"])
    # a task given up frees its branch lock
    dead_letter = res["DeadLetterFunctionRole"]["Properties"]["Policies"]
    assert any(
        "dynamodb:DeleteItem" in st["Action"]
        and st["Resource"] == {"Fn::GetAtt": ["BranchLocksTable", "Arn"]}
        for policy in dead_letter
        for st in policy["PolicyDocument"]["Statement"]
    )
    # dispatch gives a row without createdAt one, so the status index (and the reconciler) sees it
    assert "dynamodb:UpdateItem" in _allowed_actions(res["DispatchFunctionRole"])
    runner = _allowed_actions(res["RunnerRole"])
    assert {
        "sqs:ReceiveMessage",
        "sqs:SendMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
    } <= runner
    # the claim's transaction writes the branch lock; the end of a task deletes it
    locks = [
        statement
        for policy in res["RunnerRole"]["Properties"]["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
        if statement["Resource"] == {"Fn::GetAtt": ["BranchLocksTable", "Arn"]}
    ]
    assert locks and {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"} <= {
        a for s in locks for a in s["Action"]
    }  # and no more: tests/integration/test_least_privilege.py checks both ways
    # the relay never reads the queue table: least privilege
    relay_resources = json.dumps(res["WsRelayFunctionRole"]["Properties"]["Policies"])
    assert "QueueTable" not in relay_resources
    # the authorizer reads both secrets (again every few minutes, so a rotation takes effect)
    authorizer = res["WsAuthorizerFunctionRole"]["Properties"]["Policies"]
    secrets = {
        json.dumps(statement["Resource"])
        for policy in authorizer
        for statement in policy["PolicyDocument"]["Statement"]
        if "secretsmanager:GetSecretValue" in statement["Action"]
    }
    assert len(secrets) == 2 and all("Secret" in s for s in secrets), secrets
    # every handler runs under Tracer's capture_lambda_handler: X-Ray write access (Tracing: Active)
    functions = {k: v for k, v in res.items() if v["Type"] == "AWS::Lambda::Function"}
    for name, function in functions.items():
        assert function["Properties"]["TracingConfig"] == {"Mode": "Active"}, name
        role = res[function["Properties"]["Role"]["Fn::GetAtt"][0]]
        assert any(
            "AWSXrayWriteOnlyAccess" in json.dumps(arn) for arn in role["Properties"]["ManagedPolicyArns"]
        )


def test_every_function_names_its_service_and_the_metrics_namespace() -> None:
    """shared.observability configures Logger, Tracer and Metrics from Powertools' environment: each
    function has a service name of its own and the one metrics namespace (EMF needs no IAM beyond logs)."""
    cfn = translate(load_template(), "us-east-1", {"TableName": "x", "NamePrefix": "x"})
    functions = {k: v for k, v in cfn["Resources"].items() if v["Type"] == "AWS::Lambda::Function"}
    env = {name: f["Properties"]["Environment"]["Variables"] for name, f in functions.items()}
    services = [e["POWERTOOLS_SERVICE_NAME"] for e in env.values()]
    assert len(set(services)) == len(functions) == 7, services
    assert {e["POWERTOOLS_METRICS_NAMESPACE"] for e in env.values()} == {"aipm"}
    for name, function in functions.items():
        role = cfn["Resources"][function["Properties"]["Role"]["Fn::GetAtt"][0]]
        assert any(
            "AWSLambdaBasicExecutionRole" in json.dumps(a) for a in role["Properties"]["ManagedPolicyArns"]
        ), name


def test_the_runner_fleet_is_told_the_branch_locks_table() -> None:
    """The EC2 user data writes the table names into the runner's env file."""
    cfn = translate(load_template(), "us-east-1", {"TableName": "x", "NamePrefix": "x"})
    user_data = cfn["Resources"]["RunnerLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    script = user_data["Fn::Base64"]["Fn::Sub"]
    assert "BRANCH_LOCKS_TABLE=${BranchLocksTable}\n" in script


def test_the_created_queue_table_is_kept_on_delete_but_not_after_a_failed_first_create() -> None:
    """RetainExceptOnCreate: a failed first deploy removes the table, so a retry never meets
    "already exists"; a deleted stack keeps the rows (a new stack then adopts the table)."""
    table = load_template()["Resources"]["QueueTable"]
    assert table["DeletionPolicy"] == "RetainExceptOnCreate" and table["Condition"] == "CreateQueueTable"


def test_an_existing_queue_table_is_adopted_not_created(moto_endpoint: str, ddb: Any) -> None:
    """With ExistingQueueTableStreamArn the stack creates no table; the functions, the runner and the
    outputs name the existing one and the dispatch mapping reads its stream."""
    # given the seed's table, its stream turned on (README "Migrating from the EC2 terminal server")
    name = f"seed{uuid.uuid4().hex[:8]}-amazon-q-queue"
    ddb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    stream_arn = ddb.describe_table(TableName=name)["Table"]["LatestStreamArn"]
    params = {"TableName": name, "ExistingQueueTableStreamArn": stream_arn, "NamePrefix": "adopt"}
    cfn = translate(load_template(), "us-east-1", params)
    mapping = next(
        r["Properties"]
        for r in cfn["Resources"].values()
        if r["Type"] == "AWS::Lambda::EventSourceMapping" and "FilterCriteria" in r["Properties"]
    )
    assert mapping["EventSourceArn"]["Fn::If"][0] == "CreateQueueTable"
    env = cfn["Resources"]["DispatchFunction"]["Properties"]["Environment"]["Variables"]
    assert env["TABLE_NAME"] == {"Ref": "TableName"}

    # when the stack is created with it
    stack_name = f"adopt{uuid.uuid4().hex[:8]}"
    kept, _ = for_moto(cfn)
    cloudformation = aws.client("cloudformation", region="us-east-1", endpoint_url=moto_endpoint)
    cloudformation.create_stack(
        StackName=stack_name,
        TemplateBody=json.dumps(kept),
        Parameters=[
            {"ParameterKey": k, "ParameterValue": v} for k, v in params.items() if k in kept["Parameters"]
        ],
    )

    # then no table is made, and the outputs name the adopted one
    resources = cloudformation.describe_stack_resources(StackName=stack_name)["StackResources"]
    assert "QueueTable" not in {r.get("LogicalResourceId") for r in resources}
    assert {"TaskQueue", "BranchLocksTable"} <= {r.get("LogicalResourceId") for r in resources}
    (stack,) = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["QueueTableName"] == name and outputs["QueueTableStreamArn"] == stream_arn


def test_the_fleet_cannot_be_deployed_without_its_code_remote_and_credentials() -> None:
    """A fleet (RunnerVpcId set) with an empty RunnerPackageUri, GitRemoteUrl, GitTokenSecretArn or
    AgentCredentialSecretArn fails the deploy with a sentence naming the parameter, instead of
    instances that boot into a crash loop; a stack without the fleet needs none of them."""
    tpl = load_template()
    (rule,) = tpl["Rules"].values()
    assert rule["RuleCondition"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "RunnerVpcId"}, ""]}]}
    asserted = {
        a["Assert"]["Fn::Not"][0]["Fn::Equals"][0]["Ref"]: a["AssertDescription"] for a in rule["Assertions"]
    }
    assert set(asserted) == {
        "RunnerPackageUri",
        "GitRemoteUrl",
        "GitTokenSecretArn",
        "AgentCredentialSecretArn",
    }
    assert all(name in text for name, text in asserted.items())
    for name in asserted:
        assert tpl["Parameters"][name]["Default"] == ""
    assert "RunnerSourceUrl" not in tpl["Parameters"] and "RunnerSourceRef" not in tpl["Parameters"]


def test_the_runner_role_reads_its_own_secrets_and_package_only() -> None:
    cfn = translate(load_template(), "us-east-1", {"TableName": "x", "NamePrefix": "x"})
    statements = [
        st
        for policy in cfn["Resources"]["RunnerRole"]["Properties"]["Policies"]
        for st in policy["PolicyDocument"]["Statement"]
    ]
    secrets = [st["Resource"] for st in statements if st["Action"] == "secretsmanager:GetSecretValue"]
    assert {"Ref": "GitTokenSecretArn"} in secrets[1] and {"Ref": "AgentCredentialSecretArn"} in secrets[1]
    (s3,) = [st for st in statements if st["Action"] == "s3:GetObject"]
    uri = "s3://my-artifacts/aipm-runner/" + "ab" * 32 + "/"

    def value(node: Any) -> Any:  # the few intrinsics the statement uses, as CloudFormation does
        if isinstance(node, str):
            return node
        ((fn, arg),) = node.items()
        if fn == "Ref":
            return {"RunnerPackageUri": uri, "AWS::Partition": "aws"}[arg]
        if fn == "Fn::Split":
            return value(arg[1]).split(arg[0])
        if fn == "Fn::Select":
            return value(arg[1])[arg[0]]
        text, names = (arg[0], arg[1]) if isinstance(arg, list) else (arg, {})
        names = {"AWS::Partition": "aws", "RunnerPackageUri": uri} | {k: value(v) for k, v in names.items()}
        return re.sub(r"\$\{([^}]+)\}", lambda m: names[m.group(1)], text)

    assert value(s3["Resource"]) == f"arn:aws:s3:::my-artifacts/aipm-runner/{'ab' * 32}/*"


def _overrides(text: str) -> dict[str, str]:
    import shlex

    return dict(word.split("=", 1) for word in shlex.split(text))


def test_samconfig_has_dev_and_prod_that_live_side_by_side_in_one_account() -> None:
    """Each environment its own stack, table, prefix and stage; dev deploys without a prompt (CI);
    no override repeats the template's default; a bare `sam deploy` goes to dev, never prod."""
    import tomllib

    from tests.conftest import ROOT

    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    params = load_template()["Parameters"]

    def resolved(env: str) -> dict[str, str]:
        given = _overrides(config[env]["deploy"]["parameters"].get("parameter_overrides", ""))
        assert set(given) <= set(params), set(given) - set(params)
        for name, value in given.items():
            assert str(params[name].get("Default")) != value, f"{env}: {name} repeats its default"
        return {name: str(spec.get("Default")) for name, spec in params.items()} | given

    dev, prod = resolved("dev"), resolved("prod")
    for key in ("TableName", "NamePrefix", "StageName"):
        assert dev[key] != prod[key], key
    assert (
        config["dev"]["global"]["parameters"]["stack_name"]
        != config["prod"]["global"]["parameters"]["stack_name"]
    )
    assert config["dev"]["deploy"]["parameters"]["confirm_changeset"] is False
    assert config["prod"]["deploy"]["parameters"]["confirm_changeset"] is True
    assert config["default"]["global"] == config["dev"]["global"]
    assert config["default"]["deploy"] == config["dev"]["deploy"]
