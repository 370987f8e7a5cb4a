"""Plain text from a terminal's output: escape sequences stripped (``shared.text``), secrets redacted,
a line at a time."""

from __future__ import annotations

from shared.text import strip_ansi

REDACTED = "[REDACTED]"


class Redactor:
    """Replaces secret values in text."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self.longest = max((len(s) for s in self.secrets), default=0)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, REDACTED)
        return text


class OutputCleaner:
    """Turns raw pty output into plain, redacted text a line at a time.

    Whole lines only, so an escape sequence or a secret split across two reads is still caught;
    a very long line without a newline is released in pieces so memory stays bounded.
    """

    MAX_PENDING = 8192

    def __init__(self, redact: Redactor) -> None:
        self.redact = redact
        self.pending = ""

    def feed(self, raw: str) -> str:
        self.pending += raw
        cut = self.pending.rfind("\n") + 1
        if not cut and len(self.pending) > self.MAX_PENDING:
            # keep enough behind that a secret or an escape sequence on the boundary is not split
            cut = len(self.pending) - max(self.redact.longest, 64)
        if not cut:
            return ""
        ready, self.pending = self.pending[:cut], self.pending[cut:]
        return self.redact(strip_ansi(ready))

    def peek(self) -> str:
        """The unfinished line, cleaned (a question waiting for an answer has no newline yet)."""
        return self.redact(strip_ansi(self.pending))

    def flush(self) -> str:
        rest, self.pending = self.pending, ""
        return self.redact(strip_ansi(rest))
