"""The one place AWS clients are made: endpoint, region and retry policy come from configuration."""

from __future__ import annotations

from typing import Any, NamedTuple

import boto3
from botocore.config import Config

# botocore's standard mode retries throttling and 5xx with exponential backoff and jitter
_RETRY: Any = {"mode": "standard", "max_attempts": 8}


class Keys(NamedTuple):
    """Static credentials from configuration (a local stack's dummy keys)."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None


def client(
    service: str,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    keys: Keys | None = None,
    read_timeout: float = 30.0,
    **config: Any,
) -> Any:
    """A boto3 client for ``service``; ``endpoint_url`` None means the real AWS endpoint
    (or ``AWS_ENDPOINT_URL`` from the environment, which boto3 honours itself); ``keys`` None means
    boto3's own credential chain (environment, profile, instance role)."""
    cfg = Config(retries=_RETRY, read_timeout=read_timeout, connect_timeout=5, **config)
    session: Any = boto3.session.Session()  # the service is a runtime string, not a stubbed literal
    creds = (
        {
            "aws_access_key_id": keys.access_key_id,
            "aws_secret_access_key": keys.secret_access_key,
            "aws_session_token": keys.session_token,
        }
        if keys
        else {}
    )
    return session.client(service, region_name=region, endpoint_url=endpoint_url or None, config=cfg, **creds)
