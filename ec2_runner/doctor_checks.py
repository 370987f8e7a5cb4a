"""``aipm doctor``'s checks: can this host run tasks? Each check ends in a sentence a person can act
on. Run by the systemd unit before the daemon and by the boot (its exit code is the instance's
``cfn-signal``), so its AWS calls are the runner's (its role grants them, template.yaml).

The checks read the runner's own settings, as the daemon would, but a missing setting is one
check's failure sentence rather than a validation error: the report is whole even on a host that
is half set up.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
)
from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import SettingsConfigDict

from shared import aws
from shared.config import DEFAULT_TABLE, AwsKeySettings
from shared.store import STATUS_INDEX

CHECK_TIMEOUT = 20.0  # seconds any one network step may take
PROBE_REF = "refs/heads/kiro-wip/aipm-doctor"  # a dry-run push names it; nothing is written there
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


class Check(BaseModel):
    """One check's outcome: ``ok`` True (passed), False (failed), None (skipped: not configured or
    blocked by an earlier failure)."""

    name: str
    ok: bool | None
    message: str

    @property
    def status(self) -> str:
        return {True: "ok", False: "FAIL", None: "skip"}[self.ok]


class DoctorSettings(AwsKeySettings):
    """The runner's settings as the checks read them: all optional, so a missing one is a sentence."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    aws_region: str | None = Field(default=None, validation_alias="AWS_REGION")
    aws_endpoint_url: str | None = Field(default=None, validation_alias="AWS_ENDPOINT_URL")
    table_name: str = Field(default=DEFAULT_TABLE, validation_alias="TABLE_NAME")
    task_queue_url: str | None = Field(default=None, validation_alias="TASK_QUEUE_URL")
    git_remote: str | None = Field(default=None, validation_alias="GIT_REMOTE")
    git_credential_helper: str | None = Field(default=None, validation_alias="GIT_CREDENTIAL_HELPER")
    git_timeout_seconds: float = Field(default=120.0, gt=0, validation_alias="GIT_TIMEOUT")
    ws_url: str | None = Field(default=None, validation_alias="WS_URL")
    websocket_url: str | None = Field(default=None, validation_alias="WEBSOCKET_URL")
    runner_secret: SecretStr | None = Field(default=None, validation_alias="RUNNER_SECRET")
    runner_secret_arn: str | None = Field(default=None, validation_alias="RUNNER_SECRET_ARN")
    runner_id: str = Field(default="aipm-doctor", validation_alias="RUNNER_ID")

    @property
    def where(self) -> str:
        region = self.aws_region or "no region"
        return f"{self.aws_endpoint_url} ({region})" if self.aws_endpoint_url else f"AWS {region}"

    @property
    def websocket(self) -> str | None:
        return self.ws_url or self.websocket_url or None


class Doctor:
    """Runs every check once, in order; later checks are skipped when AWS itself is unreachable."""

    def __init__(self, settings: DoctorSettings, agent_checks: Callable[[], list[Check]]) -> None:
        self.s = settings
        self._agent_checks = agent_checks

    def client(self, service: str) -> Any:
        # one attempt each: a report that waits through botocore's backoff says nothing sooner
        return aws.client(
            service,
            region=self.s.aws_region,
            endpoint_url=self.s.aws_endpoint_url,
            keys=self.s.aws_keys,
            read_timeout=CHECK_TIMEOUT,
            retries={"mode": "standard", "max_attempts": 1},
        )

    def run(self) -> list[Check]:
        checks = [self.aws()]
        if checks[0].ok:
            checks += [self.table(), self.queues()]
        else:
            checks += [
                Check(name="table", ok=None, message="skipped: AWS is not reachable with these credentials"),
                Check(name="queues", ok=None, message="skipped: AWS is not reachable with these credentials"),
            ]
        checks += [self.websocket(), self.git(), *self._agent_checks()]
        return checks

    # -- AWS ---------------------------------------------------------------------------------
    def _aws_failure(self, name: str, e: Exception) -> Check:
        if isinstance(e, EndpointConnectionError):
            return Check(
                name=name,
                ok=False,
                message=f"cannot reach {self.s.where}: is the stack running (`aipm local up`), and "
                "AWS_ENDPOINT_URL / AWS_REGION right?",
            )
        if isinstance(e, NoCredentialsError):
            return Check(
                name=name,
                ok=False,
                message=f"no AWS credentials found for {self.s.where}: run with the runner's instance "
                "role, or set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
            )
        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            return Check(
                name=name,
                ok=False,
                message=f"{self.s.where} refused the call ({err.get('Code', '?')}: {err.get('Message', '')})",
            )
        return Check(name=name, ok=False, message=f"AWS call failed at {self.s.where}: {e}")

    def aws(self) -> Check:
        region = self.s.aws_region
        if not region:
            return Check(name="aws", ok=False, message="AWS_REGION is not set: set it to the stack's region")
        if not _REGION.match(region):
            return Check(
                name="aws", ok=False, message=f"AWS_REGION {region!r} is not a region name (e.g. us-east-1)"
            )
        try:
            who = self.client("sts").get_caller_identity()
        except (ClientError, BotoCoreError, NoRegionError) as e:
            return self._aws_failure("aws", e)
        return Check(
            name="aws", ok=True, message=f"credentials work: account {who.get('Account')} at {self.s.where}"
        )

    def table(self) -> Check:
        name = self.s.table_name
        try:
            table = self.client("dynamodb").describe_table(TableName=name)["Table"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return Check(
                    name="table",
                    ok=False,
                    message=f"no table {name!r} at {self.s.where}: deploy the stack, or set TABLE_NAME",
                )
            return self._aws_failure("table", e)
        except BotoCoreError as e:
            return self._aws_failure("table", e)
        stream = table.get("StreamSpecification") or {}
        if not stream.get("StreamEnabled"):
            return Check(
                name="table",
                ok=False,
                message=f"the table {name!r} has no stream, so no task is ever signalled: turn it on "
                "(NEW_AND_OLD_IMAGES; README, 'Migrating from the EC2 terminal server')",
            )
        if stream.get("StreamViewType") != "NEW_AND_OLD_IMAGES":
            return Check(
                name="table",
                ok=False,
                message=f"the table {name!r} streams {stream.get('StreamViewType')}: dispatch needs "
                "NEW_AND_OLD_IMAGES",
            )
        index = next(
            (i for i in table.get("GlobalSecondaryIndexes", []) if i["IndexName"] == STATUS_INDEX), None
        )
        if index is None:
            return Check(
                name="table",
                ok=False,
                message=f"the table {name!r} has no {STATUS_INDEX}: add it (README, 'Migrating from the EC2 "
                "terminal server'); listings and the reconciler need it",
            )
        if index.get("IndexStatus", "ACTIVE") != "ACTIVE":
            return Check(
                name="table",
                ok=False,
                message=f"{STATUS_INDEX} of {name!r} is {index['IndexStatus']}: wait until it is ACTIVE",
            )
        return Check(name="table", ok=True, message=f"table {name!r}: stream on, {STATUS_INDEX} active")

    def queues(self) -> Check:
        url = self.s.task_queue_url
        if not url:
            return Check(
                name="queues",
                ok=False,
                message="TASK_QUEUE_URL is not set: set it to the stack's TaskQueueUrl output",
            )
        sqs = self.client("sqs")
        try:
            attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn", "RedrivePolicy"])
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if "NonExistentQueue" in code:
                return Check(
                    name="queues", ok=False, message=f"no queue at {url}: set TASK_QUEUE_URL to TaskQueueUrl"
                )
            return self._aws_failure("queues", e)
        except BotoCoreError as e:
            return self._aws_failure("queues", e)
        redrive = attrs.get("Attributes", {}).get("RedrivePolicy")
        if not redrive:
            return Check(
                name="queues",
                ok=False,
                message=f"the task queue {url} has no dead-letter queue (RedrivePolicy): a poison task would "
                "be retried forever; deploy the stack's queues",
            )
        policy = json.loads(redrive)
        base = url.rsplit("/", 1)[0]
        # the stack makes its queues in one account and region: a queue's URL is the task queue's with
        # its name (no GetQueueUrl to grant). The task queue redrives to the dead-letter intake, which
        # the dead-letter function files from into the queue operators read (its own RedrivePolicy)
        dlq_name = str(policy.get("deadLetterTargetArn", "")).rsplit(":", 1)[-1]
        for _ in range(2):
            try:
                dlq = sqs.get_queue_attributes(
                    QueueUrl=f"{base}/{dlq_name}",
                    AttributeNames=["ApproximateNumberOfMessages", "RedrivePolicy"],
                )
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code", "")
                if "NonExistentQueue" in code:
                    return Check(
                        name="queues",
                        ok=False,
                        message=f"the dead-letter queue {dlq_name!r} named by the task queue does not exist",
                    )
                return self._aws_failure("queues", e)
            except BotoCoreError as e:
                return self._aws_failure("queues", e)
            onward = dlq.get("Attributes", {}).get("RedrivePolicy")
            if not onward:
                break
            dlq_name = str(json.loads(onward).get("deadLetterTargetArn", "")).rsplit(":", 1)[-1]
        held = int(dlq.get("Attributes", {}).get("ApproximateNumberOfMessages", 0))
        note = f"; it holds {held} message(s): see `aipm dlq list`" if held else ""
        return Check(
            name="queues",
            ok=True,
            message=f"task queue and its dead-letter queue {dlq_name!r} "
            f"(maxReceiveCount {policy.get('maxReceiveCount')}){note}",
        )

    # -- WebSocket ---------------------------------------------------------------------------
    def _runner_secret(self) -> str | None:
        """The runner secret, read the way the runner reads it (``SecretSource``), through this
        check's fail-fast client."""
        from shared.tokens import SecretSource

        value = self.s.runner_secret.get_secret_value() if self.s.runner_secret else None
        source = SecretSource(value, self.s.runner_secret_arn, lambda: self.client("secretsmanager"))
        return source.get() or None

    def websocket(self) -> Check:
        url = self.s.websocket
        if not url:
            return Check(name="websocket", ok=None, message="WS_URL is not set: Refine terminals are off")
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            return Check(
                name="websocket",
                ok=False,
                message=f"WS_URL {url!r} is not a ws:// or wss:// URL: set it to the stack's WebSocketUrl",
            )
        from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

        try:
            secret = self._runner_secret()
        except GetParameterError as e:  # the provider's wrapper of the AWS error it met
            cause = e.__context__ if isinstance(e.__context__, ClientError | BotoCoreError) else e
            return Check(
                name="websocket",
                ok=False,
                message=f"could not read the runner secret {self.s.runner_secret_arn}: "
                f"{self._aws_failure('websocket', cause).message}",
            )
        if not secret:
            return Check(
                name="websocket",
                ok=False,
                message="no RUNNER_SECRET or RUNNER_SECRET_ARN: the runner cannot open its WebSocket",
            )
        from websockets.exceptions import InvalidStatus, WebSocketException
        from websockets.sync.client import connect

        from ec2_runner.ws_client import _with_token
        from shared.tokens import mint_runner_token

        token = mint_runner_token(secret, f"{self.s.runner_id}-doctor", ttl=60)
        try:
            with connect(_with_token(url, token), open_timeout=CHECK_TIMEOUT, close_timeout=2):
                pass
        except InvalidStatus as e:
            code = e.response.status_code
            return Check(
                name="websocket",
                ok=False,
                message=f"the WebSocket at {url} refused the runner's token (HTTP {code}): RUNNER_SECRET_ARN "
                "must be the stack's RunnerSecret",
            )
        except (OSError, TimeoutError, WebSocketException) as e:
            return Check(name="websocket", ok=False, message=f"cannot reach the WebSocket at {url}: {e}")
        return Check(name="websocket", ok=True, message=f"the runner's token opens {url}")

    # -- git ---------------------------------------------------------------------------------
    def git(self) -> Check:
        remote = self.s.git_remote
        if not remote:
            return Check(
                name="git",
                ok=False,
                message="GIT_REMOTE is not set: set it to the repository's URL (GitRemoteUrl)",
            )
        from ec2_runner.safegit import GitTimeoutError, SafeGit

        timeout = min(self.s.git_timeout_seconds, 60.0)
        with tempfile.TemporaryDirectory(prefix="aipm-doctor-") as tmp:
            probe = Path(tmp) / "probe"
            # a one-commit repository of our own: what the dry-run push offers the remote
            author = ["-c", "user.name=aipm doctor", "-c", "user.email=aipm-doctor@users.noreply.local"]
            for args in (
                ["init", "-q", str(probe)],
                [*author, "-C", str(probe), "commit", "-q", "--allow-empty", "-m", "aipm doctor probe"],
            ):
                subprocess.run(
                    ["git", "-c", "init.defaultBranch=main", *args],
                    check=True,
                    capture_output=True,
                    timeout=30,
                    # no system or user config: the probe is ours alone
                    env={"PATH": os.environ.get("PATH", os.defpath), "GIT_CONFIG_NOSYSTEM": "1", "HOME": tmp},
                )
            git = SafeGit(
                probe / ".git",
                remote,
                Path(tmp) / ".probe.runner-git",
                author=("aipm doctor", "aipm-doctor@users.noreply.local"),
                credential_helper=self.s.git_credential_helper,
            )
            git_dir = ["--git-dir", str(probe / ".git")]
            steps = (
                ("read", ["ls-remote", "--heads", remote]),
                ("push", [*git_dir, "push", "--dry-run", "--porcelain", remote, f"HEAD:{PROBE_REF}"]),
            )
            for what, args in steps:
                try:
                    code, _, err = git.run_full(args, bare=True, timeout=timeout)
                except GitTimeoutError:
                    return Check(
                        name="git",
                        ok=False,
                        message=f"git {what} of {remote} took over {timeout:g} s: "
                        "is the host reachable from here?",
                    )
                if code != 0:
                    line = _last_line(err)
                    hint = (
                        "check GIT_REMOTE, the network, and the credential (GIT_CREDENTIAL_HELPER; "
                        "the token secret)"
                        if what == "read"
                        else "the credential can read but not push: give its token write access"
                    )
                    return Check(
                        name="git", ok=False, message=f"git {what} of {remote} failed ({line}): {hint}"
                    )
        return Check(name="git", ok=True, message=f"{remote}: reachable, and a push is allowed (dry run)")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no message"


def agent_checks() -> list[Check]:
    """The agent's sandbox, installed, logged in: as the runner's own settings make them."""
    from ec2_runner.agent_settings import AgentSettings
    from ec2_runner.agents import make_agent
    from ec2_runner.sandbox import SandboxSettings, SandboxUnavailable, make_sandbox
    from shared.config import load_settings

    try:
        settings = load_settings(AgentSettings)
        sandbox_settings = load_settings(SandboxSettings)
    except ValidationError as e:
        first = e.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "agent settings"
        return [Check(name="agent", ok=False, message=f"agent settings: {name}: {first['msg']}")]
    checks: list[Check] = []
    sandbox = None
    if sandbox_settings.mode != "off":
        try:
            sandbox = make_sandbox(sandbox_settings)
            checks.append(
                Check(name="sandbox", ok=True, message="bubblewrap runs here: agents are sandboxed")
            )
        except SandboxUnavailable as e:
            checks.append(Check(name="sandbox", ok=False, message=str(e)))
    else:
        checks.append(Check(name="sandbox", ok=None, message="AGENT_SANDBOX=off: agents run unsandboxed"))
    try:
        agent: Any = make_agent(settings, sandbox)
        if agent.name == "demo":
            checks.append(
                Check(
                    name="agent",
                    ok=True,
                    message="the DEMO agent (a stand-in that writes TASKS.md, no coding agent): AGENT=kiro "
                    "for Kiro",
                )
            )
            return checks
        where = agent.installed()
        if where is None:
            checks.append(
                Check(
                    name="agent",
                    ok=False,
                    message=f"agent command not found: {agent.argv[0]} is not on the runner's PATH; install "
                    "it (AgentInstallCommand) or set AGENT_COMMAND",
                )
            )
            return checks
        started = time.monotonic()
        status = agent.login_status()
        took = time.monotonic() - started
        ok = True if status.logged_in is None else status.logged_in
        checks.append(
            Check(name="agent", ok=ok, message=f"{agent.name} at {where}: {status.detail} ({took:.1f} s)")
        )
        return checks
    finally:
        if sandbox is not None:
            sandbox.close()


def run_checks() -> list[Check]:
    """Every check against this process's settings (the environment, or a local stack's file)."""
    from shared.config import load_settings

    try:
        settings = load_settings(DoctorSettings)
    except ValidationError as e:
        first = e.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "settings"
        return [Check(name="settings", ok=False, message=f"{name}: {first['msg']}")]
    return Doctor(settings, agent_checks).run()
