"""The runner's settings: one model, validated at start-up, passed down from ``main``."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from shared.branches import DEFAULT_PROTECTED
from shared.config import DEFAULT_LOCKS_TABLE, DEFAULT_TABLE, AwsKeySettings, AwsSettings
from shared.runners import DEFAULT_RUNNERS_TABLE


def _comma_list(v: object) -> object:
    """``a, b,c`` (as PROTECTED_BRANCHES is written) as ``["a", "b", "c"]``."""
    if isinstance(v, str):
        return [p.strip() for p in v.split(",") if p.strip()]
    return v


def _default_runner_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class RunnerSettings(AwsKeySettings):
    """Everything the runner daemon reads from its environment (at start-up through
    ``shared.config.load_settings``, which adds a local stack's ``.aipm/local.json`` below it)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    aws_region: str = Field(default="us-east-1", validation_alias="AWS_REGION")
    aws_endpoint_url: str | None = Field(default=None, validation_alias="AWS_ENDPOINT_URL")
    table_name: str = Field(default=DEFAULT_TABLE, validation_alias="TABLE_NAME")
    task_queue_url: str = Field(validation_alias="TASK_QUEUE_URL")
    # one task per branch, enforced by a strongly consistent lock item per branch
    branch_locks_table: str = Field(default=DEFAULT_LOCKS_TABLE, validation_alias="BRANCH_LOCKS_TABLE")

    runner_id: str = Field(default_factory=_default_runner_id, validation_alias="RUNNER_ID")
    slots: int = Field(default=2, ge=1, le=64, validation_alias="RUNNER_SLOTS")
    wait_time_seconds: int = Field(default=20, ge=0, le=20, validation_alias="SQS_WAIT_SECONDS")
    lease_seconds: float = Field(default=120.0, gt=1, validation_alias="LEASE_SECONDS")
    shutdown_grace_seconds: float = Field(default=30.0, ge=0, validation_alias="SHUTDOWN_GRACE_SECONDS")
    # a running task's output goes to its row's logTail this often at most
    log_tail_seconds: float = Field(default=5.0, ge=0.2, le=300, validation_alias="LOG_TAIL_SECONDS")
    # a task's message stays hidden this much longer than its lease (see daemon.VISIBILITY_MARGIN)
    visibility_margin_seconds: int = Field(
        default=5, ge=0, le=300, validation_alias="VISIBILITY_MARGIN_SECONDS"
    )

    git_remote: str = Field(validation_alias="GIT_REMOTE")
    repo_path: Path = Field(default=Path.home() / ".aipm" / "repo", validation_alias="REPO_PATH")
    worktrees_dir: Path | None = Field(default=None, validation_alias="WORKTREES_DIR")
    default_branch: str = Field(default="main", validation_alias="DEFAULT_BRANCH")
    # clone, fetch and push are killed after this long: a stalled remote never holds a task
    git_timeout_seconds: float = Field(default=120.0, gt=0, validation_alias="GIT_TIMEOUT")
    protected_branches: Annotated[list[str], NoDecode] = Field(
        default=list(DEFAULT_PROTECTED), validation_alias="PROTECTED_BRANCHES"
    )
    # the runner's git reads no system or global config (nothing an agent could have changed): an
    # HTTPS remote that needs a password gets it from this credential helper, as git's
    # credential.helper takes it (e.g. "store --file /etc/aipm/git-credentials"); ssh remotes use
    # GIT_SSH_COMMAND and SSH_AUTH_SOCK from the runner's environment
    git_credential_helper: str | None = Field(default=None, validation_alias="GIT_CREDENTIAL_HELPER")
    git_author_name: str = Field(default="aipm runner", validation_alias="GIT_AUTHOR_NAME")
    git_author_email: str = Field(
        default="aipm-runner@users.noreply.local", validation_alias="GIT_AUTHOR_EMAIL"
    )
    max_details_bytes: int = Field(default=64 * 1024, gt=0, validation_alias="MAX_DETAILS_BYTES")
    fail_on_no_changes: bool = Field(default=True, validation_alias="FAIL_ON_NO_CHANGES")
    no_changes_error: str = Field(default="agent made no changes", validation_alias="NO_CHANGES_ERROR")
    keep_failed_worktrees: bool = Field(default=False, validation_alias="KEEP_FAILED_WORKTREES")
    # a run the model API rate-limited goes back to pending, claimed again after this long
    rate_limit_backoff: float = Field(default=60.0, ge=0, validation_alias="RATE_LIMIT_BACKOFF_SECONDS")

    # its heartbeat record (`aipm runners`): written every HEARTBEAT_SECONDS (default a quarter of
    # the lease), kept RUNNER_RECORD_TTL_SECONDS after the last one
    runners_table: str = Field(default=DEFAULT_RUNNERS_TABLE, validation_alias="RUNNERS_TABLE")
    heartbeat_seconds: float | None = Field(default=None, gt=0, validation_alias="HEARTBEAT_SECONDS")
    runner_record_ttl_seconds: int = Field(default=3600, ge=60, validation_alias="RUNNER_RECORD_TTL_SECONDS")
    # a runner whose agent is not logged in takes no task, and asks the agent again this often
    agent_login_recheck_seconds: float = Field(
        default=60.0, gt=0, validation_alias="AGENT_LOGIN_RECHECK_SECONDS"
    )

    # Refine terminals: the runner's one outbound WebSocket connection (unset: no terminals)
    ws_url: str | None = Field(default=None, validation_alias=AliasChoices("WS_URL", "WEBSOCKET_URL"))
    runner_secret: SecretStr | None = Field(default=None, validation_alias="RUNNER_SECRET")
    runner_secret_arn: str | None = Field(default=None, validation_alias="RUNNER_SECRET_ARN")

    # the instance's stop notices (ec2_runner/instance_notices.py): a scale-in held by the group's
    # lifecycle hook, a Spot interruption; unset (off EC2) nothing is watched
    instance_metadata_url: str | None = Field(default=None, validation_alias="INSTANCE_METADATA_URL")
    instance_notice_poll_seconds: float = Field(
        default=5.0, gt=0, le=60, validation_alias="INSTANCE_NOTICE_POLL_SECONDS"
    )
    autoscaling_group_name: str | None = Field(default=None, validation_alias="AUTOSCALING_GROUP_NAME")
    lifecycle_hook_name: str | None = Field(default=None, validation_alias="LIFECYCLE_HOOK_NAME")
    # botocore's own name for the Auto Scaling endpoint (the tests' stand-in; unset: AWS_ENDPOINT_URL)
    autoscaling_endpoint_url: str | None = Field(
        default=None, validation_alias="AWS_ENDPOINT_URL_AUTO_SCALING"
    )

    # the JSON log lines (and EMF metrics) also appended to this file, which the CloudWatch agent
    # ships (the user data sets /var/log/aipm/runner.log); stderr (journald) gets them either way
    log_file: Path | None = Field(default=None, validation_alias="LOG_FILE")

    @field_validator("protected_branches", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        return _comma_list(v)

    @property
    def worktrees(self) -> Path:
        return self.worktrees_dir or self.repo_path.parent / "worktrees"

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeat records: a few per lease."""
        return self.heartbeat_seconds or max(1.0, self.lease_seconds / 4)


class CliSettings(AwsKeySettings, AwsSettings):
    """What the operator commands (``aipm list``, ``token``, ``terminal``, ...) read."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    # ``aipm submit`` refuses what the runner would, by the same variables (a runner host's own
    # values may differ: the runner checks again)
    protected_branches: Annotated[list[str], NoDecode] = Field(
        default=list(DEFAULT_PROTECTED), validation_alias="PROTECTED_BRANCHES"
    )
    max_details_bytes: int = Field(default=64 * 1024, gt=0, validation_alias="MAX_DETAILS_BYTES")
    token_secret: SecretStr | None = Field(default=None, validation_alias="TOKEN_SECRET")
    token_secret_arn: str | None = Field(default=None, validation_alias="TOKEN_SECRET_ARN")
    ws_url: str | None = Field(default=None, validation_alias=AliasChoices("WS_URL", "WEBSOCKET_URL"))
    runners_table: str = Field(default=DEFAULT_RUNNERS_TABLE, validation_alias="RUNNERS_TABLE")

    @field_validator("protected_branches", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        return _comma_list(v)
