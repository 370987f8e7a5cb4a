"""The suite's time per tier: which tier a test's time is counted in, and the order files run in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import COMMITTED_FILE_SECONDS, DEFAULT_FILE_SECONDS, TIERS, tier_of

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("nodeid", "keywords", "tier"),
    [
        ("tests/unit/test_models.py::test_x", {"unit": 1}, "unit"),
        ("tests/integration/test_store.py::test_x[dynamodb]", {"integration": 1}, "integration"),
        ("tests/e2e/test_pipeline.py::test_x", {"e2e": 1}, "e2e"),
        ("tests/chaos/test_outage.py::test_x", {"chaos": 1}, "chaos"),
        ("tests/e2e/test_terminal_page.py::test_x", {"e2e": 1, "browser": 1}, "browser"),
        ("tests/integration/test_real_agent_traps.py::test_x", {"real_cli": 1}, "real agent CLIs"),
        ("tests/test_loose.py::test_x", {}, "other"),
    ],
)
def test_a_tests_tier_is_its_marker_before_its_folder(nodeid: str, keywords: dict, tier: str) -> None:
    assert tier_of(nodeid, keywords) == tier


def test_every_tier_has_a_first_run_weight_and_the_long_tiers_run_first() -> None:
    """Without an earlier run's times, chaos and real-CLI files are scheduled before e2e, e2e before
    integration, integration before unit."""
    assert set(DEFAULT_FILE_SECONDS) == set(TIERS)
    w = DEFAULT_FILE_SECONDS
    assert w["chaos"] >= w["real agent CLIs"] >= w["browser"] >= w["e2e"] > w["integration"] > w["unit"]


def test_this_suite_marks_its_browser_and_real_cli_tests(request: pytest.FixtureRequest) -> None:
    """The marks come from what a module imports: the terminal page's file drives Chromium, the
    real-CLI files drive tests.agent_clis."""
    items = request.session.items
    marked = {i.nodeid.split("::")[0]: {m.name for m in i.iter_markers()} for i in items}
    for path, expected in [
        ("tests/e2e/test_terminal_page.py", "browser"),
        ("tests/e2e/test_real_agent_clis.py", "real_cli"),
        ("tests/integration/test_real_agent_traps.py", "real_cli"),
    ]:
        if path in marked:  # a run of some files only: what it collected
            assert expected in marked[path], path
    assert "browser" not in marked.get("tests/unit/test_tier_times.py", set())


def test_the_budget_part_of_the_suite_is_selected_by_the_marks_the_suite_sets() -> None:
    """`pytest -m "not browser and not real_cli"` (the part the 4-minute budget holds) leaves out the
    files whose marks come from their imports, and keeps the rest."""
    root = Path(__file__).resolve().parents[2]
    files = [
        "tests/e2e/test_terminal_page.py",
        "tests/e2e/test_real_agent_clis.py",
        "tests/unit/test_frames.py",
    ]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--collect-only",
            "-q",
            "-m",
            "not browser and not real_cli",
            *files,
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    kept = {line.split("::")[0] for line in done.stdout.splitlines() if "::" in line}
    assert kept == {"tests/unit/test_frames.py"}, done.stdout
    assert "deselected" in done.stdout, done.stdout


def test_a_clean_clone_runs_its_longest_files_first_from_the_committed_times() -> None:
    """Without pytest's cache (a clean clone), the files of one tier are ordered by the times
    `make test-order` committed, longest first, not in the order they are collected."""
    root = Path(__file__).resolve().parents[2]
    committed = json.loads(COMMITTED_FILE_SECONDS.read_text())
    e2e = sorted(p for p in committed if p.startswith("tests/e2e/") and (root / p).is_file())
    # two files collected in name order whose committed times say the other order
    first, second = next(
        (a, b) for i, a in enumerate(e2e) for b in e2e[i + 1 :] if committed[b] > committed[a] + 5
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", first, second],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    order = list(dict.fromkeys(line.split("::")[0] for line in done.stdout.splitlines() if "::" in line))
    assert order == [second, first], done.stdout
