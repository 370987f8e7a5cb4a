"""Fixtures shared by every tier. The moto server runs over real HTTP on loopback."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest_plugins = ["tests.fixtures"]

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
FAKE_AGENT = ROOT / "tests" / "fake_agent"

# never reach real AWS: dummy credentials and a fixed region for every test
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SESSION_TOKEN="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_REGION="us-east-1",
    SAM_CLI_TELEMETRY="0",
)
os.environ.pop("AWS_PROFILE", None)
# the fake Kiro CLI keeps its conversations outside the worktrees, as the real one does: not in ~
os.environ.setdefault("FAKE_KIRO_HOME", tempfile.mkdtemp(prefix="fake-kiro-home-"))
# the fake Kiro CLI logs outside its worktree, and the reaping tests look its processes up by the pids
# it logs (a sandbox's pid namespace renumbers them): the suite runs agents unsandboxed unless a test
# asks for the sandbox, as tests/integration/test_sandbox.py and tests/e2e/test_sandboxed_runner.py do
os.environ.setdefault("AGENT_SANDBOX", "off")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto server for the session; tests isolate themselves by resource names."""
    from local.motoserver import MotoServer

    with MotoServer() as server:
        yield server.endpoint_url


@pytest.fixture(scope="session", autouse=True)
def _runners_forked() -> Iterator[None]:
    """The local stack's runners are forks of one interpreter that has imported the runner already
    (tests/prefork.py), each a process of its own; ``AIPM_TEST_EXEC_RUNNERS=1`` starts each with its
    own ``python -m ec2_runner`` instead. The runners a test starts otherwise (the unit's
    ``ExecStart``, ``aipm local up``) always start their own interpreter."""
    if os.environ.get("AIPM_TEST_EXEC_RUNNERS") == "1":
        yield
        return
    from local.stack import LocalStack
    from tests import prefork

    LocalStack.process_launcher = staticmethod(prefork.runner_process)  # type: ignore[assignment]
    yield


@pytest.fixture(scope="session", autouse=True)
def _lambda_logs_follow_stdout() -> None:
    """The in-process Lambdas' shared Logger keeps the stream it was made with, as in Lambda; in a
    test process that may be one test's captured stdout, closed when that test ends. It follows
    whatever ``sys.stdout`` is instead, so every test's capture sees the Lambdas' lines."""
    from tests.fixtures import _CurrentStdout

    try:
        from shared.observability import logger
    except Exception:  # e.g. a unit-tier process where sockets are off: no Lambda runs there
        return
    handler = logger.registered_handler
    if isinstance(handler, logging.StreamHandler):
        handler.setStream(_CurrentStdout())


# -- time per tier ---------------------------------------------------------------------------------
# The suite's budget is `make test` under 4 minutes on the 2-core machine; each tier reports its own
# time beside it. A test's tier: a real agent CLI or a browser (by marker, or found from what its
# module imports), else its folder's tier.
TIERS = ("unit", "integration", "e2e", "chaos", "browser", "real agent CLIs")
_BROWSER_MODULES = ("playwright", "local.browser")
_REAL_CLI_MODULES = ("tests.agent_clis",)


def _uses(module: ModuleType, prefixes: tuple[str, ...]) -> bool:
    """Whether ``module`` imported one of ``prefixes`` (a module, or a name taken from one)."""
    for value in vars(module).values():
        name = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
        if isinstance(name, str) and name.startswith(prefixes):
            return True
    return False


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects: `-m "not browser and not real_cli"` works
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests that drive a browser or a real agent CLI, so their time is told apart; then put
    the longest files first (each file's own order kept), so that xdist's ``--dist loadfile`` with
    ``--no-loadscope-reorder`` (the Makefile) starts the long chaos and e2e files at once instead of
    leaving them for last: the run ends when its longest file does, not a long file after the rest."""
    seen: dict[str, tuple[bool, bool]] = {}
    for item in items:
        module = getattr(item, "module", None)
        if module is None:
            continue
        if module.__name__ not in seen:
            seen[module.__name__] = (_uses(module, _REAL_CLI_MODULES), _uses(module, _BROWSER_MODULES))
        real_cli, browser = seen[module.__name__]
        if real_cli:
            item.add_marker(pytest.mark.real_cli)
        elif browser:
            item.add_marker(pytest.mark.browser)
    measured = _file_seconds(config)
    weight: dict[str, float] = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        if path not in weight:
            tier = tier_of(item.nodeid, item.keywords)
            weight[path] = measured.get(path, DEFAULT_FILE_SECONDS.get(tier, 0.0))
    items.sort(key=lambda item: -weight[item.nodeid.split("::")[0]])  # stable: a file keeps its order


# what a file of a tier takes when no earlier run has said (the first run of a clean clone)
DEFAULT_FILE_SECONDS = {
    "chaos": 60.0,
    "real agent CLIs": 60.0,
    "browser": 40.0,
    "e2e": 30.0,
    "integration": 5.0,
    "unit": 0.5,
}
_FILE_SECONDS_KEY = "aipm/file-seconds"


# the times `make test-order` wrote from a full run: a clean clone's first run starts its longest
# files first too (the tier defaults above only for files that came since)
COMMITTED_FILE_SECONDS = ROOT / "tests" / "file_seconds.json"


def _file_seconds(config: pytest.Config) -> dict[str, float]:
    """Each file's summed test time in earlier runs: pytest's cache over the committed times."""
    cache = getattr(config, "cache", None)
    found = cache.get(_FILE_SECONDS_KEY, {}) if cache is not None else {}
    committed = json.loads(COMMITTED_FILE_SECONDS.read_text()) if COMMITTED_FILE_SECONDS.is_file() else {}
    merged = {**committed, **(found if isinstance(found, dict) else {})}
    return {str(k): float(v) for k, v in merged.items()}


def tier_of(nodeid: str, keywords: Any) -> str:
    """The tier a test's time is counted in, from its id and its keywords (markers included)."""
    if "real_cli" in keywords:
        return "real agent CLIs"
    if "browser" in keywords:
        return "browser"
    folder = nodeid.split("/")[1] if nodeid.startswith("tests/") and nodeid.count("/") >= 2 else ""
    return folder if folder in TIERS else "other"


class TierTimes:
    """Counts tests and sums their durations (set-up, call, tear-down) per tier; prints a table at the
    end of the run, after the run's own wall time. Works under xdist: the reports reach the controller."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.started = time.monotonic()
        self.tests: dict[str, set[str]] = {}
        self.seconds: dict[str, float] = {}
        self.file_seconds: dict[str, float] = {}

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        tier = tier_of(report.nodeid, report.keywords)
        self.tests.setdefault(tier, set()).add(report.nodeid)
        self.seconds[tier] = self.seconds.get(tier, 0.0) + report.duration
        path = report.nodeid.split("::")[0]
        self.file_seconds[path] = self.file_seconds.get(path, 0.0) + report.duration

    @pytest.hookimpl
    def pytest_sessionfinish(self) -> None:
        """Each file's time, kept for the next run's order (files this run did not run keep theirs)."""
        cache = getattr(self.config, "cache", None)
        if cache is not None and self.file_seconds:
            rounded = {k: round(v, 1) for k, v in self.file_seconds.items()}
            cache.set(_FILE_SECONDS_KEY, {**_file_seconds(self.config), **rounded})

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.tests:
            return
        wall = time.monotonic() - self.started
        write = terminalreporter.write_line
        terminalreporter.section("time per tier")
        write(f"{'tier':<18}{'tests':>7}{'summed s':>11}")
        order = [t for t in (*TIERS, "other") if t in self.tests]
        for tier in order:
            write(f"{tier:<18}{len(self.tests[tier]):>7}{self.seconds[tier]:>11.1f}")
        total = sum(len(v) for v in self.tests.values())
        write(f"{'all':<18}{total:>7}{sum(self.seconds.values()):>11.1f}")
        part = f' of -m "{self.config.option.markexpr}"' if self.config.option.markexpr else ""
        write(f"wall time of the run{part} {wall:.1f} s (summed durations overlap across xdist workers)")


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist) reports
        config.pluginmanager.register(TierTimes(config), "aipm-tier-times")
