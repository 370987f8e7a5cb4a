"""Plain text from a terminal's output: escape sequences stripped, secrets redacted, a line at a time."""

from __future__ import annotations

import re

REDACTED = "[REDACTED]"

_ANSI = re.compile(
    r"""
    \x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?     # OSC: titles, hyperlinks (ended by BEL or ST)
  | \x1b[PX^_][^\x1b]*(?:\x1b\\)?         # DCS, SOS, PM, APC strings
  | (?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]      # CSI: colours, cursor moves, erases
  | \x1b[ -/]+[0-~]                       # nF: character set selection
  | \x1b[0-~]                             # Fp, Fe, Fs: save cursor, keypad modes, reset
    """,
    re.VERBOSE,
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CR_LF = re.compile(r"\r+\n")


def strip_ansi(text: str) -> str:
    """Plain text as a terminal would show it: escape sequences and control characters removed,
    line ends as ``\\n``, and a carriage return overwriting its line (spinners keep their last frame)."""
    text = _CR_LF.sub("\n", _ANSI.sub("", text))
    if "\r" in text:
        lines = []
        for line in text.split("\n"):
            if "\r" in line:
                frames = [f for f in line.split("\r") if f]
                line = frames[-1] if frames else ""
            lines.append(line)
        text = "\n".join(lines)
    return _CONTROL.sub("", text)


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
