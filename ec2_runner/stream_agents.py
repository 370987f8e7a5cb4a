"""The base of the adapters for agent CLIs that report their run as JSON lines (Claude Code's
``stream-json``, Codex's ``--json`` events): a run is judged from those events, never from the exit
code alone.

:class:`StreamRules` hears the output as it streams (:meth:`StreamRules.feed`, whole lines, however
the pty split them), hands each JSON event to :meth:`StreamRules.event` and each other line to
:meth:`StreamRules.text`, and is the driver's watcher too (a CLI that must be stopped: a turn limit,
an unreachable model API). :class:`StreamAgent` runs its CLI once under fresh rules and asks them
for the verdict. An adapter names its command and its rules; extending one (another check, another
flag) is a subclass or a method, not a change here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from ec2_runner.agent_settings import AgentSettings
from ec2_runner.headless import DriveOnce, PtyAgent, Verdict, judge_exit, killed_by
from ec2_runner.ptydriver import Ask, PtyRun, Stop
from shared.models import ErrorKind

logger = logging.getLogger(__name__)

MAX_LINE_CHARS = 4 * 1024 * 1024  # a tool result can be large; beyond this a line is dropped


class StreamRules:
    """One run's events, as they stream, and the verdict on the run once it ended."""

    def __init__(self, settings: AgentSettings, name: str) -> None:
        self.settings = settings
        self.name = name
        self.session_id: str | None = None
        self._pending = ""
        self._stop: Stop | None = None

    # -- hearing the output

    def feed(self, text: str) -> None:
        """Plain output as the driver streams it."""
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        if len(self._pending) > MAX_LINE_CHARS:
            logger.warning("%s printed a line over %d characters; dropped", self.name, MAX_LINE_CHARS)
            self._pending = ""
        for line in lines:
            self._line(line)

    def _line(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict):
                self.event(event)
                return
        self.text(line)

    def event(self, event: dict[str, Any]) -> None:
        """One JSON event of the CLI's."""

    def text(self, line: str) -> None:
        """One line that is not a JSON event (the CLI's log lines, on stderr in the same pty)."""

    def stop(self, verdict: Stop) -> None:
        """End the run at the next look (the first reason stays)."""
        if self._stop is None:
            logger.warning("%s: stopping the run: %s", self.name, verdict.error)
            self._stop = verdict

    def __call__(self, text: str, now: float) -> Stop | Ask | None:
        """The driver's watcher: a Stop once the events said the run must end (an adapter may
        also hand a question to a person: an Ask)."""
        self.tick(now)
        return self._stop

    def tick(self, now: float) -> None:
        """Called at least every poll: rules that act on time (a model API unreachable too long)."""

    # -- the verdict

    def finish(self) -> None:
        """The run ended: what is left without a newline is a line too."""
        if self._pending:
            line, self._pending = self._pending, ""
            self._line(line)

    def judge(self, run: PtyRun) -> Verdict:
        """The run's verdict from its events. Here: stopped or killed as any command; an adapter
        judges the rest."""
        if run.error:
            return Verdict(
                run, False, run.error, run.kind or ErrorKind.AGENT_EXIT, session_id=self.session_id
            )
        if run.exit_code is None:
            return Verdict(run, False, killed_by(run), ErrorKind.AGENT_EXIT, session_id=self.session_id)
        ok, error = judge_exit(run)
        return Verdict(run, ok, error, None if ok else ErrorKind.AGENT_EXIT, session_id=self.session_id)


class StreamAgent(PtyAgent):
    """An agent CLI judged by :class:`StreamRules` of its own (``rules()``)."""

    def rules(self) -> StreamRules:
        return StreamRules(self.settings, self.name)

    def _attempts(self, once: DriveOnce, on_output: Callable[[str], None] | None) -> Verdict:
        rules = self.rules()
        run = once(rules, rules.feed)
        rules.finish()
        verdict = rules.judge(run)
        if verdict.run.error and verdict.kind is ErrorKind.AGENT_TURN_LIMIT:
            verdict.keep_work = True
        return verdict


def quoted_toml(value: str) -> str:
    """A TOML basic string for a ``-c key=value`` override."""
    return json.dumps(value)
