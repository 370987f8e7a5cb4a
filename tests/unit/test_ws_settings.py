"""The WebSocket functions' settings reach the relay they build."""

from __future__ import annotations

import pytest

from shared.relay import relay_from_settings
from shared.ws_config import WsSettings

pytestmark = pytest.mark.unit


def test_input_and_control_rates_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTIONS_TABLE", "conns")
    monkeypatch.setenv("WS_INPUT_RATE", "7")
    monkeypatch.setenv("WS_CONTROL_RATE", "2")
    relay = relay_from_settings(WsSettings())
    assert (relay.input_rate, relay.control_rate) == (7, 2)


def test_a_control_rate_below_one_is_refused_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTIONS_TABLE", "conns")
    monkeypatch.setenv("WS_CONTROL_RATE", "0")
    with pytest.raises(ValueError, match="WS_CONTROL_RATE"):
        WsSettings()
