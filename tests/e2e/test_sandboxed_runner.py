"""Real runner processes on the local stack with the agent sandbox on (AGENT_SANDBOX=bwrap) and the
hostile probe (tests/hostile_agent/probe) as the agent: what it reaches, and that tasks still end
as they should, pushed or killed with nothing left."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import git
import pytest

from ec2_runner.gitops import safe_dir_name
from tests.fixtures import AwsCli, unique, wait_until
from tests.fixtures import metadata_stand_in as stand_in_for_metadata

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        shutil.which("bwrap") is None, reason="bubblewrap is not installed (make venv installs it)"
    ),
]

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "tests" / "hostile_agent" / "probe"
RUN_TOKEN = f"probe-run-{uuid.uuid4().hex}"
SECRETS = {
    name: f"s3cret-{name.lower()}-{uuid.uuid4().hex}"
    for name in ("AWS_SECRET_ACCESS_KEY", "RUNNER_SECRET", "TOKEN_SECRET")
}


@pytest.fixture(scope="module")
def metadata_stand_in() -> Iterator[tuple[str, list[bytes]]]:
    with stand_in_for_metadata() as served:
        yield served


@pytest.fixture(scope="module")
def stack(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The local stack with one sandboxed runner (two slots) on the probe; the runner holds the
    secrets (its AWS secret key too: the local AWS takes any)."""
    from local.stack import LocalStack

    work = tmp_path_factory.mktemp("sandboxed")
    stack = LocalStack(
        work,
        runners=1,
        stack_name=unique("sbx"),
        endpoint_url=moto_endpoint,
        reconcile_seconds=3600,
        log_dir=work / "logs",
        runner_env={
            "AGENT": "command",
            "AGENT_COMMAND": str(PROBE),
            "AGENT_SANDBOX": "bwrap",
            "AGENT_TIMEOUT": "10",
            "AGENT_KILL_GRACE": "1",
            **SECRETS,
            "PROBE_RUN": RUN_TOKEN,
            "SQS_WAIT_SECONDS": "1",
            "RUNNER_SLOTS": "2",
            "LEASE_SECONDS": "30",
        },
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def cli(stack: Any) -> AwsCli:
    return AwsCli(stack.config.endpoint_url, stack.config.table_name)


def final(cli: AwsCli, task_id: str, timeout: float = 90) -> dict:
    return cli.ended(task_id, timeout)


def runner_home(stack: Any) -> dict[str, Path]:
    env = stack.runner_env(0)
    return {"repo": Path(env["REPO_PATH"]), "worktrees": Path(env["WORKTREES_DIR"])}


def pushed_report(stack: Any, sha: str) -> dict[str, Any]:
    return json.loads(git.Repo(stack.config.git_remote).git.show(f"{sha}:probe-report.json"))


def test_a_sandboxed_agent_completes_and_reaches_no_secret_no_other_worktree_clone_state_or_metadata(
    stack: Any, cli: AwsCli, metadata_stand_in: tuple[str, list[bytes]]
) -> None:
    """Task A's agent, while task B's agent works, tries B's worktree, the runner's clone, the
    local stack's state file (it holds the secrets) and the metadata stand-in; both tasks complete
    with their reports pushed, and none of it worked."""
    home = runner_home(stack)
    address, got = metadata_stand_in
    b_id, a_id = unique("sbx-b"), unique("sbx-a")
    b_tree = home["worktrees"] / safe_dir_name(f"task-{b_id}")
    clone_config = home["repo"] / ".git" / "config"
    state_file = stack.state / "local.json"
    # given: task B at work (its worktree is there while it sleeps)
    cli.put_task(b_id, f"feature/{b_id}", details="[probe:sleep=5]")
    wait_until(lambda: (b_tree / ".git").exists(), 60, what="task B's worktree")
    # when: task A probes
    details = " ".join(
        [
            f"[probe:read {b_tree}]",
            f"[probe:write {b_tree}/INJECTED-by-A.txt]",
            f"[probe:read {clone_config}]",
            f"[probe:write {home['repo']}/.git/hooks/pre-push]",
            f"[probe:read {state_file}]",
            f"[probe:connect {address}]",
        ]
    )
    cli.put_task(a_id, f"feature/{a_id}", details=details)
    a, b = final(cli, a_id), final(cli, b_id)
    # then: both completed, the sandbox did not stop honest work
    assert a["status"] == "complete", a.get("error")
    assert b["status"] == "complete", b.get("error")
    seen = pushed_report(stack, a["commitSha"])
    assert seen["read"][str(b_tree)].startswith("error"), seen["read"]
    assert seen["read"][str(clone_config)].startswith("error"), seen["read"]
    assert seen["read"][str(state_file)].startswith("error"), seen["read"]
    assert all(v.startswith("error") for v in seen["write"].values()), seen["write"]
    assert seen["connect"][address].startswith("error") and got == []
    # no secret of the runner's, in the agent's environment or any process it could see
    text = json.dumps(seen)
    assert seen["processes"] and str(seen["pid"]) in seen["processes"]
    for name, value in SECRETS.items():
        assert value not in text, f"{name} reached the sandboxed agent"
    # and on the host: B's pushed commit has only B's work, the clone has no planted hook
    files = git.Repo(stack.config.git_remote).git.ls_tree("-r", "--name-only", b["commitSha"]).split()
    assert "INJECTED-by-A.txt" not in files and "probe-report.json" in files
    assert not (home["repo"] / ".git" / "hooks" / "pre-push").exists()


def test_writes_through_committed_symlinks_never_land_outside_the_worktree(stack: Any, cli: AwsCli) -> None:
    """The task's branch holds symlinks to a folder outside, to the runner's clone and to a
    system file; the agent writes through each; the task completes and no target changed."""
    home = runner_home(stack)
    outside = Path(tempfile.mkdtemp(prefix="sbx-outside-", dir=stack.workdir))
    task_id = unique("sbx-link")
    branch = f"feature/{task_id}"
    with tempfile.TemporaryDirectory() as tmp:
        repo = git.Repo.clone_from(stack.config.git_remote, tmp)
        with repo.config_writer() as cw:
            cw.set_value("user", "name", "test").set_value("user", "email", "t@example.invalid")
        (Path(tmp) / "out").symlink_to(outside)
        (Path(tmp) / "clone").symlink_to(home["repo"])
        (Path(tmp) / "TASKS.md").symlink_to(outside / "victim.md")
        repo.git.add("-A")
        repo.git.commit("-m", "links")
        repo.git.push("origin", f"HEAD:refs/heads/{branch}")
    details = "[probe:write out/pwned.txt] [probe:write clone/.git/hooks/post-commit] [probe:write TASKS.md]"
    # when
    cli.put_task(task_id, branch, details=details)
    row = final(cli, task_id)
    # then
    assert row["status"] == "complete", row.get("error")
    assert list(outside.iterdir()) == []
    assert not (home["repo"] / ".git" / "hooks" / "post-commit").exists()
    seen = pushed_report(stack, row["commitSha"])
    assert set(seen["write"]) == {"out/pwned.txt", "clone/.git/hooks/post-commit", "TASKS.md"}


def host_processes_with(token: str) -> list[int]:
    """Live host pids of the probe, its helper or their sandbox (their environment carries ``token``,
    which the runner itself holds too: it passes it on)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            ours = b"hostile_agent/probe" in cmdline or b"bwrap" in cmdline or b"sleep(3600)" in cmdline
            if ours and token.encode() in (entry / "environ").read_bytes():
                stat = (entry / "stat").read_text()
                if stat[stat.rfind(")") + 2] not in "ZX":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_hung_sandboxed_agent_is_killed_at_its_timeout_with_nothing_left(stack: Any, cli: AwsCli) -> None:
    """An agent that ignores SIGTERM, with a helper that left its process group, fails at the
    runner's timeout, and no process of it (found on the host by the token in its environment)
    is left; the runner goes on to complete the next task."""
    hung, after = unique("sbx-hang"), unique("sbx-after")
    cli.put_task(hung, f"feature/{hung}", details="[probe:hang]")
    row = final(cli, hung)
    assert row["status"] == "failed" and "timed out" in (row.get("error") or ""), row
    deadline = time.monotonic() + 10
    while host_processes_with(RUN_TOKEN) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert host_processes_with(RUN_TOKEN) == []
    cli.put_task(after, f"feature/{after}")
    assert final(cli, after)["status"] == "complete"


def test_a_runner_whose_sandbox_cannot_run_refuses_to_start_saying_what_to_do(
    stack: Any, tmp_path: Path
) -> None:
    """AGENT_SANDBOX=bwrap on a host without bubblewrap (played by a name that is not installed):
    the runner exits at once with a sentence that says to install it or to turn the sandbox off,
    and takes no task."""
    log = tmp_path / "refusing-runner.log"
    proc = stack.start_runner({"AGENT_SANDBOX_BWRAP": "bwrap-not-installed-here"}, log_path=log, index=7)
    code = proc.wait(timeout=60)
    text = log.read_text()
    assert code != 0
    assert "install bubblewrap" in text and "set AGENT_SANDBOX=off" in text, text
    assert "Traceback" not in text, text


def helper_running() -> bool:
    for pid in host_processes_with(RUN_TOKEN):
        with contextlib.suppress(OSError):
            if b"sleep(3600)" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
    return False


def test_a_runner_killed_outright_takes_its_sandboxed_agent_along(stack: Any, cli: AwsCli) -> None:
    """SIGKILL to the runner while its agent (and the agent's helper, out of its process group)
    works: the sandbox dies with the runner, so nothing of the agent works on a task that another
    runner will reclaim. (Last in this module: it ends the module's runner.)"""
    task_id = unique("sbx-orphan")
    cli.put_task(task_id, f"feature/{task_id}", details="[probe:hang]")
    wait_until(helper_running, 60, what="the probe's helper running")
    runner = stack.runners[0]
    # when
    runner.kill()
    runner.wait(timeout=30)
    # then
    deadline = time.monotonic() + 10
    while host_processes_with(RUN_TOKEN) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert host_processes_with(RUN_TOKEN) == []
