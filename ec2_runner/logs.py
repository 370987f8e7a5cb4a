"""Structured logging for the runner: Powertools' JSON formatter, the task id on every line of a task."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import logging.handlers
import sys
from collections.abc import Iterator
from pathlib import Path

from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

_task_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("task_id", default=None)
_runner_id: str | None = None  # one per process, shared by every thread


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.task_id = _task_id.get()
        record.runner_id = _runner_id
        return True


# a log file the runner appends to itself rotates at this size, keeping this many old files (the
# CloudWatch agent follows the rotation; nothing else on the instance has to)
LOG_FILE_BYTES = 50 * 1024 * 1024
LOG_FILE_BACKUPS = 2


class _Formatter(LambdaPowertoolsFormatter):
    def format(self, record: logging.LogRecord) -> str:
        emf = getattr(record, "emf", None)
        if emf is not None:  # an EMF document (ec2_runner/metrics.py) is the whole line, as it is
            return json.dumps(emf, separators=(",", ":"))
        self.append_keys(
            task_id=getattr(record, "task_id", None), runner_id=getattr(record, "runner_id", None)
        )
        return super().format(record)


def configure(
    level: str = "INFO", service: str = "aipm-runner", path: Path | None = None, also_to: Path | None = None
) -> None:
    """JSON lines for every logger of the process, on stderr or appended to ``path``, and also to
    the rotating file ``also_to`` (idempotent: a second call replaces the first one's handlers)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_aipm", False):
            root.removeHandler(h)
            h.close()
    handlers = [_handler(path)]
    if also_to is not None:
        also_to.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                also_to, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8"
            )
        )
    for handler in handlers:
        handler._aipm = True  # type: ignore[attr-defined]
        handler.setFormatter(_Formatter(service=service, utc=True))
        handler.addFilter(_ContextFilter())
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "git", "werkzeug", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _handler(path: Path | None) -> logging.Handler:
    if path is None:
        return logging.StreamHandler(sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    return logging.FileHandler(path, encoding="utf-8")


@contextlib.contextmanager
def task_context(task_id: str) -> Iterator[None]:
    """Every log line inside carries ``task_id``."""
    token = _task_id.set(task_id)
    try:
        yield
    finally:
        _task_id.reset(token)


def set_runner_id(runner_id: str) -> None:
    global _runner_id
    _runner_id = runner_id
