"""clean_text: what a row contributes to a commit message, a log line, a banner or a table."""

from __future__ import annotations

import pytest

from shared.text import clean_text

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("Fix \x1b]52;c;ZXZpbA==\x07login", "Fix login"),  # OSC 52: writes the reader's clipboard
        ("ask \x1b[6n position", "ask  position"),  # a cursor position report request
        ("\x1b[2Jcleared", "cleared"),  # clears the reader's screen
        ("8-bit \x9b31mCSI\x9b0m", "8-bit CSI"),
        ("C1 \x85next \x90line", "C1 next line"),
        ("bell\x07 and nul\x00", "bell and nul"),
        ("right-to-left \u202egnp.exe", "right-to-left gnp.exe"),
        ("isolate \u2066x\u2069", "isolate x"),
    ],
)
def test_escapes_controls_and_direction_overrides_are_removed(raw: str, shown: str) -> None:
    assert clean_text(raw) == shown


def test_plain_text_lines_tabs_and_unicode_stay() -> None:
    text = "Add login validation (ü, ✓)\n\n\tdetails: keep\nlines"
    assert clean_text(text) == text
