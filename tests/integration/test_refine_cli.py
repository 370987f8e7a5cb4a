"""``aipm terminal``'s attach in a real pty, and ``aipm token``'s minting."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pexpect
import pytest

from ec2_runner.terminal_cli import mint_token, token_grant
from shared import tokens
from tests.conftest import ROOT
from tests.integration.refine_support import (
    TOKEN_SECRET,
    connections_table,
    running_gateway,
    running_runner,
    session_manager,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def test_mint_token_is_what_the_authorizer_accepts() -> None:
    token = mint_token(task_id="T-9", read_only=True, ttl=60, secret=TOKEN_SECRET, user="dev")
    claims = tokens.verify(token, TOKEN_SECRET)
    assert (claims.sub, claims.task, claims.read_only) == ("dev", "T-9", True)
    assert token_grant(token)["task"] == "T-9"


def test_attach_runs_the_users_terminal_in_raw_mode(moto_endpoint: str, tmp_path: Path) -> None:
    """Keystrokes from a real terminal reach the session; its size follows the terminal; Ctrl-] detaches."""
    table = connections_table(moto_endpoint)
    with running_gateway(moto_endpoint, table) as gw, running_runner(gw, lambda: session_manager(tmp_path)):
        token = mint_token(branch="feature/cli", secret=TOKEN_SECRET, user="dev")
        code = (
            "import sys; from ec2_runner.terminal_cli import attach; "
            "sys.exit(attach(sys.argv[1], sys.argv[2]))"
        )
        child = pexpect.spawn(
            sys.executable,
            ["-c", code, gw.ws_url, token],
            cwd=str(ROOT),
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            dimensions=(31, 97),
            timeout=10,
        )
        child.delaybeforesend = None
        try:
            child.expect("git status")
            child.expect(r"\$ ")
            child.send("stty size\r")
            child.expect("31 97")
            child.expect(r"\$ ")
            child.setwinsize(40, 111)
            # bash redraws its prompt once the resize reached its pty; type after that, as a person would
            child.expect(r"\x1b\[K")
            child.send("stty size\r")
            child.expect("40 111")
            child.send("\x1d")
            child.expect("detached")
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
        assert child.exitstatus == 0
