"""What ``aipm`` itself says: its version and its help, read as a person reads them."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from ec2_runner.cli import main

pytestmark = pytest.mark.unit


def test_version_prints_the_installed_distributions_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"aipm {version('aipm-kiro-runner')}\n"


def test_help_reads_as_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    """No reStructuredText markup (``aipm``) from the module's docstring in what a person reads."""
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: aipm ")
    assert "``" not in text
    assert "aipm: the runner, the local stack, and operator commands" in text
    assert "--version" in text
