"""Fixtures for running the real Lambda handlers against a stack deployed from template.yaml."""

from __future__ import annotations

import importlib
import json
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
    """``functions/<name>/app.py`` as a cold start would see it: with the environment the template
    gives that function (resolved against the stack) plus the local endpoint. The module is imported
    once per session; ``reset()`` makes its settings and clients read this environment afresh."""
    loaded: list[ModuleType] = []

    def load(name: str, stack: LocalStackResources, **overrides: str) -> ModuleType:
        env = {**stack.function_env(name), "AWS_ENDPOINT_URL": moto_endpoint, **overrides}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        module = importlib.import_module(f"functions.{name}.app")
        module.reset()
        loaded.append(module)
        return module

    yield load
    for module in loaded:
        module.reset()  # nothing made for this test's stack outlives it


def emf_metrics(out: str) -> dict[str, list[float]]:
    """Every metric the EMF lines in ``out`` carry, with its values (a line holds one or many)."""
    found: dict[str, list[float]] = {}
    for line in out.splitlines():
        if not line.startswith("{") or '"_aws"' not in line:
            continue
        blob = json.loads(line)
        for definition in blob["_aws"]["CloudWatchMetrics"]:
            for metric in definition["Metrics"]:
                value = blob[metric["Name"]]
                found.setdefault(metric["Name"], []).extend(value if isinstance(value, list) else [value])
    return found


@pytest.fixture(scope="module")
def table(moto_endpoint: str) -> str:
    """The connections table of a fresh stack, one per test module (the Refine tests)."""
    from tests.integration.refine_support import connections_table

    return connections_table(moto_endpoint)
