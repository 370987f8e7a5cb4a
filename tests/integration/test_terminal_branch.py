"""A Refine session's worktree is on its branch (real git, a bare remote), not detached."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ec2_runner.terminal_worktrees import GitCallables, SessionWorktrees
from tests.integration.refine_support import workspace


def git(path: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=path, check=True, capture_output=True, text=True).stdout.strip()


def test_a_session_opens_on_its_branch_and_a_second_one_of_that_branch_says_why_it_is_detached(
    tmp_path: Path,
) -> None:
    """The first read-write session of a branch holds the branch (``On branch ...``, no red "Not
    currently on any branch."); git lets one worktree hold a branch, so a second session of the same
    branch (a task's and a branch grant's) works detached and its banner says why; both push to the
    branch, and a commit pushed from the first lands on the remote branch."""
    ws = workspace(tmp_path)
    trees = SessionWorktrees(GitCallables.from_workspace(ws))
    # when
    first, _ = trees.open("s-branch", "feature/on-branch", None)
    second, _ = trees.open("s-task", "feature/on-branch", "T-9")
    # then
    assert git(first, "symbolic-ref", "--short", "HEAD") == "feature/on-branch"
    banner = trees.summary(first, "feature/on-branch")
    assert "On branch feature/on-branch" in banner and "Not currently on any branch" not in banner
    assert subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=second).returncode != 0
    assert "open in another session" in trees.summary(second, "feature/on-branch")
    (first / "note.txt").write_text("from the session\n")
    sha = trees.commit_and_push(first, "feature/on-branch", "Refine with Kiro")
    remote = tmp_path / "remote.git"
    assert sha and git(remote, "rev-parse", "refs/heads/feature/on-branch") == sha
    # a session that ends clean lets the branch go: the next one of the branch holds it
    assert trees.close("s-branch", "feature/on-branch", first) is False
    third, _ = trees.open("s-branch", "feature/on-branch", None)
    assert git(third, "symbolic-ref", "--short", "HEAD") == "feature/on-branch"
    assert git(third, "rev-parse", "HEAD") == sha
