"""Configuration from the environment, validated once per process.

Names follow the seed where it had them (``AWS_REGION``, ``REPO_PATH``, ``PORT``);
``AWS_ENDPOINT_URL`` points every client at a local stack (the moto server) or is left unset for AWS.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_TABLE = "aipm-amazon-q-queue"


class AwsSettings(BaseSettings):
    """Where the AWS side lives. Shared by the Lambdas, the runner and the CLI."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    aws_region: str = Field(default="us-east-1", validation_alias="AWS_REGION")
    aws_endpoint_url: str | None = Field(default=None, validation_alias="AWS_ENDPOINT_URL")
    table_name: str = Field(default=DEFAULT_TABLE, validation_alias="TABLE_NAME")
    task_queue_url: str | None = Field(default=None, validation_alias="TASK_QUEUE_URL")
    # one task per branch: the claim's lock items (the dead-letter path frees them too)
    branch_locks_table: str = Field(validation_alias="BRANCH_LOCKS_TABLE")


class DispatchSettings(AwsSettings):
    """The dispatch function: where it sends its signals."""

    task_queue_url: str = Field(validation_alias="TASK_QUEUE_URL")


class DeadLetterSettings(AwsSettings):
    """The dead-letter function: the queue table (it reads and fails rows) and, for tasks whose
    receives mostly never reached a claim, the task queue (it signals them once more)."""

    task_queue_url: str | None = Field(default=None, validation_alias="TASK_QUEUE_URL")
    max_receive_count: int = Field(default=5, ge=1, validation_alias="MAX_RECEIVE_COUNT")
    max_requeues: int = Field(default=2, ge=0, validation_alias="MAX_REQUEUES")


class ReconcilerSettings(AwsSettings):
    """The reconciler: which rows count as lost, and where it re-signals them."""

    task_queue_url: str = Field(validation_alias="TASK_QUEUE_URL")
    pending_age_seconds: float = Field(default=60, ge=0, validation_alias="PENDING_AGE_SECONDS")
    stale_lease_seconds: float = Field(default=60, ge=0, validation_alias="STALE_LEASE_SECONDS")
