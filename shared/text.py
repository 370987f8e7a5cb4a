"""Text from outside (an agent's output, a row's title or id) made safe to show or store.

A terminal acts on escape sequences and control characters: a clipboard write (``ESC ] 52``), a
cursor report request (``ESC [ 6n``), a screen clear. Text a backend or an agent wrote must
never reach a terminal, a commit message or a table with those in it.
"""

from __future__ import annotations

import re

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


# direction overrides and isolates reorder what a reader sees (the "Trojan Source" trick)
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean_text(text: str) -> str:
    """A row's text (title, id, details) as it may appear in a commit message, a log line, a
    banner or a CLI table: escape sequences, control characters and direction overrides removed;
    newlines and tabs kept."""
    return _BIDI.sub("", strip_ansi(text))
