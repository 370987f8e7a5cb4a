"""The one place AWS clients are made: endpoint, region and retry policy come from configuration."""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config

# botocore's standard mode retries throttling and 5xx with exponential backoff and jitter
_RETRY: Any = {"mode": "standard", "max_attempts": 8}

RECORD_ENV = "AIPM_RECORD_AWS_CALLS"
"""When set (to a file), every client made here appends one JSON line per API call: component,
service, operation and the resources it names. Read once per client, so production pays nothing."""


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
    # ``config`` may override the retry policy and connect timeout (the CLI fails fast: a person waits)
    cfg = Config(**{"retries": _RETRY, "read_timeout": read_timeout, "connect_timeout": 5, **config})
    creds = (
        {
            "aws_access_key_id": keys.access_key_id,
            "aws_secret_access_key": keys.secret_access_key,
            "aws_session_token": keys.session_token,
        }
        if keys
        else {}
    )
    with _sessions_lock:
        session: Any = _session()  # the service is a runtime string, not a stubbed literal
        made = session.client(
            service, region_name=region, endpoint_url=endpoint_url or None, config=cfg, **creds
        )
    record_to = os.environ.get(RECORD_ENV)
    if record_to:
        _CallRecorder(record_to, _component(sys._getframe(1))).attach(made)
    return made


class _SharedLoader(botocore.loaders.Loader):
    """botocore's data loader, shared by every session made here: the endpoint rules and service
    models (a megabyte of JSON) are read once a process instead of once a client (~0.1 CPU-s each).
    boto3 appends its own data folder to a session's loader; here that append lands on a copy, as
    the folder is on the path already, so the path stays the same however many sessions are made."""

    @property
    def search_paths(self) -> list[str]:
        return list(self._search_paths)  # type: ignore[attr-defined]  # botocore keeps the list here


@functools.cache
def _loader() -> _SharedLoader:
    data_path = botocore.session.Session().get_config_variable("data_path")  # AWS_DATA_PATH
    default = botocore.loaders.create_loader(data_path)
    boto3_data = str(Path(boto3.__file__).parent / "data")
    paths = [*default.search_paths, boto3_data]  # boto3's own order: its data folder last
    return _SharedLoader(extra_search_paths=paths, include_default_search_paths=False)


# what a session reads once and keeps (its credentials and profile): a process whose environment
# names others gets a session of its own for them, so a client sees the credentials of its moment
_SESSION_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
)
_sessions: dict[tuple[str | None, ...], boto3.session.Session] = {}
_sessions_lock = threading.Lock()


def _forget_sessions() -> None:
    """In a forked child: no session of the parent's (its connections, cached credentials), and a
    lock no parent thread may have held at the fork."""
    global _sessions_lock
    _sessions_lock = threading.Lock()
    _sessions.clear()


os.register_at_fork(after_in_child=_forget_sessions)


def _session() -> boto3.session.Session:
    """This process's boto3 session (on the shared loader) for the credentials its environment
    names now. A botocore session costs ~11 CPU-ms to make (its event handlers), a client from a
    made one ~5; region and endpoint are still read at each client, from the environment or the
    caller. boto3 sessions are not safe to make clients from in two threads at once, so ``client``
    makes them under ``_sessions_lock``; a forked child starts with neither (``_forget_sessions``)."""
    key = tuple(os.environ.get(name) for name in _SESSION_ENV)
    made = _sessions.get(key)
    if made is None:
        core = botocore.session.Session()
        core.register_component("data_loader", _loader())
        made = boto3.session.Session(botocore_session=core)
        if len(_sessions) >= 16:  # environments a long-lived process went through: keep it small
            _sessions.clear()
        _sessions[key] = made
    return made


# -- call recording (tests only: tests/integration/test_least_privilege.py) ------------------------

_ROOT = Path(__file__).resolve().parent.parent
_CLI_FILES = {"cli.py", "terminal_cli.py"}
_RESOURCE_PARAMS = (
    "TableName",
    "IndexName",
    "QueueUrl",
    "QueueName",
    "SecretId",
    "ConnectionId",
    "AutoScalingGroupName",
)
_write_lock = threading.Lock()


@functools.cache
def _component_of_file(filename: str) -> str | None:
    """The component whose code ``filename`` is: a function's folder name, ``cli``, ``runner``,
    ``local`` (the local stack's own deploy and pollers), or None (shared code, tests, libraries)."""
    try:
        rel = Path(filename).resolve().relative_to(_ROOT).parts
    except ValueError:
        return None
    if len(rel) >= 3 and rel[0] == "functions":
        return rel[1]
    if len(rel) == 3 and rel[:2] == ("ec2_runner", "commands"):
        return "cli"
    if len(rel) == 2 and rel[0] == "ec2_runner":
        return "cli" if rel[1] in _CLI_FILES | {"console.py"} else "runner"
    if rel and rel[0] == "local":
        return "local"
    return None


def _component(frame: FrameType | None) -> str:
    """The innermost component on the stack from ``frame`` outwards; ``other`` when none is."""
    while frame is not None:
        found = _component_of_file(frame.f_code.co_filename)
        if found:
            return found
        frame = frame.f_back
    return "other"


def _resources(params: dict[str, Any]) -> dict[str, Any]:
    """The resources an API call names, as its parameters spell them."""
    found: dict[str, Any] = {k: params[k] for k in _RESOURCE_PARAMS if k in params}
    if "TransactItems" in params:  # a transaction is granted by the actions of its parts
        found["parts"] = [
            [kind, body.get("TableName")] for item in params["TransactItems"] for kind, body in item.items()
        ]
    if "RequestItems" in params:  # BatchGetItem / BatchWriteItem
        found["tables"] = sorted(params["RequestItems"])
    return found


class _CallRecorder:
    """Appends ``{component, service, operation, resources}`` lines to a file for each API call;
    the component is the innermost one on the caller's stack (a Lambda handler calling through
    shared code), else the one that made the client (the runner's worker threads)."""

    def __init__(self, path: str, made_by: str) -> None:
        self.path = path
        self.made_by = made_by

    def attach(self, made: Any) -> None:
        made.meta.events.register("before-parameter-build", self._record)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        caller = _component(sys._getframe(1))
        line = {
            "component": caller if caller not in ("other", "local") else self.made_by,
            "service": model.service_model.service_name,
            "operation": model.name,
            "resources": _resources(params),
            "pid": os.getpid(),
        }
        data = (json.dumps(line, sort_keys=True) + "\n").encode()
        with _write_lock:  # O_APPEND: whole lines from several processes into one file
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
