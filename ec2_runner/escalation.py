"""A blocked run handed to a person (``APPROVAL=escalate``): one attempt's question and its answer.

When the agent stops at a question its adapter hands to a person (Kiro's ``Allow this action?
... [y/n/t]:``), the pty driver holds the run and asks an :class:`Escalation`: it tells the pipeline
(which says on the row what the run waits for, ``waitingFor``, and shows the question to the task's
watchers), takes the first valid answer a read-write watcher gives (:meth:`Escalation.give`, from the
terminal relay's thread), and says when the question is over. Thread-safe; it never blocks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

NOT_ASKING = "the run is not waiting for an answer"
ANSWERED = "the question has been answered already"


@dataclass(frozen=True)
class Question:
    """What the agent asks: ``text`` (plain, as it printed it), answered by one of ``choices``
    within ``timeout`` seconds."""

    text: str
    choices: tuple[str, ...]
    timeout: float

    def waiting_for(self) -> str:
        """The row's ``waitingFor`` while the question is open."""
        return (
            f"a person's answer ({'/'.join(self.choices)}, in the task's terminal within "
            f"{self.timeout:g} s) to: {self.text}"
        )


class Escalation:
    """One attempt's questions for a person: an :class:`~ec2_runner.ptydriver.Asker`.

    ``on_ask(question, give)`` is told when a question is out (``give`` is :meth:`give`, for whoever
    may answer); ``on_settled(question, answer)`` when it is over (``answer`` None: unanswered).
    Their failures are logged, never raised: the question stands whatever the row or the watchers do.
    """

    def __init__(
        self,
        on_ask: Callable[[Question, Callable[[str], str | None]], None],
        on_settled: Callable[[Question, str | None], None],
    ) -> None:
        self._on_ask = on_ask
        self._on_settled = on_settled
        self._lock = threading.Lock()
        self._question: Question | None = None
        self._answer: str | None = None

    @property
    def question(self) -> Question | None:
        with self._lock:
            return self._question

    def ask(self, question: str, choices: tuple[str, ...], timeout: float) -> None:
        asked = Question(question, choices, timeout)
        with self._lock:
            self._question, self._answer = asked, None
        self._quietly(self._on_ask, asked, self.give)

    def answer(self) -> str | None:
        with self._lock:
            return self._answer

    def give(self, text: str) -> str | None:
        """A person's answer: None when it is taken, else why not (a sentence for that person)."""
        word = text.strip().lower()
        with self._lock:
            question = self._question
            if question is None:
                return NOT_ASKING
            if self._answer is not None:
                return ANSWERED
            if word not in question.choices:
                shown = repr(text.strip()[:16])
                return f"answer with one of {', '.join(question.choices)} and Enter, not {shown}"
            self._answer = word
        logger.info("a person answered the agent's question: %r", word)
        return None

    def settled(self, answer: str | None) -> None:
        with self._lock:
            question, self._question, self._answer = self._question, None, None
        if question is not None:
            self._quietly(self._on_settled, question, answer)

    @staticmethod
    def _quietly(fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:  # the row and the watchers are views of the question, not the question
            logger.exception("telling about the agent's question failed")
