"""The Lambdas' one observability module: EMF metrics and log lines on one stream, configured from
Powertools' environment, each case in a fresh interpreter (the module configures itself on import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def run(code: str, **env: str) -> tuple[list[dict[str, Any]], str, str]:
    """Run ``code`` after ``from shared.observability import *`` in a fresh interpreter whose stdout
    is redirected before the import (as the local stack loads its Lambdas); returns the JSON lines
    written to that redirected stream, and what reached the real stdout and stderr."""
    script = (
        "import contextlib, io, json, logging, sys\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    from shared.observability import *\n"
        "    from shared import observability\n"
        f"{code}\n"
        "sys.__stdout__.write('CAPTURED ' + json.dumps(out.getvalue()) + '\\n')\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POWERTOOLS_")}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    captured = json.loads(next(ln for ln in lines if ln.startswith("CAPTURED ")).removeprefix("CAPTURED "))
    rest = "\n".join(ln for ln in lines if not ln.startswith("CAPTURED "))
    return [json.loads(ln) for ln in captured.splitlines()], rest, proc.stderr


def test_emf_lines_go_where_the_log_lines_go_not_to_the_stdout_of_the_moment() -> None:
    """Metrics flushed after stdout was given back (the local stack's console) still go to the
    stream the Logger was made with; the namespace comes from the environment."""
    lines, console, _ = run(
        "logger.info('made')\n"
        "metrics.add_metric(name=TASKS_SIGNALLED, unit=MetricUnit.Count, value=1)\n"
        "metrics.flush_metrics()",
        POWERTOOLS_METRICS_NAMESPACE="aipm-local",
        POWERTOOLS_SERVICE_NAME="aipm-dispatch",
    )
    assert console == ""
    log, emf = lines
    assert (log["message"], log["service"]) == ("made", "aipm-dispatch")
    assert emf["TasksSignalled"] == [1.0]
    assert emf["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "aipm-local"
    assert emf["service"] == "aipm-dispatch"


def test_metrics_without_a_namespace_are_published_under_aipm() -> None:
    lines, _, _ = run(
        "metrics.add_metric(name=DEAD_LETTERS, unit=MetricUnit.Count, value=1)\nmetrics.flush_metrics()"
    )
    assert lines[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "aipm"


def test_a_full_metric_set_is_published_to_the_same_stream() -> None:
    """Powertools publishes a set on its own at 100 values; those lines must not reach the console."""
    lines, console, _ = run(
        "for _ in range(250):\n"
        "    metrics.add_metric(name=PICKUP_LATENCY, unit=MetricUnit.Milliseconds, value=5)\n"
        "metrics.flush_metrics()"
    )
    assert console == ""
    assert sum(len(line["PickupLatency"]) for line in lines) == 250


def test_an_empty_flush_publishes_nothing_and_warns_nothing() -> None:
    """A batch of quiet stream records publishes no metric: no line, no warning on every invocation."""
    lines, console, stderr = run("metrics.flush_metrics()", PYTHONWARNINGS="error")
    assert (lines, console, stderr) == ([], "", "")


def test_the_shared_packages_log_lines_carry_the_handlers_keys() -> None:
    """``shared``'s standard-library loggers write through the Logger: JSON with its appended keys."""
    lines, _, _ = run(
        "with logger.append_context_keys(task_id='T-1', correlation_id='T-1'):\n"
        "    logging.getLogger('shared.store').info('claimed %s', 'T-1')\n"
        "logging.getLogger('shared.store').info('after')",
        POWERTOOLS_SERVICE_NAME="aipm-dispatch",
    )
    inside, after = lines
    assert (inside["message"], inside["task_id"], inside["correlation_id"]) == ("claimed T-1", "T-1", "T-1")
    assert inside["name"] == "shared.store" and inside["service"] == "aipm-dispatch"
    assert "task_id" not in after
