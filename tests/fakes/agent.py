"""An agent that does what the test scripted, in the working directory it is given."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ec2_runner.agents import AgentResult
from ec2_runner.ptydriver import Asker


class ScriptedAgent:
    """Writes ``writes`` (relative path -> text) into its working directory, calls ``during``
    (something that happens while an agent works, such as another runner taking the row over),
    then returns ``result``. Like the real adapter, a ``should_stop`` that answers a reason stops
    it: the run ends killed (no exit code) with ``agent stopped: <reason>``. ``runs`` records each
    run's prompt and folder."""

    def __init__(
        self,
        result: AgentResult | None = None,
        writes: dict[str, str] | None = None,
        during: Callable[[], None] | None = None,
    ) -> None:
        self.result = result or AgentResult(ok=True, exit_code=0, output="made the change\n", duration=0.01)
        self.writes = writes or {}
        self.during = during
        self.runs: list[tuple[str, Path]] = []

    def run(
        self,
        prompt: str,
        cwd: Path,
        *,
        timeout: float | None = None,
        on_output: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool | str] | None = None,
        asker: Asker | None = None,
    ) -> AgentResult:
        self.runs.append((prompt, cwd))
        for rel, text in self.writes.items():
            (cwd / rel).parent.mkdir(parents=True, exist_ok=True)
            (cwd / rel).write_text(text)
        if self.during is not None:
            self.during()
        if on_output is not None and self.result.output:
            on_output(self.result.output)
        reason = should_stop() if should_stop is not None else False
        if reason:
            detail = reason if isinstance(reason, str) else "stop requested"
            return AgentResult(
                ok=False, exit_code=None, error=f"agent stopped: {detail}", output=self.result.output
            )
        return self.result

    def interactive_argv(self, resume: bool, session_id: str | None = None) -> list[str]:
        return ["scripted-agent", "--resume"] if resume else ["scripted-agent"]
