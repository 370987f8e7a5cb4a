"""What a runner host installs: `pip install .` builds a wheel of the runner (shared/ and ec2_runner/)
without the dev stack, the Lambdas, the tests or the benchmarks; its `aipm local` says where the
local stack lives instead of failing on an import. A checkout's dev install still runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

AIPM = Path(sys.executable).parent / "aipm"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip install .` builds, from a copy of the sources (a checkout's stale build/
    folder cannot leak into it); offline, with this environment's setuptools."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(
        ROOT, src, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "node_modules")
    )
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip_wheel, "-w", str(tmp), str(src)],
        check=True,
        capture_output=True,
        timeout=150,
    )
    (built,) = tmp.glob("*.whl")
    return built


def test_the_wheel_holds_the_runner_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}

    assert {t for t in tops if not t.endswith(".dist-info")} == {"shared", "ec2_runner"}
    assert {"shared/config.py", "shared/store.py", "ec2_runner/cli.py", "ec2_runner/main.py"} <= set(names)
    for absent in ("local", "functions", "tests", "bench"):
        assert not any(name.startswith(f"{absent}/") for name in names), absent
    (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
    # its one command, and nothing that points into a package it does not hold
    assert zipfile.ZipFile(wheel).read(entry_points).decode().split() == [
        "[console_scripts]",
        "aipm",
        "=",
        "ec2_runner.cli:main",
    ]


def test_the_wheel_s_aipm_local_says_where_the_local_stack_lives(wheel: Path, tmp_path: Path) -> None:
    """On a runner host (the wheel alone on the path) `aipm local up` explains itself, exit 2."""
    code = (
        f"import sys; sys.path.insert(0, {str(wheel)!r}); from ec2_runner import cli; "
        f"assert cli.__file__.startswith({str(wheel)!r}), cli.__file__; sys.exit(cli.main(['local', 'up']))"
    )
    # -I -S: neither this checkout, the working folder nor the dev install's site-packages
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )

    assert proc.returncode == 2, proc.stderr
    assert "aipm local: the local stack is not installed here" in proc.stderr
    assert "checkout" in proc.stderr


def test_a_dev_install_s_aipm_local_runs_the_local_stack(tmp_path: Path) -> None:
    """`aipm local ...` hands everything after `local` to the stack's own program, options included."""
    proc = subprocess.run(
        [str(AIPM), "local", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: aipm local ") and "{up,demo}" in proc.stdout
