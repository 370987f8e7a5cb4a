"""What ``aipm``'s operator commands print: tables and views for people (rich), JSON for scripts,
errors as sentences, and the exit codes the README lists."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from enum import IntEnum
from typing import Any

from rich.console import Console
from rich.table import Table


class ExitCode(IntEnum):
    """``aipm``'s exit codes (README, "Operator commands")."""

    OK = 0
    FAILED = 1  # the task (or the operation) failed
    USAGE = 2  # bad arguments or input: nothing was written
    NOT_FOUND = 3  # no such task, message or runner
    UNREACHABLE = 4  # AWS (or the local stack) could not be reached
    INTERRUPTED = 130  # Ctrl-C (as a shell reports SIGINT)


class CliError(Exception):
    """An error a person reads: ``message`` is a sentence that says what to do; ``main`` prints it
    (never a traceback) and exits with ``code``."""

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# a table piped to a file, grep or less is not folded to 80 columns (COLUMNS still sets a width)
PIPED_WIDTH = 240


def out() -> Console:
    """The console for results (stdout); soft-wrapped so piping keeps whole lines."""
    console = Console(soft_wrap=True, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(soft_wrap=True, highlight=False, width=PIPED_WIDTH)
    return console


def err() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


def print_json(data: Any) -> None:
    """One JSON document on stdout (``--json``): stable keys, no colour, no wrapping."""
    sys.stdout.write(json.dumps(data, default=str, sort_keys=True) + "\n")
    sys.stdout.flush()


def table(
    rows: Iterable[Mapping[str, Any]], columns: Sequence[tuple[str, str]], *, title: str | None = None
) -> None:
    """``rows`` as a table with ``columns`` (key, heading); a missing value shows as an empty cell."""
    t = Table(title=title, show_lines=False, header_style="bold")
    for _, heading in columns:
        t.add_column(heading, overflow="fold")
    for row in rows:
        t.add_row(*("" if row.get(k) is None else str(row.get(k)) for k, _ in columns))
    out().print(t)


def view(fields: Mapping[str, Any], *, title: str | None = None) -> None:
    """One record as a two-column view (field, value), in the mapping's order."""
    t = Table(title=title, show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for k, v in fields.items():
        t.add_row(k, "" if v is None else str(v))
    out().print(t)
