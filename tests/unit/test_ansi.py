"""strip_ansi: the agent's terminal output as the plain text that is stored and logged."""

from __future__ import annotations

import pytest

from ec2_runner.ansi import OutputCleaner, Redactor, strip_ansi

pytestmark = pytest.mark.unit


def test_plain_text_is_unchanged() -> None:
    """Text without escapes passes through, unicode included."""
    text = (
        "Done: wrote a.txt \u2713\n\u25b8 Credits: 0.04 \u2022 Time: 1s\n\U0001f6e0\ufe0f  Using tool\n\ttab"
    )
    assert strip_ansi(text) == text


def test_kiro_prompt_and_colours_are_removed() -> None:
    """The real CLI's 256-colour prompt and SGR styles leave only their text."""
    assert strip_ansi("\x1b[38;5;141m> \x1b[0mHello \x1b[1;31mworld\x1b[m") == "> Hello world"


@pytest.mark.parametrize(
    ("raw", "plain"),
    [
        ("\x1b[2K\x1b[1Gline", "line"),  # erase line, cursor to column 1
        ("a\x1b[10;20Hb", "ab"),  # cursor position
        ("\x1b[?25lhidden cursor\x1b[?25h", "hidden cursor"),  # private modes
        ("\x1b]0;window title\x07text", "text"),  # OSC title ended by BEL
        ("\x1b]8;;https://example.com\x1b\\link\x1b]8;;\x1b\\", "link"),  # OSC 8 hyperlink ended by ST
        ("\x1b(Bascii", "ascii"),  # character set selection
        ("\x1b7saved\x1b8", "saved"),  # save / restore cursor
        ("\x9b31mC1 CSI\x9b0m", "C1 CSI"),  # 8-bit CSI
        ("\x1bP1$r0m\x1b\\after", "after"),  # DCS string
    ],
)
def test_escape_sequences_are_removed(raw: str, plain: str) -> None:
    """Cursor moves, modes, titles, links and charset switches are not text."""
    assert strip_ansi(raw) == plain


def test_pty_line_endings_become_newlines() -> None:
    """A pty turns \\n into \\r\\n (and a program's own \\r\\n into \\r\\r\\n)."""
    assert strip_ansi("one\r\ntwo\r\r\nthree\n") == "one\ntwo\nthree\n"


def test_carriage_return_overwrites_the_line_like_a_terminal() -> None:
    """A spinner redrawn with \\r keeps only its last frame."""
    assert strip_ansi("\u280b Thinking\r\u2819 Thinking\r\x1b[2KDone\nnext") == "Done\nnext"
    assert strip_ansi("progress 100%\r") == "progress 100%"


def test_other_control_characters_are_dropped() -> None:
    """Bells, backspaces and stray escapes never reach the stored text."""
    assert strip_ansi("a\x07b\x08c\x00d\x1b") == "abcd"


def test_cleaner_joins_an_escape_split_across_reads() -> None:
    """Output arrives in arbitrary pieces; a sequence cut in two is still removed."""
    cleaner = OutputCleaner(Redactor([]))
    pieces = ["\x1b[38;5;1", "41m> \x1b[", "0mhello\r", "\nwor", "ld"]
    text = "".join(cleaner.feed(p) for p in pieces) + cleaner.flush()
    assert text == "> hello\nworld"


def test_cleaner_redacts_a_secret_split_across_reads() -> None:
    """A secret cut across two reads is still redacted."""
    cleaner = OutputCleaner(Redactor(["s3cr3t-value"]))
    text = cleaner.feed("key=s3cr") + cleaner.feed("3t-value\n") + cleaner.flush()
    assert "s3cr3t" not in text
    assert text == "key=[REDACTED]\n"


def test_cleaner_bounds_a_line_without_newline() -> None:
    """A huge line with no newline is released in pieces, not held whole."""
    cleaner = OutputCleaner(Redactor([]))
    out = cleaner.feed("x" * 50_000)
    assert len(out) > 40_000
    assert len(cleaner.pending) < 10_000
