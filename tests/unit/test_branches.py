"""Branch-name safety: git's own rules plus the project's protected branches."""

from __future__ import annotations

import subprocess

import pytest

from shared.branches import DEFAULT_PROTECTED, UnsafeBranchError, check_branch

pytestmark = pytest.mark.unit

UNSAFE = {
    "main": "protected",
    "master": "protected",
    "develop": "protected",
    "release/1.2": "protected",
    "-x": "start with '-'",
    "--upload-pack=touch /tmp/pwned": "start with '-'",
    "a..b": "'..'",
    "feature/../../x": "'..'",
    "": "empty",
    "f" * 300: "longer than",
    "has space": "forbidden character",
    "tab\there": "forbidden character",
    "bell\x07": "forbidden character",
    "nul\x00": "forbidden character",
    "ends.lock": ".lock",
    "feature/.hidden": "starts with '.'",
    "feature//x": "empty path component",
    "/abs": "empty path component",
    "trailing/": "empty path component",
    "dot.": "ends with '.'",
    "at@{1}": "'@{'",
    "@": "'@{' or is '@'",
    "HEAD": "'HEAD'",
    "kiro-wip/task-1": "reserved",
    "colon:x": "forbidden character",
    "tilde~1": "forbidden character",
    "caret^": "forbidden character",
    "glob*": "forbidden character",
    "question?": "forbidden character",
    "bracket[": "forbidden character",
    "back\\slash": "forbidden character",
    # a full ref name would create refs/heads/refs/heads/main on the remote
    "refs/heads/main": "full ref name",
    "refs/heads/feature/x": "full ref name",
    "refs/tags/v1": "full ref name",
    # a remote-tracking branch's name makes a local branch that shadows it
    "origin/main": "remote-tracking branch",
    "origin/feature/x": "remote-tracking branch",
    "remotes/origin/main": "remote-tracking branch",
    # the runner's own ref namespace: kiro-wip itself would block every kiro-wip/<id>
    "kiro-wip": "reserved",
    "KIRO-WIP/x": "reserved",
    # look-alikes of protected branches (compared after NFKC normalisation and case folding)
    "Main": "protected",
    "MAIN": "protected",
    "\uff4d\uff41\uff49\uff4e": "protected",  # full-width ｍａｉｎ
    "Release/1.0": "protected",
    "DEVELOP": "protected",
    # invisible and direction-changing characters
    "m\u0430in": "mixes scripts",  # Cyrillic а
    "main\u200b": "invisible",  # zero-width space
    "fe\u200dature": "invisible",  # zero-width joiner
    "feature/\u202egnp.exe": "bidirectional",  # right-to-left override
    "feature/\u2066x": "bidirectional",  # isolate
    "c1\u0085control": "control character",
    "soft\u00adhyphen": "invisible",
}

SAFE = [
    "feature/add-login-validation",
    "fix/issue-42",
    "kiro/task_1.2",
    "user/name/deep/branch",
    "a",
    "ü-unicode",
]


@pytest.mark.parametrize(("branch", "rule"), list(UNSAFE.items()), ids=[repr(b)[:40] for b in UNSAFE])
def test_unsafe_branch_is_refused_naming_the_rule(branch: str, rule: str) -> None:
    with pytest.raises(UnsafeBranchError) as err:
        check_branch(branch)
    assert rule in str(err.value)


@pytest.mark.parametrize("branch", SAFE)
def test_ordinary_feature_branches_pass(branch: str) -> None:
    assert check_branch(branch) == branch


def test_non_string_branch_is_refused() -> None:
    with pytest.raises(UnsafeBranchError, match="must be a string"):
        check_branch(42)


def test_protected_patterns_are_configurable() -> None:
    assert check_branch("main", protected=()) == "main"
    with pytest.raises(UnsafeBranchError, match="protected"):
        check_branch("prod/eu", protected=["prod/*"])


@pytest.mark.parametrize("branch", [b for b in list(UNSAFE) + SAFE if "\x00" not in b])
def test_everything_git_refuses_we_refuse(branch: str) -> None:
    """Our pure-Python rules are at least as strict as ``git check-ref-format --branch``."""
    git_ok = (
        subprocess.run(["git", "check-ref-format", "--branch", branch], capture_output=True).returncode == 0
    )
    try:
        check_branch(branch, protected=DEFAULT_PROTECTED)
        ours_ok = True
    except UnsafeBranchError:
        ours_ok = False
    if not git_ok:
        assert not ours_ok
