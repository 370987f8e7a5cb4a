"""Deploy template.yaml into a running moto server: the local stack and AWS share one definition.

The SAM template is transformed offline with samtranslator (no AWS call), then created as a
CloudFormation stack in moto. moto's CloudFormation cannot create everything the template holds
(checked with moto 5.2: no ApiGatewayV2, SecretsManager or CloudWatch alarms; Lambda functions need
their code in S3 and would never run without Docker anyway; IAM, EventBridge and the EC2 runner fleet are
meaningless locally), so the stack created in moto keeps only the resource types in
``MOTO_RESOURCE_TYPES`` -- the tables, the task queue and its DLQ -- less whatever depends
on a dropped resource. Everything else is read from the translated template instead:
each function's environment (resolved against the local stack), the dispatch function's
FilterCriteria, the SQS and schedule event sources, and the WebSocket routes, so the local
pollers and the local WebSocket stand-in follow the template rather than a copy of it.

Secrets Manager secrets are the one exception: CloudFormation in moto cannot create them, so
``deploy`` creates them through moto's Secrets Manager API with the template's own
GenerateSecretString settings, and the functions' ``TOKEN_SECRET_ARN`` / ``RUNNER_SECRET_ARN``
point at them. Table settings moto's CloudFormation accepts but ignores (TTL, point-in-time
recovery) are applied afterwards through the DynamoDB API from the same definition.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import string
import time
from pathlib import Path
from typing import Any

import boto3
import samtranslator
from pydantic import BaseModel, ConfigDict, Field
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from samtranslator.yaml_helper import yaml_parse

from shared import aws

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"

# what moto's CloudFormation creates faithfully and the local stack needs
MOTO_RESOURCE_TYPES = frozenset({"AWS::DynamoDB::Table", "AWS::SQS::Queue"})
_STACK_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{0,39}$")
_SUB_REF = re.compile(r"\$\{([A-Za-z0-9:]+)(?:\.([A-Za-z0-9.]+))?\}")
_PLACEHOLDER_CODE = "s3://aipm-local-placeholder/code.zip"  # samtranslator needs S3 URIs; nothing reads them


class DeployError(RuntimeError):
    """The stack did not reach CREATE_COMPLETE; the message carries moto's reasons."""


class EventSource(BaseModel):
    """One event source of a function, as the template declares it (values resolved locally)."""

    model_config = ConfigDict(frozen=True)

    name: str  # the SAM event's name, e.g. "QueueStream"
    type: str  # "DynamoDB", "SQS" or "Schedule"
    batch_size: int | None = None
    filter_patterns: list[dict[str, Any]] = Field(default_factory=list)
    function_response_types: list[str] = Field(default_factory=list)
    maximum_retry_attempts: int | None = None
    bisect_batch_on_function_error: bool = False
    starting_position: str | None = None
    table_name: str | None = None  # DynamoDB: the table whose stream it reads
    queue_url: str | None = None  # SQS: the queue it reads
    schedule: str | None = None  # Schedule: "rate(1 minute)"


class FunctionSpec(BaseModel):
    """A function of the template: where its code is and what it is given."""

    model_config = ConfigDict(frozen=True)

    logical_id: str  # "DispatchFunction"
    name: str  # its folder under functions/: "dispatch"
    code_uri: str  # "functions/dispatch/"
    handler: str  # "app.lambda_handler"
    timeout: int
    environment: dict[str, str]  # resolved against the local stack; unresolvable values are left out
    events: list[EventSource] = Field(default_factory=list)


class WebSocketSpec(BaseModel):
    """The WebSocket API as declared; moto cannot create it, the local stand-in plays it."""

    model_config = ConfigDict(frozen=True)

    route_selection_expression: str
    stage: str
    routes: dict[str, str]  # route key ("$connect", "$default", ...) -> function name ("ws_connect")
    authorizer: str | None = None  # function name of the $connect REQUEST authorizer
    identity_sources: list[str] = Field(default_factory=list)  # ["route.request.querystring.token"]
    # routes with a MOCK integration (no Lambda): route key -> what its route response sends back
    # (the integration response's $default template; None when the route has no route response)
    mock_routes: dict[str, str | None] = Field(default_factory=dict)


class LocalStackResources(BaseModel):
    """What ``deploy`` made, and what the template says about the parts moto cannot run."""

    model_config = ConfigDict(frozen=True)

    stack_name: str
    endpoint_url: str
    region: str
    table_name: str
    table_stream_arn: str
    task_queue_url: str
    dlq_url: str  # the dead letters operators inspect (aipm dlq)
    dlq_intake_url: str  # where the task queue redrives to; the dead-letter function reads it
    connections_table: str | None = None
    branch_locks_table: str | None = None
    runners_table: str | None = None  # the runners' heartbeat records
    token_secret_arn: str | None = None
    runner_secret_arn: str | None = None
    functions: dict[str, FunctionSpec]  # keyed by folder name: "dispatch", "dead_letter", ...
    websocket: WebSocketSpec | None = None

    def function(self, name: str) -> FunctionSpec:
        """A function by folder name ("dispatch") or logical id ("DispatchFunction")."""
        if name in self.functions:
            return self.functions[name]
        for spec in self.functions.values():
            if spec.logical_id == name:
                return spec
        raise KeyError(name)

    def function_env(self, name: str) -> dict[str, str]:
        """The environment the template gives that function, resolved against this stack."""
        return dict(self.function(name).environment)

    def _dispatch_stream(self) -> EventSource:
        return next(e for e in self.function("dispatch").events if e.type == "DynamoDB")

    @property
    def dispatch_filters(self) -> list[dict[str, Any]]:
        """The dispatch function's stream FilterCriteria patterns, parsed."""
        return list(self._dispatch_stream().filter_patterns)

    @property
    def dispatch_batch_size(self) -> int:
        return self._dispatch_stream().batch_size or 100

    @property
    def dispatch_max_retries(self) -> int:
        """The mapping's MaximumRetryAttempts (-1, or unset: until the record expires)."""
        retries = self._dispatch_stream().maximum_retry_attempts
        return -1 if retries is None else retries


# -- template handling ---------------------------------------------------------------------------
class _NoManagedPolicies:
    """samtranslator's managed-policy loader, offline: the template names managed policies by ARN,
    and SAM's policy templates carry their own, so there is nothing to look up in IAM."""

    def load(self) -> dict[str, str]:
        return {}


def load_template(path: Path | str = TEMPLATE) -> dict[str, Any]:
    """The SAM template as a dict (short-form intrinsics such as ``!Ref`` expanded): a copy the caller
    may change. Parsing the YAML costs ~0.2 CPU-s, so the parse is kept by the text's SHA-256, in this
    process and in a file cache that every process of this user shares (test workers, ``aipm local``)."""
    text = Path(path).read_bytes()
    return copy.deepcopy(_parsed(hashlib.sha256(text).hexdigest(), text))


@functools.lru_cache(maxsize=8)
def _parsed(digest: str, text: bytes) -> dict[str, Any]:
    cached = _template_cache_dir() / f"{digest}-{samtranslator.__version__}.json"
    try:
        return dict(json.loads(cached.read_text()))
    except (OSError, ValueError):
        pass
    parsed: dict[str, Any] = yaml_parse(text.decode())
    try:
        if json.loads(json.dumps(parsed)) != parsed:  # e.g. an unquoted date: JSON would change it
            return parsed
        cached.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(parsed))
        os.replace(partial, cached)  # whole or absent: a reader never sees half a file
    except (OSError, TypeError, ValueError) as e:  # a read-only home, a value JSON cannot hold
        logger.debug("template cache not written (%s)", e)
    return parsed


def _template_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aipm" / "templates"


def translate(
    sam_template: dict[str, Any], region: str, parameters: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The CloudFormation template SAM makes of ``sam_template``, offline: a copy the caller may
    change. A translation costs ~0.1 CPU-s and is kept for the same template, region and
    parameters; for a template whose translation uses no parameter's value (SAM leaves most of them
    as ``Ref``s for CloudFormation), it is kept for every parameter set: stacks of other names
    share it."""
    try:
        shared = _translation_without_values(json.dumps([sam_template, region], sort_keys=True))
        key = shared or json.dumps([sam_template, region, parameters or {}], sort_keys=True)
    except (TypeError, ValueError):  # a value JSON cannot hold: translated as it is, uncached
        return _translate_now(copy.deepcopy(sam_template), region, dict(parameters or {}))
    return copy.deepcopy(_translated(key))


@functools.lru_cache(maxsize=32)
def _translated(key: str) -> dict[str, Any]:
    tpl, region, parameters = json.loads(key)
    return _translate_now(tpl, region, parameters)


@functools.lru_cache(maxsize=8)
def _translation_without_values(template_and_region: str) -> str | None:
    """The key of a translation that stands for every parameter set, or None if the template's
    translation may depend on a value. Probed once a template: translated with two sets of values
    that differ in every parameter, the same result means SAM resolved none of them."""
    tpl, region = json.loads(template_and_region)
    names = sorted(tpl.get("Parameters") or {})
    keys = [
        json.dumps([tpl, region, {n: f"aipm-probe-{i}-{n}" for n in names}], sort_keys=True) for i in (1, 2)
    ]
    try:
        same = _translated(keys[0]) == _translated(keys[1])
    except Exception:  # a value SAM refuses (text for a Number): values matter to it
        return None
    return keys[0] if same else None


def _translate_now(tpl: dict[str, Any], region: str, parameters: dict[str, Any]) -> dict[str, Any]:
    for res in tpl.get("Resources", {}).values():
        props = res.get("Properties") or {}
        for key_name in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key_name), str) and not props[key_name].startswith("s3://"):
                props[key_name] = _PLACEHOLDER_CODE
    # transform() takes the region from the default boto3 session; the translator itself takes a
    # session, so the region comes from the caller and nothing is read from the environment
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=region))
    loader = _NoManagedPolicies()
    result: dict[str, Any] = translator.translate(tpl, parameters, get_managed_policy_map=loader.load)
    return result


def references(node: Any) -> set[str]:
    """Logical ids and parameter names a template fragment refers to (Ref, GetAtt, Sub, Condition)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                target = value[0] if isinstance(value, list) else str(value).split(".")[0]
                found.add(target)
            elif key == "Fn::Sub":
                text, variables = (value[0], value[1]) if isinstance(value, list) else (value, {})
                found |= {m.group(1) for m in _SUB_REF.finditer(text)} - set(variables)
                found |= references(variables)
            elif key in ("Condition", "Fn::If") and isinstance(value, str | list):
                found.add(value if isinstance(value, str) else value[0])
                if isinstance(value, list):
                    found |= references(value[1:])
            else:
                found |= references(value)
    elif isinstance(node, list):
        for item in node:
            found |= references(item)
    return {f for f in found if not f.startswith("AWS::")}


def for_moto(cfn: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The part of a translated template moto can create, and the dropped resources (id -> type).

    Keeps the resource types in MOTO_RESOURCE_TYPES unless they refer to a dropped resource, the
    outputs, conditions and parameters the kept resources still use, and nothing else.
    """
    resources = cfn.get("Resources", {})
    kept = {k: v for k, v in resources.items() if v.get("Type") in MOTO_RESOURCE_TYPES}
    while True:
        broken = [
            k
            for k, v in kept.items()
            if any(r in resources and r not in kept for r in references(v) | set(_depends_on(v)))
        ]
        if not broken:
            break
        for k in broken:
            del kept[k]
    outputs = {
        k: v
        for k, v in cfn.get("Outputs", {}).items()
        if not any(r in resources and r not in kept for r in references(v))
    }
    conditions = cfn.get("Conditions", {})
    used = references([kept, outputs])
    pending = [c for c in used if c in conditions]
    while pending:
        for ref in references(conditions[pending.pop()]):
            if ref in conditions and ref not in used:
                pending.append(ref)
            used.add(ref)
    out = {
        "AWSTemplateFormatVersion": cfn.get("AWSTemplateFormatVersion", "2010-09-09"),
        "Description": cfn.get("Description", ""),
        "Parameters": {k: v for k, v in cfn.get("Parameters", {}).items() if k in used},
        "Conditions": {k: v for k, v in conditions.items() if k in used},
        "Resources": kept,
        "Outputs": outputs,
    }
    dropped = {k: v.get("Type", "?") for k, v in resources.items() if k not in kept}
    return {k: v for k, v in out.items() if v or k == "Resources"}, dropped


def _depends_on(resource: dict[str, Any]) -> list[str]:
    dep = resource.get("DependsOn", [])
    return [dep] if isinstance(dep, str) else list(dep)


# -- deploy --------------------------------------------------------------------------------------
def deploy(
    endpoint_url: str,
    region: str,
    stack_name: str = "aipm-local",
    parameters: dict[str, Any] | None = None,
    template_path: Path | str = TEMPLATE,
    timeout: float = 60.0,
) -> LocalStackResources:
    """Create ``stack_name`` from template.yaml in the moto server at ``endpoint_url``.

    Resource names derive from the stack name (TableName ``<stack>-queue``, NamePrefix ``<stack>``)
    unless ``parameters`` says otherwise, so several stacks can share one moto server.
    """
    if not _STACK_NAME.match(stack_name):
        raise ValueError(f"stack name {stack_name!r}: a letter, then up to 39 letters, digits or dashes")
    params = {"TableName": f"{stack_name}-queue", "NamePrefix": stack_name, **(parameters or {})}
    sam_template = load_template(template_path)
    cfn = translate(sam_template, region, params)
    moto_template, dropped = for_moto(cfn)
    logger.debug("not created in moto (the local stack plays or ignores them): %s", sorted(dropped))

    client = _Clients(endpoint_url, region)
    stack_params = [
        {"ParameterKey": k, "ParameterValue": _param_string(v)}
        for k, v in params.items()
        if k in moto_template.get("Parameters", {})
    ]
    client.cfn.create_stack(
        StackName=stack_name,
        TemplateBody=json.dumps(moto_template),
        Parameters=stack_params,
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    _wait_created(client.cfn, stack_name, timeout)
    physical = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in client.cfn.describe_stack_resources(StackName=stack_name)["StackResources"]
        if "LogicalResourceId" in r and "PhysicalResourceId" in r
    }
    _apply_table_settings(client, moto_template, physical)
    secrets_made = _create_secrets(client, stack_name, cfn, dropped)
    resolver = _Resolver(cfn, _all_parameters(cfn, params), physical, secrets_made, client, region)

    functions = _functions(sam_template, cfn, resolver)
    table_id, queue_id, intake_id, dlq_id = _queue_resources(cfn)
    connections_id = _table_keyed_on(cfn, "connectionId")
    locks_id = _table_keyed_on(cfn, "branch")
    runners_id = _table_keyed_on(cfn, "fleet")
    table_name = physical[table_id]
    return LocalStackResources(
        stack_name=stack_name,
        endpoint_url=endpoint_url,
        region=region,
        table_name=table_name,
        table_stream_arn=client.ddb.describe_table(TableName=table_name)["Table"]["LatestStreamArn"],
        task_queue_url=resolver.value({"Ref": queue_id}),
        dlq_url=resolver.value({"Ref": dlq_id}),
        dlq_intake_url=resolver.value({"Ref": intake_id}),
        connections_table=physical.get(connections_id) if connections_id else None,
        branch_locks_table=physical.get(locks_id) if locks_id else None,
        runners_table=physical.get(runners_id) if runners_id else None,
        token_secret_arn=secrets_made.get("TokenSecret"),
        runner_secret_arn=secrets_made.get("RunnerSecret"),
        functions=functions,
        websocket=_websocket(cfn, resolver, functions),
    )


class _Clients:
    def __init__(self, endpoint_url: str, region: str) -> None:
        self.cfn = aws.client("cloudformation", region=region, endpoint_url=endpoint_url)
        self.sqs = aws.client("sqs", region=region, endpoint_url=endpoint_url)
        self.ddb = aws.client("dynamodb", region=region, endpoint_url=endpoint_url)
        self.secrets = aws.client("secretsmanager", region=region, endpoint_url=endpoint_url)


def _param_string(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def _all_parameters(cfn: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    values = {k: v["Default"] for k, v in cfn.get("Parameters", {}).items() if "Default" in v}
    return {**values, **given}


def _wait_created(cfn: Any, stack_name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
        status = stack["StackStatus"]
        if status == "CREATE_COMPLETE":
            return
        if not status.endswith("IN_PROGRESS") or time.monotonic() > deadline:
            reasons = [
                f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason')}"
                for e in cfn.describe_stack_events(StackName=stack_name)["StackEvents"]
                if "FAILED" in e["ResourceStatus"]
            ]
            raise DeployError(f"stack {stack_name} is {status}: {stack.get('StackStatusReason')} {reasons}")
        time.sleep(0.05)


def _apply_table_settings(client: _Clients, template: dict[str, Any], physical: dict[str, str]) -> None:
    """Table settings moto's CloudFormation accepts but does not apply (TTL, point-in-time recovery),
    applied through the DynamoDB API from the same definition."""
    for logical_id, res in template["Resources"].items():
        if res["Type"] != "AWS::DynamoDB::Table" or logical_id not in physical:
            continue
        props = res.get("Properties", {})
        ttl = props.get("TimeToLiveSpecification") or {}
        if ttl.get("Enabled") and ttl.get("AttributeName"):
            client.ddb.update_time_to_live(
                TableName=physical[logical_id],
                TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]},
            )
        pitr = props.get("PointInTimeRecoverySpecification") or {}
        if pitr.get("PointInTimeRecoveryEnabled"):
            client.ddb.update_continuous_backups(
                TableName=physical[logical_id],
                PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
            )


def _create_secrets(
    client: _Clients, stack_name: str, cfn: dict[str, Any], dropped: dict[str, str]
) -> dict[str, str]:
    """The template's generated secrets, made through moto's Secrets Manager API (see module doc)."""
    made: dict[str, str] = {}
    for logical_id, kind in dropped.items():
        if kind != "AWS::SecretsManager::Secret":
            continue
        props = cfn["Resources"][logical_id].get("Properties", {})
        gen = props.get("GenerateSecretString") or {}
        alphabet = string.ascii_letters + string.digits
        if not gen.get("ExcludePunctuation"):
            alphabet += "!#$%&()*+,-.:;<=>?@[]^_{|}~"
        value = "".join(secrets.choice(alphabet) for _ in range(int(gen.get("PasswordLength", 32))))
        resp = client.secrets.create_secret(
            Name=f"{stack_name}-{logical_id}",
            SecretString=value,
            Description=str(props.get("Description", "")),
        )
        made[logical_id] = resp["ARN"]
    return made


class _Resolver:
    """Resolves intrinsic functions of the translated template against the local stack."""

    def __init__(
        self,
        cfn: dict[str, Any],
        parameters: dict[str, Any],
        physical: dict[str, str],
        secret_arns: dict[str, str],
        client: _Clients,
        region: str,
    ) -> None:
        self._resources = cfn.get("Resources", {})
        self._conditions = cfn.get("Conditions", {})
        self._params = parameters
        self._physical = physical
        self._secrets = secret_arns
        self._client = client
        self._pseudo = {
            "AWS::Region": region,
            "AWS::Partition": "aws",
            "AWS::AccountId": "123456789012",  # moto's default account
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": None,
        }

    def value(self, node: Any) -> Any:
        """The local value of ``node``; raises LookupError when it names something moto lacks."""
        if isinstance(node, str | int | float | bool) or node is None:
            return node
        if isinstance(node, list):
            return [self.value(n) for n in node]
        if not isinstance(node, dict) or len(node) != 1:
            return {k: self.value(v) for k, v in node.items()}
        ((fn, arg),) = node.items()
        if fn == "Ref":
            return self._ref(arg)
        if fn == "Fn::GetAtt":
            target, attr = (arg[0], arg[1]) if isinstance(arg, list) else arg.split(".", 1)
            return self._get_att(target, attr)
        if fn == "Fn::Sub":
            text, variables = (arg[0], arg[1]) if isinstance(arg, list) else (arg, {})
            local = {k: self.value(v) for k, v in variables.items()}

            def sub(m: re.Match[str]) -> str:
                name, attr = m.group(1), m.group(2)
                if name in local:
                    return str(local[name])
                return str(self._get_att(name, attr) if attr else self._ref(name))

            return _SUB_REF.sub(sub, text)
        if fn == "Fn::Join":
            return str(arg[0]).join(str(v) for v in self.value(arg[1]))
        if fn == "Fn::If":
            return self.value(arg[1] if self._condition(arg[0]) else arg[2])
        return {fn: self.value(arg)}

    def _condition(self, name: str) -> bool:
        return bool(self._eval(self._conditions[name]))

    def _eval(self, node: Any) -> Any:
        if isinstance(node, dict) and len(node) == 1:
            ((fn, arg),) = node.items()
            if fn == "Fn::Equals":
                a, b = (self._eval(x) for x in arg)
                return str(a) == str(b)
            if fn == "Fn::Not":
                return not self._eval(arg[0])
            if fn == "Fn::And":
                return all(self._eval(x) for x in arg)
            if fn == "Fn::Or":
                return any(self._eval(x) for x in arg)
            if fn == "Condition":
                return self._condition(arg)
        return self.value(node)

    def _ref(self, name: str) -> Any:
        if name in self._pseudo:
            return self._pseudo[name]
        if name in self._params:
            return self._params[name]
        if name in self._secrets:
            return self._secrets[name]
        if name in self._physical:
            if self._resources.get(name, {}).get("Type") == "AWS::SQS::Queue":
                return self._queue_url(name)
            return self._physical[name]
        raise LookupError(f"{name} is not created locally")

    def _get_att(self, name: str, attr: str) -> Any:
        kind = self._resources.get(name, {}).get("Type")
        if name not in self._physical:
            raise LookupError(f"{name}.{attr} is not created locally")
        if kind == "AWS::SQS::Queue":
            url = self._queue_url(name)
            if attr == "QueueUrl":
                return url
            attrs = self._client.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
                "Attributes"
            ]
            arn = attrs["QueueArn"]
            return {"Arn": arn, "QueueName": arn.rsplit(":", 1)[-1]}[attr]
        if kind == "AWS::DynamoDB::Table":
            table = self._client.ddb.describe_table(TableName=self._physical[name])["Table"]
            return {"Arn": table["TableArn"], "StreamArn": table.get("LatestStreamArn")}[attr]
        raise LookupError(f"{name}.{attr}: no local value")

    def _queue_url(self, name: str) -> str:
        # the stack carries AWS-style queue URLs; ask the endpoint for the one that works here
        queue_name = self._physical[name].rstrip("/").rsplit("/", 1)[-1]
        return self._client.sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]


def _function_name(code_uri: Any, logical_id: str) -> str:
    if isinstance(code_uri, str) and code_uri.rstrip("/").startswith("functions/"):
        return code_uri.rstrip("/").rsplit("/", 1)[-1]
    return logical_id


def _functions(sam: dict[str, Any], cfn: dict[str, Any], resolver: _Resolver) -> dict[str, FunctionSpec]:
    resources = cfn["Resources"]
    specs: dict[str, FunctionSpec] = {}
    for logical_id, res in resources.items():
        if res["Type"] != "AWS::Lambda::Function":
            continue
        props = res["Properties"]
        code_uri = sam["Resources"].get(logical_id, {}).get("Properties", {}).get("CodeUri", "")
        env: dict[str, str] = {}
        for key, raw in (props.get("Environment") or {}).get("Variables", {}).items():
            try:
                val = resolver.value(raw)
            except LookupError as e:
                logger.debug("%s: %s has no local value (%s)", logical_id, key, e)
                continue
            if val is not None:
                env[key] = str(val)
        specs[_function_name(code_uri, logical_id)] = FunctionSpec(
            logical_id=logical_id,
            name=_function_name(code_uri, logical_id),
            code_uri=str(code_uri),
            handler=props["Handler"],
            timeout=int(props.get("Timeout", 3)),
            environment=env,
            events=_events(logical_id, resources, resolver),
        )
    return specs


def _targets_function(node: Any, logical_id: str) -> bool:
    return logical_id in references(node)


def _events(logical_id: str, resources: dict[str, Any], resolver: _Resolver) -> list[EventSource]:
    events: list[EventSource] = []
    for event_id, res in resources.items():
        props = res.get("Properties", {})
        name = event_id.removeprefix(logical_id)
        if res["Type"] == "AWS::Lambda::EventSourceMapping" and _targets_function(
            props.get("FunctionName"), logical_id
        ):
            source = props["EventSourceArn"]
            # the resource it reads (a stream ARN may be an Fn::If over a condition and a parameter)
            target = next(r for r in sorted(references(source)) if r in resources)
            is_stream = resources[target]["Type"] == "AWS::DynamoDB::Table"
            patterns = [
                json.loads(f["Pattern"]) for f in (props.get("FilterCriteria") or {}).get("Filters", [])
            ]
            retries = props.get("MaximumRetryAttempts")
            events.append(
                EventSource(
                    name=name,
                    type="DynamoDB" if is_stream else "SQS",
                    batch_size=int(resolver.value(props["BatchSize"])) if "BatchSize" in props else None,
                    filter_patterns=patterns,
                    function_response_types=list(props.get("FunctionResponseTypes", [])),
                    maximum_retry_attempts=int(resolver.value(retries)) if retries is not None else None,
                    bisect_batch_on_function_error=bool(props.get("BisectBatchOnFunctionError", False)),
                    starting_position=props.get("StartingPosition"),
                    table_name=resolver.value({"Ref": target}) if is_stream else None,
                    queue_url=None if is_stream else resolver.value({"Ref": target}),
                )
            )
        elif res["Type"] == "AWS::Events::Rule" and _targets_function(props.get("Targets"), logical_id):
            events.append(
                EventSource(
                    name=name, type="Schedule", schedule=str(resolver.value(props.get("ScheduleExpression")))
                )
            )
    return events


def _queue_resources(cfn: dict[str, Any]) -> tuple[str, str, str, str]:
    """The queue table, the task queue, its dead-letter intake and the DLQ, found by their relations
    rather than names: the table whose stream feeds a function; the queue with a RedrivePolicy that
    no queue redrives to; the queue it redrives to; the last queue of that chain."""
    resources = cfn["Resources"]
    table = next(
        k
        for k, v in resources.items()
        if v["Type"] == "AWS::DynamoDB::Table" and "StreamSpecification" in v.get("Properties", {})
    )
    redrives = {
        k: next(iter(references(v["Properties"]["RedrivePolicy"]["deadLetterTargetArn"])))
        for k, v in resources.items()
        if v["Type"] == "AWS::SQS::Queue" and "RedrivePolicy" in v["Properties"]
    }
    queue = next(k for k in redrives if k not in redrives.values())
    intake = dlq = redrives[queue]
    while dlq in redrives:
        dlq = redrives[dlq]
    return table, queue, intake, dlq


def _table_keyed_on(cfn: dict[str, Any], attribute: str) -> str | None:
    """The table whose partition key is ``attribute`` (the connections table is keyed on
    ``connectionId``, the branch locks on ``branch``, the runners' heartbeats on ``fleet``): found
    by its schema, not by its name."""
    for logical_id, res in cfn["Resources"].items():
        if res["Type"] != "AWS::DynamoDB::Table":
            continue
        keys = res.get("Properties", {}).get("KeySchema", [])
        if any(k.get("KeyType") == "HASH" and k.get("AttributeName") == attribute for k in keys):
            return str(logical_id)
    return None


def _websocket(
    cfn: dict[str, Any], resolver: _Resolver, functions: dict[str, FunctionSpec]
) -> WebSocketSpec | None:
    resources = cfn["Resources"]
    api = next((k for k, v in resources.items() if v["Type"] == "AWS::ApiGatewayV2::Api"), None)
    if api is None:
        return None
    by_logical = {spec.logical_id: spec.name for spec in functions.values()}

    def function_of(uri: Any) -> str | None:
        return next((by_logical[r] for r in references(uri) if r in by_logical), None)

    def of_api(kind: str) -> dict[str, dict[str, Any]]:
        return {
            k: v["Properties"]
            for k, v in resources.items()
            if v["Type"] == kind and api in references(v["Properties"].get("ApiId"))
        }

    integrations = {
        k: function_of(p.get("IntegrationUri")) for k, p in of_api("AWS::ApiGatewayV2::Integration").items()
    }
    declared = of_api("AWS::ApiGatewayV2::Integration")
    mocks = {k for k, p in declared.items() if p.get("IntegrationType") == "MOCK"}
    mock_replies: dict[str, str | None] = {}
    for props in of_api("AWS::ApiGatewayV2::IntegrationResponse").values():
        integration = next((r for r in references(props.get("IntegrationId")) if r in mocks), None)
        if integration and props.get("IntegrationResponseKey") == "$default":
            mock_replies[integration] = (props.get("ResponseTemplates") or {}).get("$default")
    answered = {
        r for p in of_api("AWS::ApiGatewayV2::RouteResponse").values() for r in references(p.get("RouteId"))
    }
    routes: dict[str, str] = {}
    mock_routes: dict[str, str | None] = {}
    for logical, props in of_api("AWS::ApiGatewayV2::Route").items():
        targets = references(props.get("Target"))
        target = next((integrations[r] for r in targets if r in integrations and integrations[r]), None)
        mock = next((r for r in targets if r in mocks), None)
        if target:
            routes[props["RouteKey"]] = target
        elif mock:
            mock_routes[props["RouteKey"]] = mock_replies.get(mock) if logical in answered else None
    authorizers = of_api("AWS::ApiGatewayV2::Authorizer")
    authorizer = next(iter(authorizers.values()), None)
    stage = next(iter(of_api("AWS::ApiGatewayV2::Stage").values()), {})
    return WebSocketSpec(
        route_selection_expression=resources[api]["Properties"].get(
            "RouteSelectionExpression", "$request.body.action"
        ),
        stage=str(resolver.value(stage.get("StageName", "$default"))),
        routes=routes,
        authorizer=function_of(authorizer.get("AuthorizerUri")) if authorizer else None,
        identity_sources=list(authorizer.get("IdentitySource", [])) if authorizer else [],
        mock_routes=mock_routes,
    )
