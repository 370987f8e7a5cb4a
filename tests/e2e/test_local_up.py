"""`aipm local up` and hand-started `aipm runner`s as an operator uses them: the console script in a
fresh folder, endpoints read back from `.aipm/local.json`, rows inserted with the plain aws CLI."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import FAKE_AGENT_COMMAND, AwsCli, unique, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

AIPM = Path(sys.executable).parent / "aipm"


def _env(**extra: str) -> dict[str, str]:
    # what an operator's shell has: no endpoints named, so `aipm runner` must find local.json
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL", "TASK_QUEUE_URL")}
    # the fake Kiro CLI in place of kiro-cli, for the stack's runners and the hand-started ones
    return {**env, "AGENT": "kiro", "AGENT_COMMAND": FAKE_AGENT_COMMAND, **extra}


def _stop(proc: subprocess.Popen, timeout: float = 40) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """`aipm local up --runners 2` in an empty folder, on free ports."""
    folder = tmp_path_factory.mktemp("operator")
    log = open(folder / "up.log", "wb")
    proc = subprocess.Popen(
        [str(AIPM), "local", "up", "--runners", "2", "--aws-port", "0", "--port", "0"],
        cwd=folder,
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    local_json = folder / ".aipm" / "local.json"
    try:
        wait_until(
            lambda: local_json.is_file() and b"Ctrl-C to stop" in (folder / "up.log").read_bytes(),
            90,
            interval=0.2,
            what="aipm local up to write .aipm/local.json and start its runners",
        )
        yield folder, json.loads(local_json.read_text())
    finally:
        assert _stop(proc) == 0, (folder / "up.log").read_text()[-3000:]
        log.close()


def _runner_id(log: Path) -> str:
    for line in log.read_text().splitlines():
        if line.startswith("{") and (rid := json.loads(line).get("runner_id")):
            return str(rid)
    raise AssertionError(f"no runner_id in {log}")


def _run_task(cli: AwsCli, task_id: str) -> dict:
    cli.put_task(task_id, f"feature/{task_id}")
    return cli.wait_final(task_id, 60)


def test_local_json_names_every_endpoint_and_only_its_owner_can_read_it(
    up: tuple[Path, dict[str, Any]],
) -> None:
    folder, cfg = up
    assert cfg["endpoint_url"].startswith("http://127.0.0.1:")
    assert cfg["table_name"] == "aipm-amazon-q-queue" and cfg["region"] == "us-east-1"
    assert "/aipm-local-tasks" in cfg["task_queue_url"] and cfg["dlq_url"] != cfg["task_queue_url"]
    assert Path(cfg["git_remote"]) == folder / ".aipm" / "remote.git"
    assert cfg["ws_url"].startswith("ws://127.0.0.1:") and cfg["management_url"].startswith("http://")
    # it holds the local runner and token secrets
    assert stat.S_IMODE((folder / ".aipm" / "local.json").stat().st_mode) == 0o600


def test_the_console_shows_sentences_and_the_log_lines_go_to_the_log_folder(
    up: tuple[Path, dict[str, Any]],
) -> None:
    folder, _ = up
    console = (folder / "up.log").read_text()
    assert console.startswith("starting the local stack") and "Ctrl-C to stop" in console
    assert not [line for line in console.splitlines() if line.lstrip().startswith("{")], console
    logs = folder / ".aipm" / "logs"
    assert "runner 1 started" in (logs / "local.log").read_text()
    assert all((logs / f"runner-{i}.log").is_file() for i in range(2))


def test_a_row_put_with_the_aws_cli_completes_on_the_started_runners(up: tuple[Path, dict[str, Any]]) -> None:
    _, cfg = up
    cli = AwsCli(cfg["endpoint_url"], cfg["table_name"])
    row = _run_task(cli, unique("up"))
    assert row["status"] == "complete", row.get("error")
    assert len(row["commitSha"]) == 40


def test_runners_started_by_hand_find_the_stack_and_share_one_clone_safely(
    up: tuple[Path, dict[str, Any]],
) -> None:
    """Two `aipm runner`s started at once in the stack's folder, with no endpoint in the
    environment: both find the stack through .aipm/local.json, neither touches ~/.aipm."""
    folder, cfg = up
    home = folder / "home"  # a home of their own: the test proves they never write there
    home.mkdir()
    logs = [folder / f"by-hand-{i}.log" for i in range(2)]
    procs = []
    for path in logs:
        with open(path, "wb") as out:
            procs.append(
                subprocess.Popen(
                    [str(AIPM), "runner"],
                    cwd=folder,
                    env=_env(HOME=str(home)),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    try:
        wait_until(
            lambda: all(b"runner started" in p.read_bytes() for p in logs),
            60,
            interval=0.2,
            what="both hand-started runners to start",
        )
        assert all(b"using the local stack from .aipm/local.json" in p.read_bytes() for p in logs)
        assert all(p.poll() is None for p in procs), [p.read_text()[-2000:] for p in logs]
        # 8 tasks of 3 s each, put at once (one batch-write-item): the stack's two runners (4 slots)
        # cannot hold them all, so the hand-started ones must take some
        cli = AwsCli(cfg["endpoint_url"], cfg["table_name"])
        ids = [unique("byhand") for _ in range(8)]
        cli.put_tasks([{"task_id": t, "branch": f"feature/{t}", "details": "[fake:sleep=3]"} for t in ids])
        rows = [cli.wait_final(task_id, 90) for task_id in ids]
        assert [r["status"] for r in rows] == ["complete"] * 8, [r.get("error") for r in rows]
        by_hand = {_runner_id(p) for p in logs}
        assert by_hand & {r["runnerId"] for r in rows}, "the hand-started runners took no task"
        assert not (home / ".aipm").exists()
        assert (folder / ".aipm" / "runners" / "by-hand" / "repo").is_dir()
    finally:
        codes = [_stop(p) for p in procs]
    assert codes == [0, 0], [p.read_text()[-2000:] for p in logs]


def _server_error(endpoint: str) -> None:
    """A request the local AWS fails on (500, a traceback in its log): a stream read with an
    iterator that does not exist, asked once."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    streams = boto3.client(
        "dynamodbstreams",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    with pytest.raises(ClientError):
        streams.get_records(ShardIterator="no-such-iterator")


def test_make_demo_shows_the_sample_task_reach_a_pushed_commit(tmp_path: Path) -> None:
    """`aipm local demo` (what `make demo` runs) on the demo agent: the transitions, the pushed
    commit on the remote, a terminal link; Ctrl-C stops it cleanly. Its console (stdout and stderr
    both) shows sentences only: log lines, and the tracebacks of a request the local AWS fails
    on, go to .aipm/logs/."""
    # the demo as a user gets it: the demo agent, in the default sandbox
    env = {k: v for k, v in _env(PORT="0").items() if k not in ("AGENT", "AGENT_COMMAND", "AGENT_SANDBOX")}
    out_path = tmp_path / "demo.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [str(AIPM), "local", "demo", "--aws-port", "0"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    logs = tmp_path / ".aipm" / "logs"
    try:
        wait_until(lambda: "the stack keeps running" in out_path.read_text(), 90, what="the demo task")
        _server_error(json.loads((tmp_path / ".aipm" / "local.json").read_text())["endpoint_url"])
        wait_until(
            lambda: (logs / "local.log").is_file() and "Traceback" in (logs / "local.log").read_text(),
            10,
            what="the error's traceback in the log",
        )
        text = out_path.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=40)
    console = out_path.read_text()
    assert code == 0, console
    assert not [line for line in console.splitlines() if line.lstrip().startswith("{")], console
    assert "Traceback" not in console and "Error on request" not in console, console
    assert console.startswith("starting the local stack"), console
    assert "DEMO AGENT" in text
    assert "pending -> processing" in text
    sha = text.split("processing -> complete commit ")[1].split()[0]
    branch = text.split(f"pushed commit {sha} on ")[1].split(":")[0]
    remote = tmp_path / ".aipm" / "remote.git"
    tip = subprocess.run(
        ["git", "--git-dir", str(remote), "rev-parse", f"refs/heads/{branch}"], capture_output=True, text=True
    )
    assert tip.stdout.strip() == sha
    assert "terminal page: http://127.0.0.1:" in text and "?token=" in text and "?watch=demo-" in text
    # the stack's own, the Lambdas' and the runner's JSON lines went to the log folder
    for name in ("local.log", "lambdas.log", "runner-0.log"):
        assert (logs / name).stat().st_size > 0, name
    first = json.loads((logs / "local.log").read_text().splitlines()[0])
    assert first["service"] == "aipm-local" and "local AWS endpoint" in first["message"]
