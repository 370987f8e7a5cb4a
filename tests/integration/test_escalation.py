"""A blocked run handed to a person (``APPROVAL=escalate``), in its parts: the Kiro adapter on the fake
``kiro-cli`` in a real pty, held at its approval question until an answer comes (or its timeout
passes), and the session manager that shows the question to a task's watchers and takes the answer
from a read-write one only. The whole path through a runner process and the gateway is
``tests/e2e/test_escalation_stack.py``."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ec2_runner.agent_settings import AgentSettings
from ec2_runner.agents import make_agent
from ec2_runner.escalation import NOT_ASKING, Escalation, Question
from ec2_runner.kiro import KiroAgent
from ec2_runner.terminal import QUESTION_READ_ONLY
from shared import frames as fr
from shared.models import ErrorKind
from tests import agent_clis
from tests.fixtures import FAKE_AGENT_COMMAND
from tests.integration.refine_support import session_manager
from tests.model_server import ModelServer

pytestmark = pytest.mark.integration

ASKING = "[fake:checkpoint=0.1] [fake:approval tool=fs_write]"  # work first, then the question


def escalating(**overrides: Any) -> KiroAgent:
    values: dict[str, Any] = {
        "command": FAKE_AGENT_COMMAND,
        "timeout": 30,
        "kill_grace": 0.3,
        "approval": "escalate",
        "approval_timeout": 30,
    }
    values.update(overrides)
    return KiroAgent(AgentSettings(**values))


class Person:
    """Someone at the task's terminal: answers each question with ``answer`` as soon as it is out
    (from another thread, as the relay's loop does), after trying ``first`` when given."""

    def __init__(self, answer: str | None, first: str | None = None) -> None:
        self.asked: list[Question] = []
        self.settled: list[str | None] = []
        self.refusals: list[str | None] = []
        self.answer = answer
        self.first = first
        self.escalation = Escalation(self._on_ask, lambda q, a: self.settled.append(a))

    def _on_ask(self, question: Question, give: Any) -> None:
        self.asked.append(question)

        def reply() -> None:
            if self.first is not None:
                self.refusals.append(give(self.first))
            if self.answer is not None:
                self.refusals.append(give(self.answer))

        threading.Thread(target=reply).start()


def test_an_escalated_question_answered_yes_lets_the_run_finish_its_work(tmp_path: Path) -> None:
    """The run stops at Kiro's question; a person's ``y`` is typed into its pty and it goes on to
    write the file and finish, ok; the question asked is Kiro's own words, naming the tool."""
    person = Person("y")

    result = escalating().run(f"Task {ASKING}", tmp_path, asker=person.escalation)

    assert result.ok, result.error
    assert (tmp_path / "fake_agent_output.txt").exists() and (tmp_path / "checkpoint.txt").exists()
    [question] = person.asked
    assert "Using tool: fs_write" in question.text and question.text.endswith("[y/n/t]:")
    assert question.choices == ("y", "n", "t")
    assert person.settled == ["y"] and person.refusals == [None]
    assert "[runner] a person answered 'y'" in result.output


def test_an_answer_that_is_not_one_of_the_choices_is_refused_with_a_sentence(tmp_path: Path) -> None:
    """``maybe`` is no answer: it is refused with a sentence naming the choices, the question stays
    open, and the valid answer after it is taken."""
    person = Person("Y", first="maybe")

    result = escalating().run(f"Task {ASKING}", tmp_path, asker=person.escalation)

    assert result.ok, result.error
    refused, taken = person.refusals
    assert refused == "answer with one of y, n, t and Enter, not 'maybe'"
    assert taken is None and person.settled == ["y"]
    assert person.escalation.give("y") == NOT_ASKING  # over: nothing more is taken


def test_a_person_answering_no_fails_the_run_approval_required_naming_the_tool(tmp_path: Path) -> None:
    """A person's ``n``: Kiro skips the tool and ends exit 0; the adapter does not call that a
    success: it fails approval_required, saying a person refused the tool."""
    person = Person("n")

    result = escalating().run(f"Task {ASKING}", tmp_path, asker=person.escalation)

    assert (result.ok, result.kind) == (False, ErrorKind.APPROVAL_REQUIRED)
    assert result.error == "a person refused the agent the tool 'fs_write'"
    assert not (tmp_path / "fake_agent_output.txt").exists()
    assert result.keep_work  # the work before the question goes to the WIP ref


def test_an_unanswered_question_fails_approval_required_at_its_timeout_keeping_the_work(
    tmp_path: Path,
) -> None:
    """Nobody answers within APPROVAL_TIMEOUT: the run is stopped and fails approval_required, its
    work marked to be kept (the pipeline puts it on the WIP ref); the question is settled unanswered."""
    person = Person(None)

    result = escalating(approval_timeout=1.0).run(f"Task {ASKING}", tmp_path, asker=person.escalation)

    assert (result.ok, result.kind, result.keep_work) == (False, ErrorKind.APPROVAL_REQUIRED, True)
    assert result.error == (
        "agent asked for approval to use tool 'fs_write' and nobody answered within 1 s (APPROVAL_TIMEOUT)"
    )
    assert person.settled == [None]
    assert (tmp_path / "checkpoint.txt").exists()


def test_the_wait_for_a_person_does_not_count_against_the_agent_timeout(tmp_path: Path) -> None:
    """AGENT_TIMEOUT is the agent's time: a question held longer than it, then answered, still lets
    the run finish."""

    class Slow(Person):
        def _on_ask(self, question: Question, give: Any) -> None:
            self.asked.append(question)
            threading.Timer(3.5, give, args=("y",)).start()  # longer than the agent's 3 s

    person = Slow(None)

    result = escalating(timeout=3.0).run(f"Task {ASKING}", tmp_path, asker=person.escalation)

    assert result.ok, result.error
    assert person.settled == ["y"]


def test_without_an_asker_an_escalating_adapter_refuses_the_question_as_by_default(tmp_path: Path) -> None:
    """Nobody to ask (a caller that gives no asker): the question is answered no and the run fails
    approval_required at once, as with the default ``APPROVAL=deny``."""
    result = escalating().run(f"Task {ASKING}", tmp_path)

    assert (result.ok, result.kind) == (False, ErrorKind.APPROVAL_REQUIRED)
    assert "tool 'fs_write'" in (result.error or "")


def test_approval_setting_refuses_a_mode_it_does_not_know_with_a_sentence() -> None:
    with pytest.raises(ValueError, match="'deny' or 'escalate'"):
        AgentSettings(approval="ask-someone")


# -- the session manager: watchers see the question, a writer answers it -------------------------


def drain(manager: Any) -> list[Any]:
    frames = []
    while not manager.outbox.empty():
        frames.append(manager.outbox.get_nowait())
    return frames


async def settle(manager: Any) -> list[Any]:
    await asyncio.sleep(0.05)  # the coalescing timer and the open's task
    return drain(manager)


def test_watchers_see_the_question_only_a_writer_answers_it_and_all_hear_it_is_over(tmp_path: Path) -> None:
    async def scenario() -> None:
        manager = session_manager(tmp_path)
        sid = fr.session_id_for(task_id="T-9")
        given: list[str] = []

        def give(text: str) -> str | None:
            if text.strip() not in ("y", "n", "t"):
                return f"answer with one of y, n, t and Enter, not {text!r}"
            given.append(text)
            return None

        manager.start_run("T-9", "feature/nine")
        await manager.handle(fr.OpenFrame(task_id="T-9", session_id=sid, connection_id="ro", read_only=True))
        await settle(manager)
        # when: the run asks a person
        manager.run_output("T-9", "Allow this action? ... [y/n/t]:\n")
        manager.ask_run("T-9", "Allow this action? ... [y/n/t]:", ("y", "n", "t"), 30.0, give)
        output, asked = await settle(manager)
        # then: the watcher gets the output that shows it, then the question
        assert isinstance(output, fr.OutputFrame) and "[y/n/t]" in output.data
        assert isinstance(asked, fr.QuestionFrame) and asked.pending and asked.to == ["ro"]
        assert (asked.question, asked.choices, asked.timeout_seconds) == (
            "Allow this action? ... [y/n/t]:",
            ["y", "n", "t"],
            30.0,
        )
        # and one who opens later with write access gets the question after the replay
        await manager.handle(fr.OpenFrame(task_id="T-9", session_id=sid, connection_id="rw"))
        opened, _replay, late = await settle(manager)
        assert opened.headless is True and isinstance(late, fr.QuestionFrame) and late.to == ["rw"]
        # when: the read-only watcher answers (as if the relay had let it through)
        await manager.handle(fr.InputFrame(session_id=sid, data="y\r", connection_id="ro", read_only=True))
        [refused] = await settle(manager)
        assert (refused.code, refused.message, refused.to) == ("read_only", QUESTION_READ_ONLY, ["ro"])
        # and a connection that attached read-only claims write access on a frame of its own
        await manager.handle(fr.InputFrame(session_id=sid, data="y\r", connection_id="ro"))
        [refused] = await settle(manager)
        assert refused.code == "read_only" and given == []
        # when: the writer types something that is no answer, then y and Enter, key by key
        await manager.handle(fr.InputFrame(session_id=sid, data="maybe\r", connection_id="rw", seq=1))
        [bad] = await settle(manager)
        assert bad.code == "bad_answer" and "not 'maybe'" in bad.message and bad.to == ["rw"]
        await manager.handle(fr.InputFrame(session_id=sid, data="y", connection_id="rw", seq=2))
        await manager.handle(fr.InputFrame(session_id=sid, data="\r", connection_id="rw", seq=3))
        assert await settle(manager) == [] and given == ["y"]
        # when: the question is over: every watcher hears how it ended
        manager.settle_run("T-9", "y")
        over = await settle(manager)
        assert [(f.pending, f.answer) for f in over] == [(False, "y")]
        assert over[0].to == ["ro", "rw"]
        # and typing into the run is refused again, as into any headless run
        await manager.handle(fr.InputFrame(session_id=sid, data="y\r", connection_id="rw", seq=4))
        [refused] = await settle(manager)
        assert refused.code == "read_only" and "running headless" in refused.message

    asyncio.run(scenario())


def test_question_frames_encode_in_camel_case_and_only_a_runner_may_send_one() -> None:
    frame = fr.QuestionFrame(
        session_id="s-1",
        task_id="T-1",
        pending=True,
        question="Allow?",
        choices=["y", "n"],
        timeout_seconds=5,
    )
    text = fr.for_browser(frame)
    assert text == (
        '{"action":"question","sessionId":"s-1","taskId":"T-1","pending":true,"question":"Allow?",'
        '"choices":["y","n"],"timeoutSeconds":5.0}'
    )
    assert fr.decode(text, role="to_browser") == frame
    with pytest.raises(fr.ForbiddenActionError):  # a browser cannot put a question to others
        fr.decode(text, role="browser")


# -- the real Claude Code: its permission question, asked through its --permission-prompt-tool ----


@pytest.fixture(scope="module")
def model() -> Iterator[ModelServer]:
    sock = Path(tempfile.mkdtemp(prefix="model-")) / "model.sock"
    with ModelServer(unix_socket=sock) as server:
        yield server
    shutil.rmtree(sock.parent, ignore_errors=True)


def claude(model: ModelServer, home: Path, monkeypatch: pytest.MonkeyPatch, **extra: str) -> Any:
    assert model.unix_socket is not None
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{agent_clis.INNER_PORT}")
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(home))
    values = {
        "AGENT": "claude",
        "AGENT_COMMAND": agent_clis.offline(agent_clis.CLAUDE, model.unix_socket),
        "ANTHROPIC_API_KEY": "sk-scripted",
        "AGENT_ENV_PASSTHROUGH": "ANTHROPIC_BASE_URL,CLAUDE_CONFIG_DIR",
        "AGENT_TIMEOUT": "60",
        "AGENT_KILL_GRACE": "1",
        "APPROVAL": "escalate",
        **extra,
    }
    return make_agent(AgentSettings.model_validate(values))


@pytest.mark.skipif(agent_clis.missing() is not None, reason=agent_clis.missing() or "")
@pytest.mark.parametrize("answer", ["y", "n", None])
def test_claude_code_asks_a_person_through_its_permission_prompt_tool(
    answer: str | None, model: ModelServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``claude -p`` with APPROVAL=escalate: the web fetch its permission mode would deny is asked
    about on the run's pty (the runner's MCP approval tool); ``y`` lets it run and the run succeeds,
    ``n`` fails it approval_required as a person's refusal, no answer within APPROVAL_TIMEOUT fails
    it approval_required with the work kept."""
    repo = tmp_path / "wt"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    person = Person(answer)
    agent = claude(model, tmp_path / "home", monkeypatch, APPROVAL_TIMEOUT="3")

    result = agent.run(f"fetch it ({answer}) [script:needs_approval]", repo, asker=person.escalation)

    [question] = person.asked
    assert question.text == "Using tool: WebFetch (http://127.0.0.1:9/approve-me)\nAllow this action? [y/n]:"
    assert question.choices == ("y", "n") and person.settled == [answer]
    assert (repo / "hello.txt").exists()  # the model's write, before the question
    if answer == "y":
        assert result.ok, result.error
        return
    assert (result.ok, result.kind) == (False, ErrorKind.APPROVAL_REQUIRED)
    if answer == "n":
        assert (
            result.error
            == "a person refused the agent 1 tool call(s): WebFetch (http://127.0.0.1:9/approve-me)"
        )
        assert result.keep_work
    else:
        assert result.keep_work and "nobody answered within 3 s" in (result.error or "")
