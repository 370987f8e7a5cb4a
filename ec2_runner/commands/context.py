"""What every operator command reaches: its settings and the stack's clients, made once."""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def settings() -> Any:
    from ec2_runner.config import CliSettings
    from shared.config import load_settings

    return load_settings(CliSettings)


def client(service: str) -> Any:
    """A client for ``service`` against the configured endpoint and region."""
    from shared import aws

    s = settings()
    return aws.client(service, region=s.aws_region, endpoint_url=s.aws_endpoint_url, keys=s.aws_keys)


def store() -> Any:
    from shared.store import TaskStore

    s = settings()
    return TaskStore(client("dynamodb"), s.table_name, branch_locks_table=s.branch_locks_table)
