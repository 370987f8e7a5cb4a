"""AWS and configuration errors as sentences a person can act on, with their exit codes: the one
place ``aipm``'s commands have theirs translated (``ec2_runner.cli.main`` calls it)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from pydantic import ValidationError

from ec2_runner.console import CliError, ExitCode

# answers that mean "these credentials are not good here"
_AUTH_CODES = {
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "AccessDenied",
    "AccessDeniedException",
    "AuthFailure",
}

LOCAL_HINT = (
    "for the local stack, run aipm in the folder where `aipm local up` runs (it reads "
    ".aipm/local.json there), or set AWS_ENDPOINT_URL and TABLE_NAME from that file's values"
)


def _target() -> Any:
    from ec2_runner.commands.context import target

    return target()


def as_cli_error(exc: BotoCoreError | ClientError) -> CliError:
    """``exc`` (from any command's AWS call) as a CliError: what failed, where, and what to do."""
    t = _target()
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        if t.local:
            todo = "is the local stack running? Start it with `aipm local up` (or `make demo`) in its folder"
        else:
            todo = f"check the network and the region; {LOCAL_HINT}"
        return CliError(f"cannot reach {t.sentence()}: {todo}", ExitCode.UNREACHABLE)
    if isinstance(exc, ReadTimeoutError):
        return CliError(f"no answer in time from {t.sentence()}", ExitCode.UNREACHABLE)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return CliError(
            f"no AWS credentials to call {t.sentence()}. For AWS, give credentials (AWS_PROFILE, "
            f"`aws configure`, an instance role); {LOCAL_HINT}",
            ExitCode.UNREACHABLE,
        )
    if isinstance(exc, NoRegionError):
        return CliError(f"no AWS region: set AWS_REGION ({t.sentence()})", ExitCode.USAGE)
    if isinstance(exc, ClientError):
        error: Any = exc.response.get("Error", {})
        code, message = str(error.get("Code", "")), str(error.get("Message", "")).rstrip(".")
        if code in _AUTH_CODES:
            return CliError(
                f"AWS refused the credentials ({code}: {message}) at {t.sentence()}; {LOCAL_HINT}",
                ExitCode.UNREACHABLE,
            )
        if code == "ResourceNotFoundException" or code.endswith("NonExistentQueue"):
            from ec2_runner.commands.context import settings

            named = f"table {settings().table_name}" if code == "ResourceNotFoundException" else "queue"
            return CliError(
                f"{message or code} ({named}) at {t.sentence()}: is the stack deployed there, and are "
                f"TABLE_NAME and the region right? {LOCAL_HINT}",
                ExitCode.UNREACHABLE,
            )
        return CliError(f"AWS answered {code}: {message} ({t.sentence()})", ExitCode.FAILED)
    return CliError(f"{exc} ({t.sentence()})", ExitCode.UNREACHABLE)


def settings_error(exc: ValidationError) -> CliError:
    """A settings model's ValidationError (its ``loc`` is the environment variable's name) as one
    sentence; outside a local stack's folder, with how to point the command at one."""
    from shared.config import LOCAL_STACK_FILE, local_stack_in_use

    missing = [str(e["loc"][0]) for e in exc.errors() if e["type"] == "missing" and e["loc"]]
    wrong = [
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors() if e["type"] != "missing"
    ]
    parts = []
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        parts.append(f"{' and '.join(missing)} {verb} not set")
    if wrong:
        parts.append("invalid configuration: " + "; ".join(wrong))
    text = "; ".join(parts)
    if missing and not local_stack_in_use():
        text += (
            f" (no {LOCAL_STACK_FILE} here): run it in the folder where `aipm local up` runs, "
            "or set them in the environment (README, Configuration)"
        )
    return CliError(text, ExitCode.USAGE)
