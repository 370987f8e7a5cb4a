"""Configuration of the WebSocket functions (authorizer, connect, disconnect, relay), read once a process."""

from __future__ import annotations

from functools import cached_property

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.tokens import SecretSource


class WsSettings(BaseSettings):
    """``TOKEN_SECRET`` / ``RUNNER_SECRET`` are literal secrets (local stack); in AWS the ``*_ARN``
    variables name Secrets Manager secrets, read when first needed and again every five minutes
    (``shared.tokens.SECRET_MAX_AGE``), so a rotation takes effect without a cold start."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    aws_region: str = Field(default="us-east-1", validation_alias="AWS_REGION")
    aws_endpoint_url: str | None = Field(default=None, validation_alias="AWS_ENDPOINT_URL")
    connections_table: str = Field(validation_alias="CONNECTIONS_TABLE")
    token_secret: str | None = Field(default=None, validation_alias="TOKEN_SECRET", repr=False)
    token_secret_arn: str | None = Field(default=None, validation_alias="TOKEN_SECRET_ARN")
    runner_secret: str | None = Field(default=None, validation_alias="RUNNER_SECRET", repr=False)
    runner_secret_arn: str | None = Field(default=None, validation_alias="RUNNER_SECRET_ARN")
    # the local stand-in's management endpoint; in AWS it is derived from each event
    management_endpoint: str | None = Field(default=None, validation_alias="WS_MANAGEMENT_ENDPOINT")
    input_rate_per_second: int = Field(default=50, ge=1, validation_alias="WS_INPUT_RATE")
    # open/resume frames per connection per 10 s: each resume may replay the session's ring
    control_rate_per_window: int = Field(default=5, ge=1, validation_alias="WS_CONTROL_RATE")
    connection_ttl_seconds: int = Field(default=2 * 3600 + 600, ge=60, validation_alias="WS_CONNECTION_TTL")

    @cached_property
    def token_secret_source(self) -> SecretSource:
        return SecretSource(
            self.token_secret,
            self.token_secret_arn,
            region=self.aws_region,
            endpoint_url=self.aws_endpoint_url,
        )

    @cached_property
    def runner_secret_source(self) -> SecretSource:
        return SecretSource(
            self.runner_secret,
            self.runner_secret_arn,
            region=self.aws_region,
            endpoint_url=self.aws_endpoint_url,
        )
