"""What every operator command reaches: its settings and the stack's clients, made once."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

# a person is waiting: a stopped stack or a wrong endpoint fails in seconds, not after botocore's
# eight attempts with back-off (the runner's clients keep those)
CLI_RETRIES = {"mode": "standard", "max_attempts": 2}
CLI_CONNECT_TIMEOUT = 2.0
CLI_READ_TIMEOUT = 15.0


@functools.cache
def settings() -> Any:
    from ec2_runner.config import CliSettings
    from shared.config import load_settings

    return load_settings(CliSettings)


def client(service: str, **config: Any) -> Any:
    """A client for ``service`` against the configured endpoint and region, made once per process
    (per ``config``: e.g. a longer ``read_timeout`` for a long poll), failing fast when the endpoint
    cannot be reached."""
    s = settings()
    return _client(service, s.aws_region, s.aws_endpoint_url, s.aws_keys, tuple(sorted(config.items())))


@functools.cache
def _client(service: str, region: str, endpoint_url: str | None, keys: Any, config: tuple[Any, ...]) -> Any:
    from shared import aws

    knobs: dict[str, Any] = {
        "retries": CLI_RETRIES,
        "connect_timeout": CLI_CONNECT_TIMEOUT,
        "read_timeout": CLI_READ_TIMEOUT,
        **dict(config),
    }
    return aws.client(service, region=region, endpoint_url=endpoint_url, keys=keys, **knobs)


def store() -> Any:
    from shared.store import TaskStore

    s = settings()
    return TaskStore(client("dynamodb"), s.table_name, branch_locks_table=s.branch_locks_table)


@dataclass(frozen=True)
class Target:
    """Where the commands go, as a person needs to hear it when something there fails."""

    endpoint: str  # the URL the named service's client calls
    region: str
    profile: str  # the AWS profile boto3 reads credentials from (unless keys are configured)
    source: str  # why that endpoint: the local stack's file, the environment, or AWS itself
    local: bool  # a local stack (an endpoint on this machine)

    def sentence(self) -> str:
        """``endpoint E (region R, profile P; <where the endpoint comes from>)``."""
        return f"endpoint {self.endpoint} (region {self.region}, profile {self.profile}; {self.source})"


def target(service: str = "dynamodb") -> Target:
    """The endpoint, region, profile and the source of the endpoint that ``service`` is called at."""
    from shared.config import LOCAL_STACK_FILE, environment_names_endpoints, local_stack_in_use

    s = settings()
    endpoint = str(client(service).meta.endpoint_url)
    if os.environ.get("AWS_ENDPOINT_URL"):
        source = "set by AWS_ENDPOINT_URL"
    elif environment_names_endpoints():
        source = "AWS itself: the environment sets TASK_QUEUE_URL, so .aipm/local.json is not read"
    elif local_stack_in_use():
        source = f"from the local stack's {LOCAL_STACK_FILE} in {os.getcwd()}"
    elif s.aws_endpoint_url:
        source = "from configuration"
    else:
        source = (
            f"AWS itself, as there is no {LOCAL_STACK_FILE} in {os.getcwd()} and AWS_ENDPOINT_URL is unset"
        )
    profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE") or "default"
    if s.aws_keys is not None:
        profile = f"none (keys from {'the local stack' if local_stack_in_use() else 'the environment'})"
    host = endpoint.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    local = host in ("localhost", "::1") or host.startswith("127.")
    return Target(endpoint, s.aws_region, profile, source, local)


def token_secret() -> str:
    """The browser token secret (TOKEN_SECRET, or read from TOKEN_SECRET_ARN)."""
    from ec2_runner.console import CliError, ExitCode
    from shared.tokens import SecretSource

    s = settings()
    secret = SecretSource(
        s.token_secret.get_secret_value() if s.token_secret else None,
        s.token_secret_arn,
        region=s.aws_region,
        endpoint_url=s.aws_endpoint_url,
        keys=s.aws_keys,
    ).get()
    if not secret:
        raise CliError(
            "no TOKEN_SECRET or TOKEN_SECRET_ARN to mint a token with (start `aipm local up`, or set one)",
            ExitCode.USAGE,
        )
    return secret
