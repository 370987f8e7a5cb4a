"""A task row as the operator commands show it: its fields in a reading order, cleaned of anything a
terminal would act on, with times a person reads ("3 min ago")."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from shared.models import InvalidRow, Task
from shared.text import clean_text

# what a listing holds per row (``tasks --json`` and ``list``); ``task show`` has every field
LISTED = (
    "id",
    "status",
    "errorKind",
    "branch",
    "title",
    "createdAt",
    "updatedAt",
    "attempts",
    "runnerId",
    "prNumber",
    "commitSha",
    "waitingFor",
    "error",
)

# ``task show``'s order; a field not named here (a backend's own) follows, in the row's order
SHOWN = (
    "id",
    "status",
    "title",
    "branch",
    "prNumber",
    "prUrl",
    "createdAt",
    "updatedAt",
    "startedAt",
    "finishedAt",
    "attempts",
    "runnerId",
    "leaseExpiresAt",
    "waitingFor",
    "baseSha",
    "commitSha",
    "wipSha",
    "wipRef",
    "errorKind",
    "error",
    "details",
    "logTail",
)
_TIMES = ("createdAt", "updatedAt", "startedAt", "finishedAt")


def listed(row: Task | InvalidRow) -> dict[str, Any]:
    """One listing entry: the ``LISTED`` fields of a task, or what an unreadable row has."""
    if isinstance(row, InvalidRow):
        return {"id": row.id, "status": row.status, "createdAt": row.created_at, "invalid": row.reason}
    fields = row.model_dump(mode="json")
    return {k: fields.get(k) for k in LISTED}


def cell(value: Any) -> str:
    """A value as a table cell: text from a row cleaned (no escapes, controls or direction marks)."""
    if value is None:
        return ""
    return clean_text(value if isinstance(value, str) else str(value))


def parse_time(stamp: Any) -> dt.datetime | None:
    """A row's ISO 8601 stamp (``2026-11-25T10:00:00.000Z``) as a UTC datetime, or None."""
    if not isinstance(stamp, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def span(seconds: float) -> str:
    """A duration as a person says it: ``42 s``, ``3 min 5 s``, ``2 h 10 min``, ``3 d 4 h``."""
    s = int(abs(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def ago(stamp: Any, now: dt.datetime | None = None) -> str:
    """``stamp`` as how long ago it was (``3 min 5 s ago``); the stamp itself when it is no time."""
    when = parse_time(stamp)
    if when is None:
        return cell(stamp)
    delta = ((now or dt.datetime.now(dt.UTC)) - when).total_seconds()
    return f"{span(delta)} ago" if delta >= 0 else f"in {span(delta)}"


def elapsed(row: dict[str, Any], now: dt.datetime | None = None) -> float | None:
    """Seconds a task has run (or ran, once finished), from ``startedAt``; None before it started."""
    start = parse_time(row.get("startedAt"))
    if start is None:
        return None
    end = parse_time(row.get("finishedAt")) if row.get("status") in ("complete", "failed") else None
    return ((end or now or dt.datetime.now(dt.UTC)) - start).total_seconds()


def last_line(text: Any) -> str:
    """The last line of output that holds something (``logTail``'s newest), cleaned."""
    if not isinstance(text, str):
        return ""
    for line in reversed(clean_text(text).splitlines()):
        if line.strip():
            return line.strip()
    return ""


def outcome(row: dict[str, Any]) -> str:
    """What a listing says a task came to: its commit, its error, or what it waits for."""
    if row.get("invalid"):
        return cell(row["invalid"])
    if row.get("status") == "complete" and row.get("commitSha"):
        return f"commit {cell(row['commitSha'])[:12]}"
    if row.get("error"):
        return cell(row["error"])
    return cell(row.get("waitingFor"))


def shown(row: dict[str, Any], now: float | None = None) -> dict[str, str]:
    """Every field of ``row`` (plain values, wire names) for ``task show``: ``SHOWN``'s order first,
    times with how long ago, the lease with how long it has left, the run's duration."""
    now_dt = dt.datetime.fromtimestamp(now, dt.UTC) if now is not None else dt.datetime.now(dt.UTC)
    out: dict[str, str] = {}
    for key in (*SHOWN, *(k for k in row if k not in SHOWN)):
        if key not in row:
            continue
        value = row[key]
        if key in _TIMES and parse_time(value):
            out[key] = f"{cell(value)} ({ago(value, now_dt)})"
        elif key == "leaseExpiresAt" and isinstance(value, int | float):
            left = value - (now if now is not None else time.time())
            try:
                when = dt.datetime.fromtimestamp(value, dt.UTC).isoformat(timespec="seconds")
            except (OverflowError, ValueError, OSError):  # a value no runner wrote
                when = cell(value)
            out[key] = f"{when} ({'in ' + span(left) if left > 0 else 'passed ' + span(left) + ' ago'})"
        else:
            out[key] = cell(value)
        if key == "finishedAt" or (key == "startedAt" and "finishedAt" not in row):
            run = elapsed(row, now_dt)
            if run is not None:
                out["ran for" if row.get("status") in ("complete", "failed") else "running for"] = span(run)
    return out
