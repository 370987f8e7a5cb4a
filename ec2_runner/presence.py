"""The runner's heartbeat record (``aipm runners``): who it is, what it holds, whether its agent is
logged in, written every interval (a few times a lease) and once more as it stops.

A write that fails is logged and tried again on the next beat: the record is for people, and the
runner's tasks never wait for it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, Field

from shared.runners import RunnerRecord, RunnerRegistry, RunnerState

logger = logging.getLogger(__name__)


def runner_version() -> str:
    """The installed package's version (``unknown`` when run from a source tree never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aipm-kiro-runner")
    except PackageNotFoundError:
        return "unknown"


class Snapshot(BaseModel):
    """What the runner is doing right now, for its next record."""

    state: RunnerState
    slots_busy: int
    slots_total: int
    tasks: list[str] = Field(default_factory=list)
    terminal_sessions: int = 0
    agent_logged_in: bool | None = None
    agent_login: str = ""


class Presence:
    """Writes ``runner_id``'s record every ``interval`` seconds from ``snapshot()``, at once after
    ``poke()``, and a last one (state ``stopped``) on ``stop()``."""

    def __init__(
        self,
        registry: RunnerRegistry,
        runner_id: str,
        agent: str,
        snapshot: Callable[[], Snapshot],
        *,
        interval: float,
        ttl_seconds: int,
    ) -> None:
        self.registry = registry
        self.runner_id = runner_id
        self.agent = agent
        self.snapshot = snapshot
        self.interval = interval
        self.ttl_seconds = ttl_seconds
        self.host = socket.gethostname()
        self.version = runner_version()
        self.started_at = time.time()
        self._stop = threading.Event()
        self._poke = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def record(self, snap: Snapshot) -> RunnerRecord:
        now = time.time()
        return RunnerRecord(
            runner_id=self.runner_id,
            host=self.host,
            pid=os.getpid(),
            version=self.version,
            agent=self.agent,
            agent_logged_in=snap.agent_logged_in,
            agent_login=snap.agent_login,
            state=snap.state,
            slots_busy=snap.slots_busy,
            slots_total=snap.slots_total,
            tasks=snap.tasks,
            terminal_sessions=snap.terminal_sessions,
            started_at=self.started_at,
            last_seen=now,
            heartbeat_seconds=self.interval,
            expires_at=int(now + self.ttl_seconds),
        )

    def beat(self, state: RunnerState | None = None) -> bool:
        """Write one record now (``state`` overrides the snapshot's); False when it failed."""
        try:
            snap = self.snapshot()
            if state is not None:
                snap = snap.model_copy(update={"state": state})
            self.registry.put(self.record(snap))
        except (ClientError, BotoCoreError) as e:
            if not self._failing:
                logger.warning(
                    "heartbeat record not written (%s); trying again every %.0f s", e, self.interval
                )
            self._failing = True
            return False
        except Exception:  # the snapshot itself: never take the runner down for a record
            logger.exception("heartbeat record not written")
            return False
        if self._failing:
            logger.info("heartbeat record written again")
        self._failing = False
        return True

    def start(self) -> Presence:
        self.beat()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()
        logger.info(
            "heartbeat record in %s every %.0f s (kept %d s after the last)",
            self.registry.table_name,
            self.interval,
            self.ttl_seconds,
        )
        return self

    def poke(self) -> None:
        """Something changed (a task started or ended, the agent's login): write soon."""
        self._poke.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poke.wait(self.interval)
            self._poke.clear()
            if self._stop.is_set():
                return
            self.beat()

    def stop(self) -> None:
        """The last record: ``stopped`` (a reader shows it as stopped, not gone)."""
        self._stop.set()
        self._poke.set()
        if self._thread is not None:
            self._thread.join(10)
        self.beat(RunnerState.STOPPED)


def terminal_count(service: Any) -> int:
    """Live terminal sessions of a TerminalService (0 without one), read from another thread."""
    sessions = getattr(service, "sessions", None) if service is not None else None
    if sessions is None:
        return 0
    try:
        return len(sessions.held())
    except RuntimeError:  # its dict changed while read: the next beat counts again
        return 0
