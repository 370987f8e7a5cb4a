"""A runner whose agent is not logged in takes no task: the gate asks the agent (``kiro-cli whoami``)
at start-up and again every so often, and says so in the log when the answer changes.

A task received by such a runner would fail ``agent_not_logged_in`` although another runner could
do it; with the gate closed the runner does not receive from the task queue at all, so the task
stays pending (its message visible) for a runner whose agent can run it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from ec2_runner.headless import LoginStatus

logger = logging.getLogger(__name__)


class _Checks(Protocol):
    def login_status(self) -> LoginStatus: ...


class LoginGate:
    """Open when the agent is logged in (or has no login to check); asked again every
    ``recheck_seconds``, whether open or closed (a credential can also expire)."""

    def __init__(
        self, agent: _Checks, recheck_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.agent = agent
        self.recheck_seconds = recheck_seconds
        self._clock = clock
        self._status: LoginStatus | None = None
        self._next = 0.0
        self._lock = threading.Lock()

    @property
    def status(self) -> LoginStatus | None:
        """The last answer (None before the first check)."""
        return self._status

    def ready(self) -> bool:
        """Whether the runner may take a task now; asks the agent when the last answer is old."""
        with self._lock:
            now = self._clock()
            if self._status is None or now >= self._next:
                self._update(self.agent.login_status())
                self._next = now + self.recheck_seconds
            assert self._status is not None
            return self._status.ready

    def _update(self, new: LoginStatus) -> None:
        old = self._status
        self._status = new
        if new.ready and old is not None and not old.ready:
            logger.info("the agent is logged in now (%s): taking tasks", new.detail)
        elif not new.ready and (old is None or old.ready):
            logger.warning(
                "the agent is not logged in (%s): taking no tasks until it is; checking again every %.0f s",
                new.detail,
                self.recheck_seconds,
            )
        elif old is None:
            logger.info("agent login: %s", new.detail)
