"""How each function builds what it uses: settings when it starts, clients on first use, once; and
``reset()`` makes a test's environment count without reloading the module. (Integration tier: the
functions load Tracer, whose X-Ray SDK opens its UDP emitter's socket on import.)"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import pytest

pytestmark = pytest.mark.integration

QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/aipm-tasks"
FUNCTIONS = {
    "dispatch": ({"TASK_QUEUE_URL": QUEUE, "BRANCH_LOCKS_TABLE": "locks"}, ("dispatcher", "store")),
    "dead_letter": (
        {"TASK_QUEUE_URL": QUEUE, "DLQ_URL": QUEUE + "-dlq", "BRANCH_LOCKS_TABLE": "locks"},
        ("store", "dispatcher", "filer"),
    ),
    "reconciler": ({"TASK_QUEUE_URL": QUEUE, "BRANCH_LOCKS_TABLE": "locks"}, ("reconciler",)),
    "ws_authorizer": ({"CONNECTIONS_TABLE": "conns"}, ("authorizer",)),
    "ws_connect": ({"CONNECTIONS_TABLE": "conns"}, ("relay",)),
    "ws_disconnect": ({"CONNECTIONS_TABLE": "conns"}, ("relay",)),
    "ws_relay": ({"CONNECTIONS_TABLE": "conns"}, ("relay",)),
}


def load(name: str, monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    module = importlib.import_module(f"functions.{name}.app")
    module.reset()
    return module


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_clients_are_made_on_first_use_once_and_afresh_after_reset(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, getters = FUNCTIONS[name]
    app = load(name, monkeypatch, AWS_REGION="eu-west-1", **env)

    # nothing is made before an event asks for it
    assert all(getattr(app, g).cache_info().currsize == 0 for g in getters)
    made = {g: getattr(app, g)() for g in getters}
    assert all(getattr(app, g)() is made[g] for g in getters)
    assert app.settings().aws_region == "eu-west-1"

    # when the environment changes and the function is reset
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    app.reset()

    # then the next event sees it, through new clients, in the same module
    assert app.settings().aws_region == "ap-south-1"
    assert all(getattr(app, g)() is not made[g] for g in getters)
    assert sys.modules[f"functions.{name}.app"] is app


def test_the_relay_gets_its_rates_and_management_endpoint_from_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = load(
        "ws_relay",
        monkeypatch,
        CONNECTIONS_TABLE="conns",
        WS_INPUT_RATE="9",
        WS_CONTROL_RATE="3",
        WS_MANAGEMENT_ENDPOINT="http://127.0.0.1:9/local/",
    )

    relay = app.relay()

    assert (relay.input_rate, relay.control_rate) == (9, 3)
    assert relay.management_endpoint == "http://127.0.0.1:9/local/"
    assert relay.store.table == relay.limiter.table == "conns"
