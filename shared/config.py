"""Configuration from the environment, validated once per process.

Names follow the seed where it had them (``AWS_REGION``, ``REPO_PATH``, ``PORT``);
``AWS_ENDPOINT_URL`` points every client at a local stack (the moto server) or is left unset for AWS.

A process started by hand in a local stack's folder (``aipm runner``, ``aipm list``, ...) also takes
defaults from that stack's ``.aipm/local.json``: ``load_settings`` adds it as a settings source below
the environment. Nothing here writes ``os.environ``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, TypeVar, cast

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from shared.aws import Keys

DEFAULT_TABLE = "aipm-amazon-q-queue"
DEFAULT_LOCKS_TABLE = "aipm-branch-locks"  # the template's default NamePrefix

# what `aipm local up` writes in the folder it runs in (relative: read from the working folder)
LOCAL_STACK_FILE = Path(".aipm") / "local.json"
# an environment that names either of these points at its own stack: local.json is then not read
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "TASK_QUEUE_URL")

S = TypeVar("S", bound=BaseSettings)


def environment_names_endpoints() -> bool:
    """Whether the environment names a stack of its own (then a local stack's file is ignored)."""
    return any(os.environ.get(name) for name in ENDPOINT_VARIABLES)


class LocalStackSource(JsonConfigSettingsSource):
    """The ``env`` map of ``aipm local up``'s ``.aipm/local.json`` (environment names to values), read
    as settings by those names; empty when the environment names endpoints or there is no file."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path = LOCAL_STACK_FILE) -> None:
        super().__init__(settings_cls, json_file=None if environment_names_endpoints() else path)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        env = super()._read_file(file_path).get("env") or {}
        return {str(k): str(v) for k, v in env.items()}  # strings, as the environment would hold them


def local_stack_in_use(path: Path = LOCAL_STACK_FILE) -> bool:
    """Whether settings loaded with ``load_settings`` here take defaults from a local stack."""
    return bool(LocalStackSource(BaseSettings, path).json_data)


class _LocalStackDefaults(BaseSettings):
    """Mixed in by ``load_settings``: a model's own sources first, the local stack's file last."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        own = super().settings_customise_sources(
            settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
        )
        return (*own, LocalStackSource(settings_cls))


@functools.cache
def _with_local_stack(settings_cls: type[S]) -> type[S]:
    mixed = type(
        settings_cls.__name__,
        (_LocalStackDefaults, settings_cls),
        {"__module__": settings_cls.__module__, "__doc__": settings_cls.__doc__},
    )
    return cast("type[S]", mixed)


def load_settings(settings_cls: type[S]) -> S:
    """``settings_cls`` as a process started in this folder sees it, validated: the environment,
    then the defaults of a local stack's ``.aipm/local.json`` if the environment names no endpoints.

    For start-up code (``main``, the CLI): a model built directly reads the environment only, so a
    stray ``.aipm/local.json`` never changes what a library caller or a test gets."""
    return _with_local_stack(settings_cls)()


class AwsKeySettings(BaseSettings):
    """Static AWS keys when a source names them (the local stack's dummy keys come from its file);
    unset, boto3 finds its own (instance role, profile, ...)."""

    aws_access_key_id: str | None = Field(default=None, validation_alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = Field(default=None, validation_alias="AWS_SECRET_ACCESS_KEY")
    aws_session_token: SecretStr | None = Field(default=None, validation_alias="AWS_SESSION_TOKEN")

    @property
    def aws_keys(self) -> Keys | None:
        """The keys for ``shared.aws.client``, or None for boto3's own credential chain."""
        if not (self.aws_access_key_id and self.aws_secret_access_key):
            return None
        token = self.aws_session_token.get_secret_value() if self.aws_session_token else None
        return Keys(self.aws_access_key_id, self.aws_secret_access_key.get_secret_value(), token)


class AwsSettings(BaseSettings):
    """Where the AWS side lives. Shared by the Lambdas, the runner and the CLI."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    aws_region: str = Field(default="us-east-1", validation_alias="AWS_REGION")
    aws_endpoint_url: str | None = Field(default=None, validation_alias="AWS_ENDPOINT_URL")
    table_name: str = Field(default=DEFAULT_TABLE, validation_alias="TABLE_NAME")
    task_queue_url: str | None = Field(default=None, validation_alias="TASK_QUEUE_URL")
    # one task per branch: the claim's lock items (the dead-letter path frees them too)
    branch_locks_table: str = Field(default=DEFAULT_LOCKS_TABLE, validation_alias="BRANCH_LOCKS_TABLE")


class DispatchSettings(AwsSettings):
    """The dispatch function: where it sends its signals."""

    task_queue_url: str = Field(validation_alias="TASK_QUEUE_URL")


class DeadLetterSettings(AwsSettings):
    """The dead-letter function: the queue table (it reads and fails rows), the dead-letter queue
    (it files each letter there for operators) and, for tasks whose receives mostly never reached a
    claim, the task queue (it signals them once more)."""

    dlq_url: str = Field(validation_alias="DLQ_URL")

    task_queue_url: str | None = Field(default=None, validation_alias="TASK_QUEUE_URL")
    max_receive_count: int = Field(default=5, ge=1, validation_alias="MAX_RECEIVE_COUNT")
    max_requeues: int = Field(default=2, ge=0, validation_alias="MAX_REQUEUES")


class ReconcilerSettings(AwsSettings):
    """The reconciler: which rows count as lost, and where it re-signals them."""

    task_queue_url: str = Field(validation_alias="TASK_QUEUE_URL")
    pending_age_seconds: float = Field(default=60, ge=0, validation_alias="PENDING_AGE_SECONDS")
    stale_lease_seconds: float = Field(default=60, ge=0, validation_alias="STALE_LEASE_SECONDS")
