"""The dispatch function as `sam build` packages it, run by python3.12 in an isolated interpreter.

Only the build output is importable -- the function's folder (Lambda's /var/task), the layer's
python/ (/opt/python) and the packages the python3.12 runtime itself provides (boto3 and its
dependencies) -- so a missing file in the layer or a stray import of the project fails here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from local.deploy import LocalStackResources
from shared import aws
from tests.conftest import EVENTS, ROOT

pytestmark = pytest.mark.integration

BUILD = ROOT / ".aws-sam" / "build"
# what the python3.12 Lambda runtime ships besides the standard library
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")

RUN_HANDLER = r"""
import json, sys
task_dir, layer_dir, runtime_dir, event_file = sys.argv[1:5]
sys.path[:0] = [task_dir, layer_dir, runtime_dir]  # Lambda's order: /var/task, /opt/python, runtime
import app, shared

class Context:
    function_name = "DispatchFunction"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:DispatchFunction"
    memory_limit_in_mb = 256
    aws_request_id = "built-function-test"
    log_group_name = "/aws/lambda/DispatchFunction"
    log_stream_name = "test"
    def get_remaining_time_in_millis(self):
        return 30000

with open(event_file) as f:
    result = app.lambda_handler(json.load(f), Context())
print("RESULT " + json.dumps({"result": result, "shared": shared.__file__, "app": app.__file__,
                              "version": list(sys.version_info[:2])}))
"""


def find_python312() -> str | None:
    """A python3.12 executable: on PATH, or under pyenv (as the Makefile finds it for `sam build`)."""
    candidates: list[tuple[str, dict[str, str]]] = [("python3.12", {})]
    pyenv = shutil.which("pyenv")
    if pyenv:
        versions = subprocess.run(
            [pyenv, "versions", "--bare"], capture_output=True, text=True
        ).stdout.split()
        candidates += [("python3.12", {"PYENV_VERSION": v}) for v in versions if v.startswith("3.12")]
    for exe, extra in candidates:
        try:
            out = subprocess.run(
                [exe, "-c", "import sys; print(sys.executable)"],
                capture_output=True,
                text=True,
                timeout=30,
                env={**os.environ, **extra},
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return None


@pytest.fixture(scope="module")
def python312() -> str:
    exe = find_python312()
    if exe is None:
        pytest.skip("no python3.12 on this machine (the Lambda runtime's version); `sam build` needs it too")
    return exe


@pytest.fixture(scope="module")
def built() -> Path:
    """The build output of `make build`; built here if absent so the test never checks stale nothing."""
    if not (BUILD / "DispatchFunction" / "app.py").exists():
        subprocess.run(["make", "build"], cwd=ROOT, check=True, timeout=600)
    return BUILD


@pytest.fixture(scope="module")
def runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stand-in for the runtime's own site-packages: links to this venv's pure-Python boto3 stack."""
    path = tmp_path_factory.mktemp("lambda-runtime")
    for name in RUNTIME_PACKAGES:
        module = __import__(name)
        source = Path(module.__file__)
        source = source.parent if source.name == "__init__.py" else source
        (path / source.name).symlink_to(source)
    return path


def test_built_dispatch_function_signals_sqs_from_a_clean_python312(
    python312: str, built: Path, runtime_dir: Path, fresh_stack: LocalStackResources, moto_endpoint: str
) -> None:
    """events/stream_insert.json through the packaged function -> its signal is in the task queue."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
        **fresh_stack.function_env("dispatch"),
    }
    proc = subprocess.run(
        [
            python312,
            "-I",  # no PYTHONPATH, no user site, no script dir: only what the build ships
            "-c",
            RUN_HANDLER,
            str(built / "DispatchFunction"),
            str(built / "SharedLayer" / "python"),
            str(runtime_dir),
            str(EVENTS / "stream_insert.json"),
        ],
        cwd=runtime_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    report = json.loads(line.removeprefix("RESULT "))
    assert report["version"] == [3, 12]
    assert report["result"] == {"batchItemFailures": []}
    assert report["shared"].startswith(str(built / "SharedLayer" / "python"))
    assert report["app"].startswith(str(built / "DispatchFunction"))

    sqs = aws.client("sqs", region="us-east-1", endpoint_url=moto_endpoint)
    msgs = sqs.receive_message(QueueUrl=fresh_stack.task_queue_url, WaitTimeSeconds=2).get("Messages", [])
    assert [json.loads(m["Body"]) for m in msgs] == [
        {"taskId": "3f6c1c8e-2b7a-4d0e-9a51-7c2f0d4e8a10", "reason": "insert"}
    ]


def test_the_project_is_not_importable_from_the_isolated_interpreter(python312: str) -> None:
    """Guards the test above: -I hides the checkout's own `shared` even when run from the checkout."""
    proc = subprocess.run(
        [python312, "-I", "-c", "import shared"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "No module named 'shared'" in proc.stderr
