"""Which agent runs the tasks and how: the runner's agent settings, read from the environment once."""

from __future__ import annotations

import re
import shlex
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class AgentSettings(BaseSettings):
    """Which agent runs the tasks and how: read from the environment once, at start-up."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    agent: Literal["kiro", "claude", "codex", "command", "demo", "auto"] = Field(
        default="kiro", validation_alias="AGENT"
    )
    command: str | None = Field(default=None, validation_alias="AGENT_COMMAND")
    interactive_command: str | None = Field(default=None, validation_alias="AGENT_INTERACTIVE_COMMAND")
    resume_args: str = Field(default="--resume", validation_alias="AGENT_RESUME_ARGS")
    timeout: float = Field(default=1800.0, gt=0, validation_alias="AGENT_TIMEOUT")
    login_timeout: float = Field(default=0.0, ge=0, validation_alias="AGENT_LOGIN_TIMEOUT")
    kill_grace: float = Field(default=5.0, ge=0, validation_alias="AGENT_KILL_GRACE")
    # a command whose exit 0 says the agent is logged in (Kiro: `kiro-cli whoami`); a runner whose
    # agent is not takes no task until it is. Empty: the adapter's own (none for AGENT=command)
    login_check: str | None = Field(default=None, validation_alias="AGENT_LOGIN_CHECK")
    kiro_api_key: SecretStr | None = Field(default=None, validation_alias="KIRO_API_KEY")
    # Claude Code and Codex (AGENT=claude, AGENT=codex); each key goes only to its own CLI
    anthropic_api_key: SecretStr | None = Field(default=None, validation_alias="ANTHROPIC_API_KEY")
    openai_api_key: SecretStr | None = Field(default=None, validation_alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(default=None, validation_alias="OPENAI_BASE_URL")
    codex_model: str | None = Field(default=None, validation_alias="CODEX_MODEL")
    max_turns: int = Field(default=50, ge=1, validation_alias="AGENT_MAX_TURNS")
    # how often the CLI itself retries a failed model request (Claude Code's default, 10, retries a
    # 401 for about 3 minutes)
    api_retries: int = Field(default=2, ge=0, validation_alias="AGENT_API_RETRIES")
    # how long a CLI may wait for an unreachable model API (Codex never gives up by itself)
    api_unreachable_seconds: float = Field(
        default=60.0, gt=0, validation_alias="AGENT_API_UNREACHABLE_SECONDS"
    )
    claude_permission_mode: str = Field(default="acceptEdits", validation_alias="CLAUDE_PERMISSION_MODE")
    claude_allowed_tools: str | None = Field(default=None, validation_alias="CLAUDE_ALLOWED_TOOLS")
    # a headless run that stops at an approval question: ``deny`` answers no and fails it
    # approval_required; ``escalate`` holds it (its pty alive) for a person on the task's terminal
    approval: Literal["deny", "escalate"] = Field(default="deny", validation_alias="APPROVAL")
    approval_timeout: float = Field(default=900.0, gt=0, validation_alias="APPROVAL_TIMEOUT")
    env_passthrough: Annotated[list[str] | None, NoDecode] = Field(
        default=None, validation_alias="AGENT_ENV_PASSTHROUGH"
    )

    @field_validator("agent", "approval", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("env_passthrough", mode="before")
    @classmethod
    def _split_names(cls, v: object) -> object:
        if isinstance(v, str):
            return [n.strip() for n in re.split(r"[,\s]+", v) if n.strip()]
        return v

    @field_validator("command", "interactive_command", "login_check")
    @classmethod
    def _shell_words(cls, v: str | None) -> str | None:
        if v is not None:
            if not v.strip():
                return None
            try:
                shlex.split(v)
            except ValueError as e:
                raise ValueError(f"not a valid command line: {e}") from e
        return v

    @model_validator(mode="after")
    def _command_needed(self) -> AgentSettings:
        if self.agent == "command" and not self.command:
            raise ValueError("AGENT=command needs AGENT_COMMAND (e.g. 'claude -p')")
        return self


def agent_env_names() -> list[str]:
    """The environment variables AgentSettings reads."""
    return [str(f.validation_alias) for f in AgentSettings.model_fields.values() if f.validation_alias]
