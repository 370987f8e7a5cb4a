"""The Kiro CLI adapter and Kiro's failure rules, applied by this adapter only.

Run headless, Kiro has ways of going wrong that its exit code does not show: with no credential it
starts a device login and waits for a person; an invalid credential prints ``Authentication failed.``
and still exits 0; without ``--trust-all-tools`` it asks ``Allow this action? ... [y/n/t]:``; it may
say it "is having trouble responding" (worth one retry). Its exit codes 3 and 4 have meanings of
their own. :class:`KiroRules` watches one run's output for all of these and judges the run, so each
ends as a failed result with a readable error, never as a hang and never as a false success.
Another CLI (``AGENT=command``) printing the same words is judged by its exit code alone.

The approval question is answered ``n`` and fails the run ``approval_required`` by default; with
``APPROVAL=escalate`` it is handed to a person instead (:class:`~ec2_runner.ptydriver.Ask`): the run
is held until someone with write access to the task answers ``y``, ``n`` or ``t`` in its terminal,
or ``APPROVAL_TIMEOUT`` passes (then it fails ``approval_required``, its work kept).
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Callable

from ec2_runner.agent_settings import AgentSettings
from ec2_runner.headless import DriveOnce, PtyAgent, Verdict, exit_kind, judge_exit
from ec2_runner.ptydriver import Ask, PtyRun, Stop
from ec2_runner.sandbox import Sandbox
from shared.models import ErrorKind

logger = logging.getLogger(__name__)

KIRO_COMMAND = "kiro-cli chat --no-interactive --trust-all-tools --wrap never"
KIRO_INTERACTIVE_COMMAND = "kiro-cli chat --wrap never"
RETRY_NOTE = "\n[runner] the agent was having trouble responding; running it once more\n"
EXIT_MESSAGES = {
    3: "a required MCP server failed to start (exit 3)",
    4: "agent not found (exit 4): check --agent / .kiro/agents",
}

LOGIN = re.compile(
    r"Open this URL:?\s*https?://\S*(?:device|user_code|awsapps\.com|signin|login|oauth|authorize)"
    r"|Confirm the following code in the browser"
    r"|^\s*Code:\s*[A-Z0-9]{4}-[A-Z0-9]{4}\b",
    re.MULTILINE | re.IGNORECASE,
)
LOGGED_IN = re.compile(
    r"(?i)\b(?:logged in successfully|login (?:succeeded|successful)|successfully logged in)\b"
)
AUTH_FAILED = re.compile(r"^\s*(?:error:\s*)?Authentication failed\.?\s*$", re.MULTILINE | re.IGNORECASE)
APPROVAL = re.compile(r"Allow this action\?.*?\[y/n/t\]:", re.DOTALL)
TOOL_NAME = re.compile(r"Using tool:\s*([A-Za-z0-9_.:@/-]+)")
TROUBLE = re.compile(r"(?i)is having trouble responding")
CREDITS = re.compile(r"\u25b8\s*Credits:")  # the line that ends a finished turn
APPROVAL_CHOICES = ("y", "n", "t")
QUESTION_CHARS = 600  # what of the tool's description and the question the row and watchers get
DENIED = re.compile(r"Tool use denied")


class KiroRules:
    """What one Kiro run showed, watched as its output streams (pass it as the driver's ``watch``),
    and the verdict on the run once it ended."""

    def __init__(
        self,
        login_timeout: float = 0.0,
        name: str = "kiro",
        *,
        escalate: bool = False,
        approval_timeout: float = 900.0,
    ) -> None:
        self.login_timeout = login_timeout
        self.name = name
        self.escalate = escalate
        self.approval_timeout = approval_timeout
        self.asked = 0  # questions handed to a person
        self.refused_tool: str | None = None  # a tool a person answered no to
        self._last_tool: str | None = None
        self.login_seen: float | None = None
        self.logged_in = False
        self.auth_failed = False
        self.credits = False
        self.trouble = False

    @property
    def stalled(self) -> bool:
        """It said it had trouble responding and never finished a turn."""
        return self.trouble and not self.credits

    def __call__(self, text: str, now: float) -> Stop | Ask | None:
        """Look at the recent output; a Stop when the run must end now."""
        if self.login_seen is not None and now - self.login_seen >= self.login_timeout:
            return Stop("agent is not logged in", kind=ErrorKind.AGENT_NOT_LOGGED_IN)
        if CREDITS.search(text):
            self.credits = True
        if TROUBLE.search(text):
            self.trouble = True
        if AUTH_FAILED.search(text):
            self.auth_failed = True
        if self.login_seen is None and not self.logged_in and LOGIN.search(text):
            self.login_seen = now
            logger.warning("%s is asking for a device login", self.name)
            if self.login_timeout <= 0:
                return Stop("agent is not logged in", kind=ErrorKind.AGENT_NOT_LOGGED_IN)
        elif self.login_seen is not None and LOGGED_IN.search(text):
            self.login_seen = None
            self.logged_in = True
        if self.asked and DENIED.search(text) and self.refused_tool is None:
            self.refused_tool = self._last_tool or "?"
        question = APPROVAL.search(text)
        if question:
            tools = TOOL_NAME.findall(text[: question.start()])
            self._last_tool = tools[-1] if tools else None
            tool = f" '{tools[-1]}'" if tools else ""
            refuse = Stop(
                f"agent asked for approval to use tool{tool}; run with --trust-all-tools or trust the tool",
                answer="n",
                kind=ErrorKind.APPROVAL_REQUIRED,
            )
            if not self.escalate:
                logger.warning("%s asked for approval to use a tool%s; answered no", self.name, tool)
                return refuse
            self.asked += 1
            since = text.rfind("Using tool:", 0, question.start())
            asked = text[since if since >= 0 else question.start() : question.end()].strip()
            return Ask(
                question=asked[-QUESTION_CHARS:],
                choices=APPROVAL_CHOICES,
                refuse=refuse,
                unanswered=f"agent asked for approval to use tool{tool} and nobody answered within "
                f"{self.approval_timeout:g} s (APPROVAL_TIMEOUT)",
                timeout=self.approval_timeout,
            )
        return None

    def judge(self, run: PtyRun) -> tuple[bool, str | None]:
        """The run's verdict: Kiro's own failures first, then the exit as any command's."""
        if run.error is None:
            if self.auth_failed and not self.credits:
                return False, "agent authentication failed (check KIRO_API_KEY)"
            if self.refused_tool is not None:
                return False, f"a person refused the agent the tool '{self.refused_tool}'"
            code = run.exit_code
            if code in EXIT_MESSAGES:
                return False, EXIT_MESSAGES[code]
            if code is not None and self.stalled:
                return False, f"agent failed (exit {code}): agent is having trouble responding"
        return judge_exit(run, noise=CREDITS)

    def kind(self, run: PtyRun) -> ErrorKind | None:
        """The ``errorKind`` of the verdict :meth:`judge` gives (None: the run succeeded)."""
        if self.judge(run)[0]:
            return None
        if run.error is None and self.auth_failed and not self.credits:
            return ErrorKind.AGENT_AUTH_FAILED
        if run.error is None and self.refused_tool is not None:
            return ErrorKind.APPROVAL_REQUIRED
        return exit_kind(run) or ErrorKind.AGENT_EXIT  # Kiro's exit codes 3 and 4, a stall


class KiroAgent(PtyAgent):
    """The Kiro CLI, headless: ``kiro-cli chat --no-interactive --trust-all-tools --wrap never <prompt>``."""

    name = "kiro"

    def __init__(self, settings: AgentSettings, sandbox: Sandbox | None = None) -> None:
        argv = shlex.split(settings.command or KIRO_COMMAND)
        if settings.interactive_command:
            interactive = shlex.split(settings.interactive_command)
        elif settings.command:
            # the same binary, minus what makes it headless and unattended
            interactive = [a for a in argv if a not in ("--no-interactive", "--trust-all-tools")]
        else:
            interactive = shlex.split(KIRO_INTERACTIVE_COMMAND)
        super().__init__(settings, argv, interactive, sandbox)

    def login_check_argv(self) -> list[str] | None:
        """``kiro-cli whoami`` (Kiro's CLI reference: the signed-in user; non-zero when signed out),
        with the same binary the tasks run, unless ``AGENT_LOGIN_CHECK`` names another check."""
        return super().login_check_argv() or [self.argv[0], "whoami"]

    def login_hint(self) -> str:
        return (
            "put KIRO_API_KEY in /etc/aipm/agent.env (AgentCredentialSecretArn), "
            "or run `kiro-cli login` as the runner's user"
        )

    def _attempts(self, once: DriveOnce, on_output: Callable[[str], None] | None) -> Verdict:
        """Run under Kiro's rules; once more when it was having trouble responding."""
        attempts = 0
        earlier = ""
        while True:
            attempts += 1
            rules = KiroRules(
                self.settings.login_timeout,
                self.name,
                escalate=self.settings.approval == "escalate",
                approval_timeout=self.settings.approval_timeout,
            )
            run = once(rules)
            ok, error = rules.judge(run)
            kind = rules.kind(run)
            if not ok and rules.trouble and run.error is None and attempts == 1:
                logger.warning("%s is having trouble responding; retrying once", self.name)
                earlier = run.output + RETRY_NOTE
                if on_output is not None:
                    on_output(RETRY_NOTE)
                continue
            if earlier:
                run.keep_before(earlier)
                if error and rules.trouble:
                    error += " (retried once)"
            # a question nobody answered: the work so far is kept on the WIP ref
            keep = kind is ErrorKind.APPROVAL_REQUIRED and rules.asked > 0
            return Verdict(run, ok, error, kind, attempts, keep_work=keep)
