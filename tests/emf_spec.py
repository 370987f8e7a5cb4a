"""CloudWatch embedded metric format, as its specification has it: what CloudWatch Logs needs to
find in a log line before it extracts metrics from it. ``documents(lines)`` picks the EMF lines out
of a log and checks each one; a line that carries ``_aws`` but breaks a rule fails the test."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

# the units EMF accepts (CloudWatch's StandardUnit)
UNITS = {
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes",
    "Terabytes", "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count",
    "Bytes/Second", "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second",
    "Bits/Second", "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second",
    "Count/Second", "None",
}  # fmt: skip


def check(doc: dict[str, Any]) -> None:
    """Raise AssertionError unless ``doc`` is a valid EMF document."""
    meta = doc.get("_aws")
    assert isinstance(meta, dict), "no _aws object"
    stamp = meta.get("Timestamp")
    assert isinstance(stamp, int) and stamp > 1_500_000_000_000, f"Timestamp in epoch ms: {stamp!r}"
    directives = meta.get("CloudWatchMetrics")
    assert isinstance(directives, list) and directives, "CloudWatchMetrics must be a non-empty list"
    for d in directives:
        namespace = d.get("Namespace")
        assert isinstance(namespace, str) and 1 <= len(namespace) <= 1024, f"Namespace {namespace!r}"
        dimension_sets = d.get("Dimensions")
        assert isinstance(dimension_sets, list), "Dimensions must be a list of lists"
        for dims in dimension_sets:
            assert isinstance(dims, list) and len(dims) <= 30, f"a dimension set: {dims!r}"
            for name in dims:
                value = doc.get(name)
                assert isinstance(value, str) and value, f"dimension {name} must be a top-level string"
        metrics = d.get("Metrics")
        assert isinstance(metrics, list) and 1 <= len(metrics) <= 100, "1 to 100 Metrics"
        for m in metrics:
            name = m.get("Name")
            assert isinstance(name, str) and 1 <= len(name) <= 1024, f"metric name {name!r}"
            assert m.get("Unit", "None") in UNITS, f"{name}: unit {m.get('Unit')!r}"
            value = doc.get(name)
            values = value if isinstance(value, list) else [value]
            assert values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values), (
                f"{name} must be a top-level number: {value!r}"
            )


def documents(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Every EMF document among JSON log lines, each checked against the specification."""
    found = []
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "_aws" in doc:
            check(doc)
            found.append(doc)
    return found


def metric_names(doc: dict[str, Any]) -> set[str]:
    return {m["Name"] for d in doc["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}


def dimensions(doc: dict[str, Any]) -> list[list[str]]:
    return [dims for d in doc["_aws"]["CloudWatchMetrics"] for dims in d["Dimensions"]]


def values(doc: dict[str, Any], name: str) -> list[float]:
    """A metric's values in a document (EMF takes a number or a list of them)."""
    value = doc[name]
    return [float(v) for v in (value if isinstance(value, list) else [value])]
