"""The runner's git trusts nothing in the repository: a hostile agent program
(``tests/hostile_agent/git-planter``) plants every git setting that could run a program of its own
or send a push elsewhere, and the runner's own git (commit, push, rebase, checkout, status, diff,
worktree add/remove/prune, a restart on the same clone) runs none of it. Real git, real bare
remotes, real processes; each planted program would leave a marker file with its environment."""

from __future__ import annotations

import http.server
import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import git
import pytest

from ec2_runner.gitops import GitOpError, GitWorkspace
from ec2_runner.safegit import transports
from local.gitremote import ensure_bare_remote
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

PLANTER = ROOT / "tests" / "hostile_agent" / "git-planter"
# stand-ins for the runner's secrets: none may reach anything git starts
SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "canary-aws-secret",
    "AWS_SESSION_TOKEN": "canary-aws-session",
    "RUNNER_SECRET": "canary-runner-secret",
    "TOKEN_SECRET": "canary-token-secret",
    "KIRO_API_KEY": "canary-kiro-key",
}
AUTHOR = ("aipm runner", "aipm-runner@users.noreply.local")


@pytest.fixture(autouse=True)
def runner_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner process has its secrets in its environment, as a deployed one does."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return ensure_bare_remote(tmp_path / "remote.git")


@pytest.fixture
def evil(tmp_path: Path) -> Path:
    """The attacker's repository, where the planted remote settings point."""
    return ensure_bare_remote(tmp_path / "evil.git")


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    path = tmp_path / "markers"
    path.mkdir()
    return path


@pytest.fixture
def ws(tmp_path: Path, remote: Path) -> GitWorkspace:
    return GitWorkspace(tmp_path / "runner" / "repo", str(remote), tmp_path / "runner" / "wt")


def agent_env() -> dict[str, str]:
    """What an agent gets today: the runner's environment without names that look secret."""
    return {k: v for k, v in os.environ.items() if k not in SECRETS}


def hostile_agent(path: Path, markers: Path, evil: Path, prompt: str = "[plant]") -> None:
    """The hostile agent program, run in a worktree as the runner runs an agent."""
    subprocess.run(
        [str(PLANTER), "--markers", str(markers), "--evil", str(evil), prompt],
        cwd=path,
        env=agent_env(),
        check=True,
        capture_output=True,
        timeout=60,
    )


def planted_runs(markers: Path) -> list[str]:
    """Each planted program that ran, with the secrets it saw."""
    found = []
    for dump in sorted(markers.glob("*.env")):
        text = dump.read_text(errors="replace")
        leaked = [name for name, value in SECRETS.items() if value in text]
        found.append(f"{dump.name.split('.')[0]} (saw {', '.join(leaked) or 'no secret'})")
    return found


def refs(bare: Path) -> str:
    return git.Repo(bare).git.for_each_ref("--format=%(refname) %(objectname)")


def test_the_planter_does_run_in_a_git_that_trusts_the_repository(
    ws: GitWorkspace, markers: Path, evil: Path
) -> None:
    """The control: plain git in a planted worktree runs what was planted, with whatever
    environment it has, so the tests below would see it if the runner's git did the same."""
    co = ws.checkout("feature/control", "task-control")
    hostile_agent(co.path, markers, evil)
    assert planted_runs(markers) == []  # planting alone runs nothing
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "status"], cwd=co.path, env=env, capture_output=True, check=False)
    subprocess.run(["git", "add", "-A"], cwd=co.path, env=env, capture_output=True, check=False)
    subprocess.run(["git", "commit", "-m", "x"], cwd=co.path, env=env, capture_output=True, check=False)
    ran = planted_runs(markers)
    assert any(r.startswith(("fsmonitor", "include-fsmonitor", "worktree-fsmonitor")) for r in ran), ran
    assert any(r.startswith("filter-clean") for r in ran), ran
    assert any(r.startswith("hookspath-") or r.startswith("hook-") for r in ran), ran
    assert any("canary-runner-secret" in p.read_text() for p in markers.glob("*.env"))


def test_nothing_an_agent_plants_runs_in_the_runners_git_and_pushes_go_to_the_configured_remote(
    ws: GitWorkspace, remote: Path, evil: Path, markers: Path, tmp_path: Path
) -> None:
    """Planted fsmonitor, hooks (hooksPath and .git/hooks), filter/textconv/merge drivers by
    attributes, sshCommand, credential helper, pager, editor, gpg, alternates, include.path,
    config.worktree and origin/pushurl/insteadOf: none runs in a commit, a push, a rebase, a later
    checkout of the same branch, a later task, a terminal's status and diff, worktree removal and
    prune, or a restart on the same clone; every push lands on the configured remote."""
    evil_before = refs(evil)
    # given: a hostile agent's task
    first = ws.checkout("feature/hostile", "task-hostile")
    hostile_agent(first.path, markers, evil)
    # when: the runner commits and pushes its work
    sha1 = ws.commit_all(first.path, "hostile task")
    assert sha1 and ws.push(first.path, "feature/hostile") == sha1
    # and: a second hostile task on the same branch (its checkout meets the committed
    # .gitattributes), whose push is rejected because someone else moved the branch, so it rebases
    # (a three-way merge of README.md, which the planted merge driver would take)
    second = ws.checkout("feature/hostile", "task-rebase")
    hostile_agent(second.path, markers, evil)
    readme = second.path / "README.md"
    readme.write_text("ours on top\n" + readme.read_text())
    other = git.Repo.clone_from(str(remote), tmp_path / "other", branch="feature/hostile")
    other_readme = Path(other.working_dir) / "README.md"
    other_readme.write_text(other_readme.read_text() + "theirs at the bottom\n")
    other.git.commit("-am", "someone else's change", author="Someone <someone@example.invalid>")
    other.git.push("origin", "feature/hostile")
    ws.commit_all(second.path, "rebased task")
    sha2 = ws.push(second.path, "feature/hostile")
    # and: a Refine terminal on it after its agent planted again: status and diff of a change
    hostile_agent(second.path, markers, evil)
    readme.write_text(readme.read_text() + "typed in the terminal\n")
    report = ws.status_report(second.path)
    assert "README.md" in report and "not a git repository" not in report
    assert "README.md" in ws.uncommitted(second.path)
    # and: a later benign task on another branch
    later = ws.checkout("feature/later", "task-later")
    hostile_agent(later.path, markers, evil, prompt="a benign later task")
    sha3 = ws.commit_all(later.path, "later task")
    assert sha3 and ws.push(later.path, "feature/later") == sha3
    # and: worktree removal and prune, a restart that clears leftovers, a checkout after it
    for co in (first, later):
        ws.remove(co.path)
    restarted = GitWorkspace(ws.repo_path, str(remote), ws.worktrees_dir)
    restarted.remove_leftovers()
    again = restarted.checkout("feature/hostile", "task-again")
    assert restarted.uncommitted(again.path) == ""
    # then: nothing planted ran
    assert planted_runs(markers) == []
    # and: the pushes went to the configured remote, with the runner's identity and the agent's bytes
    bare = git.Repo(remote)
    assert bare.git.rev_parse("refs/heads/feature/hostile") == sha2
    assert bare.git.rev_parse("refs/heads/feature/later") == sha3
    log = bare.git.log("--format=%an <%ae>|%s", "refs/heads/feature/hostile").splitlines()
    assert log[:3] == [
        "aipm runner <aipm-runner@users.noreply.local>|rebased task",
        "Someone <someone@example.invalid>|someone else's change",
        "aipm runner <aipm-runner@users.noreply.local>|hostile task",
    ]
    assert bare.git.show(f"{sha1}:planted.txt") == "the hostile agent was here"
    assert bare.git.show(f"{sha2}:README.md").splitlines()[0] == "ours on top"
    assert bare.git.show(f"{sha2}:README.md").splitlines()[-1] == "theirs at the bottom"
    assert refs(evil) == evil_before


def test_what_an_agent_planted_is_restored_with_a_warning_naming_the_worktree(
    ws: GitWorkspace, evil: Path, markers: Path, caplog: pytest.LogCaptureFixture
) -> None:
    co = ws.checkout("feature/restore", "task-restore")
    config_before = (ws.repo_path / ".git" / "config").read_text()
    hostile_agent(co.path, markers, evil)
    assert "fsmonitor" in (ws.repo_path / ".git" / "config").read_text()
    # when: the runner's next git command in that worktree
    with caplog.at_level(logging.WARNING, logger="ec2_runner.safegit"):
        ws.commit_all(co.path, "after the agent")
    # then: the clone's git directory is as the runner keeps it, and the log says what was fixed where
    git_dir = ws.repo_path / ".git"
    assert (git_dir / "config").read_text() == config_before
    assert not (git_dir / "info" / "attributes").exists()
    assert not (git_dir / "objects" / "info" / "alternates").exists()
    assert not list(git_dir.glob("worktrees/*/config.worktree"))
    assert sorted(p.name for p in (git_dir / "hooks").iterdir() if not p.name.endswith(".sample")) == []
    (warning,) = [r for r in caplog.records if "restored" in r.getMessage()]
    assert str(co.path) in warning.getMessage()
    assert "config" in warning.getMessage() and "hooks/pre-push" in warning.getMessage()
    assert planted_runs(markers) == []


def test_a_worktree_whose_git_file_points_elsewhere_is_still_the_runners(
    ws: GitWorkspace, remote: Path, markers: Path, tmp_path: Path
) -> None:
    """The agent rewrites its worktree's ``.git`` file to a repository of its own (with an
    fsmonitor): the runner works out the git directory itself, so it commits and pushes the task's
    work to the configured remote, and nothing of the other repository runs."""
    co = ws.checkout("feature/gitfile", "task-gitfile")
    elsewhere = tmp_path / "elsewhere"
    git.Repo.init(elsewhere, initial_branch="main")
    mark = markers / "mark-elsewhere"
    mark.write_text(f'#!/bin/sh\nenv > "{markers}/elsewhere-fsmonitor.$$.env"\n')
    mark.chmod(0o755)
    git.Repo(elsewhere).git.config("core.fsmonitor", str(mark))
    (co.path / ".git").write_text(f"gitdir: {elsewhere / '.git'}\n")
    (co.path / "work.txt").write_text("the task's work\n")
    sha = ws.commit_all(co.path, "work")
    assert sha and ws.push(co.path, "feature/gitfile") == sha
    assert git.Repo(remote).git.show(f"{sha}:work.txt") == "the task's work"
    assert planted_runs(markers) == []


def test_ssh_gets_the_operators_command_and_no_secret_of_the_runners(
    tmp_path: Path, remote: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ssh remote with the operator's ``GIT_SSH_COMMAND`` (here a stand-in that runs the remote
    end locally and records its environment): clone, fetch and push work through it, and what git
    starts sees none of the runner's secrets."""
    dumps = tmp_path / "ssh-env"
    dumps.mkdir()
    ssh = tmp_path / "operator-ssh"
    ssh.write_text(f'#!/bin/sh\nfor last; do :; done\nenv > "{dumps}/ssh.$$.env"\nexec sh -c "$last"\n')
    ssh.chmod(0o755)
    monkeypatch.setenv("GIT_SSH_COMMAND", str(ssh))
    ws = GitWorkspace(tmp_path / "repo", f"ssh://127.0.0.1{remote}", tmp_path / "wt")
    co = ws.checkout("feature/ssh", "task-ssh")
    (co.path / "a.txt").write_text("over ssh\n")
    sha = ws.commit_all(co.path, "over ssh")
    assert sha and ws.push(co.path, "feature/ssh") == sha
    assert git.Repo(remote).git.rev_parse("refs/heads/feature/ssh") == sha
    seen = [p.read_text() for p in dumps.glob("*.env")]
    assert seen  # the operator's ssh was used
    for text in seen:
        assert not [name for name, value in SECRETS.items() if value in text]
        assert not re.search(r"^AWS_", text, re.M)


class _AskForPassword(http.server.BaseHTTPRequestHandler):
    """A git-over-HTTP remote that wants a password for everything."""

    asked: list[str] = []

    def do_GET(self) -> None:
        self.asked.append(self.headers.get("Authorization") or "")
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="git"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def password_remote() -> Iterator[str]:
    _AskForPassword.asked = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AskForPassword)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/repo.git"
    server.shutdown()
    server.server_close()


def test_a_planted_credential_helper_is_never_asked_and_the_operators_is(
    ws: GitWorkspace, evil: Path, markers: Path, password_remote: str, tmp_path: Path
) -> None:
    """A remote that asks for a password: git asks the credential helper the runner was
    configured with, never one the agent planted (for all URLs or for this one)."""
    co = ws.checkout("feature/cred", "task-cred")
    hostile_agent(co.path, markers, evil)
    asked = tmp_path / "operator-helper-asked"
    helper = tmp_path / "operator-helper"
    helper.write_text(f'#!/bin/sh\necho "$1" >> "{asked}"\n')
    helper.chmod(0o755)
    trusted = GitWorkspace(ws.repo_path, password_remote, ws.worktrees_dir, credential_helper=str(helper))
    for key in ("credential.helper", f"credential.{password_remote}.helper"):  # planted once more
        git.Repo(ws.repo_path).git.config("--add", key, f"!{markers}/bin/mark credential-planted")
    with pytest.raises(GitOpError, match="git fetch"):
        trusted.checkout("feature/cred", "task-cred-2")
    assert _AskForPassword.asked  # git did reach the remote, which asked for a password
    assert "get" in asked.read_text().split()
    assert planted_runs(markers) == []


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("/srv/git/repo.git", ["file"]),
        ("file:///srv/git/repo.git", ["file"]),
        ("https://github.com/o/r.git", ["http", "https"]),
        ("ssh://git@github.com/o/r.git", ["ssh"]),
        ("git@github.com:o/r.git", ["ssh"]),
        ("git://127.0.0.1/r.git", ["git"]),
        ("codecommit::us-east-1://repo", ["codecommit"]),
    ],
)
def test_only_the_configured_remotes_transport_is_allowed(url: str, allowed: list[str]) -> None:
    assert transports(url) == allowed


def test_a_symlink_planted_in_the_git_dir_is_removed_never_followed(ws: GitWorkspace, tmp_path: Path) -> None:
    """The restore deletes what was planted in the git directory; a symlink put in place of its
    hooks or info folder is removed itself, and the files where it pointed stay as they were."""
    co = ws.checkout("feature/links", "task-links")
    precious = tmp_path / "someone-elses"
    precious.mkdir()
    (precious / "pre-push").write_text("not the runner's to delete\n")
    (precious / "attributes").write_text("not the runner's to delete either\n")
    git_dir = ws.repo_path / ".git"
    shutil.rmtree(git_dir / "hooks")
    (git_dir / "hooks").symlink_to(precious)
    shutil.rmtree(git_dir / "info")
    (git_dir / "info").symlink_to(precious)
    (co.path / "a.txt").write_text("a\n")
    assert ws.commit_all(co.path, "a")
    assert sorted(p.name for p in precious.iterdir()) == ["attributes", "pre-push"]
    assert not (git_dir / "hooks").is_symlink() and not (git_dir / "info").is_symlink()


def test_an_agent_planting_while_the_runner_runs_git_for_another_task_is_never_read(
    ws: GitWorkspace, evil: Path, markers: Path, remote: Path
) -> None:
    """Two slots: one task's agent keeps re-planting the clone's config, attributes and hooks
    while the runner commits and pushes another task's work. The runner's commands read the
    config of a git directory of its own, so there is no moment at which what was planted counts
    (a restore before each command alone would leave one)."""
    # given: an agent that has planted everything once, and then re-plants it without pause
    hostile = ws.checkout("feature/racer", "task-racer")
    hostile_agent(hostile.path, markers, evil)
    git_dir = ws.repo_path / ".git"
    planted = {rel: (git_dir / rel).read_bytes() for rel in ("config", "info/attributes")}
    stop = threading.Event()

    def replant() -> None:
        while not stop.is_set():
            for rel, data in planted.items():
                tmp = git_dir / f"{rel}.racer"
                tmp.write_bytes(data)
                os.replace(tmp, git_dir / rel)

    racer = threading.Thread(target=replant, daemon=True)
    racer.start()
    try:
        # when: the runner works for the other task meanwhile
        other = ws.checkout("feature/raced", "task-raced")
        for i in range(15):
            (other.path / "work.txt").write_text(f"round {i}\n")
            assert ws.commit_all(other.path, f"round {i}")
            ws.push(other.path, "feature/raced")
        ws.status_report(other.path)
    finally:
        stop.set()
        racer.join(timeout=10)
    # then
    assert planted_runs(markers) == []
    assert git.Repo(remote).git.show("refs/heads/feature/raced:work.txt") == "round 14"


def test_refs_the_runners_git_dir_rewrites_stay_shared_with_the_clone(ws: GitWorkspace) -> None:
    """Git replaces ``packed-refs`` when it deletes a packed ref (the runner never does; an operator
    command through the workspace might): the new file becomes the clone's, and the runner's git
    directory links to it again, so the two never disagree about a ref."""
    clone = git.Repo(ws.repo_path)
    assert "refs/remotes/origin/main" in (ws.repo_path / ".git" / "packed-refs").read_text()
    ws._git.run(["update-ref", "-d", "refs/remotes/origin/main"])
    ws._git.run(["rev-parse", "--git-dir"])  # any next command
    private = ws._git.private_dir
    assert (private / "packed-refs").is_symlink()
    assert "refs/remotes/origin/main" not in (ws.repo_path / ".git" / "packed-refs").read_text()
    assert clone.git.for_each_ref("refs/remotes/origin/main") == ""
