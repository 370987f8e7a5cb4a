"""Fixtures for running the real Lambda handlers against a stack deployed from template.yaml."""

from __future__ import annotations

import importlib
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest

from local.deploy import LocalStackResources, deploy
from tests.conftest import EVENTS


@dataclass
class LambdaContext:
    """The attributes and the one method of the context object Lambda passes to a handler."""

    function_name: str = "aipm-test-function"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 256
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/aipm-test-function"
    log_stream_name: str = "2025/01/15/[$LATEST]test"
    remaining_ms: int = 30_000

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def lambda_context() -> LambdaContext:
    return LambdaContext()


@pytest.fixture
def fresh_stack(moto_endpoint: str) -> LocalStackResources:
    """template.yaml deployed under a stack name of its own, so queues start empty."""
    return deploy(moto_endpoint, "us-east-1", stack_name=f"t{uuid.uuid4().hex[:10]}")


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture
def load_handler(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> Iterator[Callable[..., ModuleType]]:
    """Import ``functions/<name>/app.py`` afresh, as a cold start would, with the environment the
    template gives that function (resolved against the stack) plus the local endpoint."""
    loaded: list[str] = []

    def load(name: str, stack: LocalStackResources, **overrides: str) -> ModuleType:
        env = {**stack.function_env(name), "AWS_ENDPOINT_URL": moto_endpoint, **overrides}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        module = f"functions.{name}.app"
        sys.modules.pop(module, None)
        loaded.append(module)
        return importlib.import_module(module)

    yield load
    for module in loaded:
        sys.modules.pop(module, None)


@pytest.fixture(scope="module")
def table(moto_endpoint: str) -> str:
    """The connections table of a fresh stack, one per test module (the Refine tests)."""
    from tests.integration.refine_support import connections_table

    return connections_table(moto_endpoint)
