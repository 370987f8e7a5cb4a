"""A hostile agent against a real runner process on the local stack, with the agent sandbox off (an
operator may turn it off; the runner's git must hold on its own): the agent plants every git
setting that could run a program of its own in the runner's git or send its pushes elsewhere, in a
headless task and in a Refine terminal. None of it runs in the runner (no marker file appears), its
later tasks on the same and another branch complete normally, and every push lands on the
configured remote."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import git
import pytest

from local.gitremote import ensure_bare_remote
from shared import frames as fr
from tests.fixtures import AwsCli, aipm_in, unique, wait_until
from tests.integration.refine_support import Browser

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
PLANTER = ROOT / "tests" / "hostile_agent" / "git-planter"
CANARIES = {"AWS_SECRET_ACCESS_KEY": "canary-aws-secret-e2e", "KIRO_API_KEY": "canary-kiro-e2e"}


@pytest.fixture(scope="module")
def hostile(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from local.stack import LocalStack

    work = tmp_path_factory.mktemp("gittrust")
    markers = work / "markers"
    markers.mkdir()
    evil = ensure_bare_remote(work / "evil.git")
    planter = f"{PLANTER} --markers {markers} --evil {evil}"
    stack = LocalStack(
        work,
        runners=1,
        stack_name=unique("gt"),
        endpoint_url=moto_endpoint,
        reconcile_seconds=3600,
        gateway_port=0,
        log_dir=work / "logs",
        runner_env={
            "AGENT": "command",
            "AGENT_COMMAND": planter,
            # the Refine agent plants as well, and leaves a change
            "AGENT_INTERACTIVE_COMMAND": f"{planter} --name from-terminal [plant]",
            "AGENT_SANDBOX": "off",
            "AGENT_TIMEOUT": "30",
            "SQS_WAIT_SECONDS": "1",
            "TERMINAL_GIT_STATUS": "true",
            **CANARIES,
        },
    )
    stack.start()
    stack.markers = markers  # type: ignore[attr-defined]
    stack.evil = evil  # type: ignore[attr-defined]
    try:
        yield stack
    finally:
        stack.stop()


def aipm(stack: Any, *args: str) -> str:
    return aipm_in(stack.workdir, *args)


def run_task(cli: AwsCli, branch: str, details: str) -> dict:
    task_id = unique("gt")
    cli.put_task(task_id, branch, title="Git trust", details=details)
    return cli.ended(task_id, 90)


def planted_runs(markers: Path) -> list[str]:
    return sorted(p.name for p in markers.glob("*.env"))


def runner_log(stack: Any) -> list[dict]:
    lines = (stack.workdir / "logs" / "runner-0.log").read_text(errors="replace").splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_a_hostile_agent_never_runs_anything_in_the_runners_git(hostile: Any) -> None:
    cfg = hostile.config
    cli = AwsCli(cfg.endpoint_url, cfg.table_name)
    remote = git.Repo(cfg.git_remote)
    evil_before = git.Repo(hostile.evil).git.for_each_ref()
    branch = f"feature/{unique('hostile')}"

    # given: a task whose agent plants everything, then completes with a small edit
    planted = run_task(cli, branch, "[plant] and add planted.txt")
    assert planted["status"] == "complete", planted.get("error")
    assert remote.git.show(f"{planted['commitSha']}:planted.txt") == "the hostile agent was here"

    # when: a Refine terminal opens on that task (git status and diff as it opens), and its agent
    # plants once more before it exits (the runner then asks git whether the folder is dirty)
    token = aipm(hostile, "token", "--task", planted["id"], "--ttl", "120")

    async def refine() -> str:
        browser = await Browser.connect(cfg.ws_url, token)
        try:
            await browser.open(taskId=planted["id"], timeout=30)
            await browser.wait_text("git status", timeout=20)
            await browser.wait_frame(fr.ExitFrame, timeout=30)
            return browser.text
        finally:
            await browser.close()

    shown = asyncio.run(refine())
    assert "planted" in shown  # the terminal's agent ran (and planted)
    wait_until(
        lambda: any("uncommitted changes" in line.get("message", "") for line in runner_log(hostile)),
        30,
        what="the runner to check the terminal's folder",
    )
    # and: later benign tasks, on the same branch (its checkout meets the committed .gitattributes)
    # and on another
    same = run_task(cli, branch, "a benign later task on the same branch")
    other = run_task(cli, f"feature/{unique('benign')}", "a benign task on another branch")

    # then: nothing planted ran in the runner, ever
    assert planted_runs(hostile.markers) == []
    # and: the later tasks completed normally, pushed to the configured remote by the runner
    for row in (same, other):
        assert row["status"] == "complete", row.get("error")
        assert remote.git.rev_parse(f"refs/heads/{row['branch']}") == row["commitSha"]
    assert remote.git.log("-1", "--format=%P", same["commitSha"]) == planted["commitSha"]
    authors = remote.git.log("--format=%an", f"{planted['commitSha']}~1..{same['commitSha']}").split("\n")
    assert set(authors) == {"aipm runner"}
    assert git.Repo(hostile.evil).git.for_each_ref() == evil_before
    # and: the runner said what it put back, on a line of the hostile task
    restored = [
        line
        for line in runner_log(hostile)
        if "restored" in line.get("message", "") and line.get("task_id") == planted["id"]
    ]
    assert restored and "config" in restored[0]["message"]
