"""``aipm terminal``'s attach in a real pty, and ``aipm token``'s minting."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pexpect
import pytest

from ec2_runner.terminal_cli import mint_token, token_grant
from local.deploy import LocalStackResources
from shared import frames as fr
from tests.conftest import ROOT
from tests.fixtures import wait_until
from tests.integration.conftest import load_event
from tests.integration.refine_support import (
    RUNNER_SECRET,
    TOKEN_SECRET,
    Partition,
    connections_table,
    ring_holds,
    running_gateway,
    running_runner,
    session_manager,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def spawn_attach(ws_url: str, token: str, dimensions: tuple[int, int], timeout: float) -> pexpect.spawn:
    """``aipm terminal``'s attach() in a real pty of the given size."""
    code = (
        "import sys; from ec2_runner.terminal_cli import attach; sys.exit(attach(sys.argv[1], sys.argv[2]))"
    )
    child = pexpect.spawn(
        sys.executable,
        ["-c", code, ws_url, token],
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        dimensions=dimensions,
        timeout=timeout,
    )
    child.delaybeforesend = None
    return child


def test_mint_token_is_what_the_authorizer_accepts(
    fresh_stack: LocalStackResources, load_handler: Any, lambda_context: Any
) -> None:
    """``aipm token`` mints what the real $connect authorizer (functions/ws_authorizer, configured as
    template.yaml configures it) allows, with the grant as context; another secret's token is denied."""
    token = mint_token(task_id="T-9", read_only=True, ttl=60, secret=TOKEN_SECRET, user="dev")
    app = load_handler("ws_authorizer", fresh_stack, TOKEN_SECRET=TOKEN_SECRET, RUNNER_SECRET=RUNNER_SECRET)

    def authorize(candidate: str) -> dict[str, Any]:
        event = load_event("ws_authorizer_request.json")
        event["queryStringParameters"] = {"token": candidate}
        event["multiValueQueryStringParameters"] = {"token": [candidate]}
        return app.lambda_handler(event, lambda_context)

    policy = authorize(token)
    assert [s["Effect"] for s in policy["policyDocument"]["Statement"]] == ["Allow"]
    assert policy["principalId"] == "dev"
    assert policy["context"] == {
        "role": "browser",
        "sub": "dev",
        "sessionId": fr.session_id_for(task_id="T-9"),
        "readOnly": True,
        "exp": token_grant(token)["exp"],
        "taskId": "T-9",
    }
    assert token_grant(token)["task"] == "T-9"
    forged = mint_token(task_id="T-9", secret="some-other-secret-0123456789abcdef", user="dev")
    assert [s["Effect"] for s in authorize(forged)["policyDocument"]["Statement"]] == ["Deny"]


def test_attach_runs_the_users_terminal_in_raw_mode(moto_endpoint: str, tmp_path: Path) -> None:
    """Keystrokes from a real terminal reach the session; its size follows the terminal; Ctrl-] detaches."""
    table = connections_table(moto_endpoint)
    with running_gateway(moto_endpoint, table) as gw, running_runner(gw, lambda: session_manager(tmp_path)):
        token = mint_token(branch="feature/cli", secret=TOKEN_SECRET, user="dev")
        child = spawn_attach(gw.ws_url, token, (31, 97), timeout=10)
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


def test_attach_reattaches_when_the_runner_comes_back(moto_endpoint: str, tmp_path: Path) -> None:
    """The runner's connection is cut (a network partition): the CLI hears ``runner_gone``, holds what
    the user types, and once the runner is back resumes from its last seq: the output made while the
    runner was away arrives, and the held keystrokes run."""
    table = connections_table(moto_endpoint)
    with (
        running_gateway(moto_endpoint, table) as gw,
        Partition(gw.ws_port) as link,
        running_runner(gw, lambda: session_manager(tmp_path), ws_url=link.url(gw.ws_url)) as svc,
    ):
        token = mint_token(branch="feature/away", secret=TOKEN_SECRET, user="dev")
        child = spawn_attach(gw.ws_url, token, (24, 100), timeout=20)
        seen = io.BytesIO()
        child.logfile_read = seen
        try:
            child.expect(r"\$ ")
            child.send("sleep 0.5; echo during-$((3*5))\r")
            child.expect(r"during-\$\(\(3\*5\)\)")  # the runner has the command: its echo is back
            # when
            link.cut()
            child.expect("the runner went away")
            child.send("echo back-$((6*7))\r")
            assert svc.sessions is not None
            wait_until(lambda: ring_holds(svc.sessions, "during-15"), 10, what="output while away")
            link.heal()
            # then
            child.expect("reattached", timeout=30)
            child.expect("back-42")
            child.send("\x1d")
            child.expect("detached")
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
        assert child.exitstatus == 0
        assert seen.getvalue().count(b"during-15\r\n") == 1  # once: a replay never shows a line twice


def test_attach_shows_its_keys_and_ctrl_backslash_pushes_the_sessions_work(
    moto_endpoint: str, tmp_path: Path
) -> None:
    """Attaching prints the keys; ``Ctrl-\\`` commits what the session changed and pushes it to the
    session's branch on the remote (the commit is there), and the session goes on."""
    table = connections_table(moto_endpoint)
    with running_gateway(moto_endpoint, table) as gw, running_runner(gw, lambda: session_manager(tmp_path)):
        token = mint_token(branch="feature/cli-push", secret=TOKEN_SECRET, user="dev")
        child = spawn_attach(gw.ws_url, token, (24, 100), timeout=15)
        try:
            child.expect(r"Ctrl-\\ push")
            child.expect(r"\$ ")
            child.send("echo pushed-by-key > cli-note.txt; echo written-$((3*3))\r")
            child.expect("written-9")
            child.send("\x1c")
            child.expect(r"pushed ([0-9a-f]{40})")
            sha = child.match.group(1).decode()
            child.send("echo still-$((4+4))\r")
            child.expect("still-8")
            child.send("\x1d")
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
        remote = tmp_path / "remote.git"
        shown = subprocess.run(
            ["git", "-C", str(remote), "show", "--stat", "--format=%H", "refs/heads/feature/cli-push"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert shown.startswith(sha) and "cli-note.txt" in shown
