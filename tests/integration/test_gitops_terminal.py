"""What a terminal session asks of the git workspace: is a worktree dirty, and its status to show."""

from __future__ import annotations

from pathlib import Path

import pytest

from ec2_runner.gitops import GitOpError, GitWorkspace
from local.gitremote import ensure_bare_remote

pytestmark = pytest.mark.integration


@pytest.fixture
def ws(tmp_path: Path) -> GitWorkspace:
    remote = ensure_bare_remote(tmp_path / "remote.git")
    return GitWorkspace(tmp_path / "runner" / "repo", str(remote), tmp_path / "runner" / "wt")


def test_uncommitted_lists_changed_and_untracked_files(ws: GitWorkspace) -> None:
    """A fresh worktree has nothing uncommitted; a new file shows up, as ``git status --porcelain`` says."""
    co = ws.checkout("feature/term", "term-1")
    assert ws.uncommitted(co.path) == ""

    (co.path / "draft.txt").write_text("typed\n")

    assert ws.uncommitted(co.path) == "?? draft.txt"


def test_uncommitted_is_an_error_when_git_cannot_tell(ws: GitWorkspace, tmp_path: Path) -> None:
    """A folder git cannot read is no proof of a clean one: the caller hears it as a GitOpError."""
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    (outside / ".git").write_text("gitdir: /nonexistent\n")

    with pytest.raises(GitOpError):
        ws.uncommitted(outside)


def test_status_report_shows_status_and_diff_stat(ws: GitWorkspace) -> None:
    """What a terminal prints when it opens: git status, then the diff stat of tracked changes."""
    co = ws.checkout("feature/term", "term-3")
    tracked = next(p for p in co.path.iterdir() if p.is_file())
    tracked.write_text(tracked.read_text() + "one more line\n")
    (co.path / "new.txt").write_text("x\n")

    report = ws.status_report(co.path)

    assert "Changes not staged for commit" in report
    assert "new.txt" in report and tracked.name in report
    assert "1 file changed" in report
    assert "\x1b[" in report  # in colour, as a terminal shows it


def test_status_report_says_when_git_failed(ws: GitWorkspace, tmp_path: Path) -> None:
    """A folder that is no worktree gets git's own complaint in the report, not an exception."""
    outside = tmp_path / "plain"
    outside.mkdir()
    (outside / ".git").write_text("gitdir: /nonexistent\n")

    report = ws.status_report(outside)

    assert "not a git repository" in report
