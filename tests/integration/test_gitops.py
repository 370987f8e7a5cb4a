"""Git for the runner against a real bare remote: worktrees, commits, pushes, conflicts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import git
import pytest

from ec2_runner.gitops import DeadlineError, GitOpError, GitWorkspace, PushConflictError, RefRejectedError
from local.gitremote import ensure_bare_remote
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return ensure_bare_remote(tmp_path / "remote.git")


@pytest.fixture
def ws(tmp_path: Path, remote: Path) -> GitWorkspace:
    return GitWorkspace(tmp_path / "runner" / "repo", str(remote), tmp_path / "runner" / "wt")


def other_clone(remote: Path, tmp: Path, branch: str) -> git.Repo:
    repo = git.Repo.clone_from(str(remote), tmp, branch=branch)
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "someone").release()
        cw.set_value("user", "email", "someone@example.invalid")
    return repo


def test_new_branch_starts_from_default_and_push_creates_it(ws: GitWorkspace, remote: Path) -> None:
    co = ws.checkout("feature/new", "task-1")
    assert not co.branch_existed
    assert co.base_sha == git.Repo(remote).git.rev_parse("refs/heads/main")
    (co.path / "a.txt").write_text("hello\n")
    sha = ws.commit_all(co.path, "add a")
    assert sha and ws.push(co.path, "feature/new") == sha
    assert git.Repo(remote).git.rev_parse("refs/heads/feature/new") == sha
    ws.remove(co.path)
    assert not co.path.exists()


def test_existing_branch_is_checked_out_at_its_remote_head(
    ws: GitWorkspace, remote: Path, tmp_path: Path
) -> None:
    other = other_clone(remote, tmp_path / "other", "main")
    other.git.checkout("-b", "feature/existing")
    (Path(other.working_dir) / "b.txt").write_text("theirs\n")
    other.git.add("b.txt")
    other.git.commit("-m", "theirs")
    other.git.push("origin", "feature/existing")
    co = ws.checkout("feature/existing", "task-2")
    assert co.branch_existed and (co.path / "b.txt").read_text() == "theirs\n"


def test_nothing_changed_commits_nothing(ws: GitWorkspace) -> None:
    co = ws.checkout("feature/idle", "task-3")
    assert ws.commit_all(co.path, "nothing") is None


def test_moved_branch_is_rebased_once(ws: GitWorkspace, remote: Path, tmp_path: Path) -> None:
    co = ws.checkout("feature/moving", "task-4")
    other = other_clone(remote, tmp_path / "other", "main")
    other.git.checkout("-b", "feature/moving")
    (Path(other.working_dir) / "theirs.txt").write_text("x\n")
    other.git.add("-A")
    other.git.commit("-m", "someone pushed to the PR")
    other.git.push("origin", "feature/moving")
    (co.path / "ours.txt").write_text("y\n")
    ws.commit_all(co.path, "ours")
    sha = ws.push(co.path, "feature/moving")
    log = git.Repo(remote).git.log("--format=%s", "refs/heads/feature/moving")
    assert log.splitlines()[:2] == ["ours", "someone pushed to the PR"]
    assert git.Repo(remote).git.rev_parse("refs/heads/feature/moving") == sha


def test_conflicting_move_fails_without_force(ws: GitWorkspace, remote: Path, tmp_path: Path) -> None:
    co = ws.checkout("feature/conflict", "task-5")
    other = other_clone(remote, tmp_path / "other", "main")
    other.git.checkout("-b", "feature/conflict")
    (Path(other.working_dir) / "README.md").write_text("theirs\n")
    other.git.commit("-am", "theirs")
    other.git.push("origin", "feature/conflict")
    theirs = other.head.commit.hexsha
    (co.path / "README.md").write_text("ours\n")
    ws.commit_all(co.path, "ours")
    with pytest.raises(PushConflictError, match="moved during the task"):
        ws.push(co.path, "feature/conflict")
    assert git.Repo(remote).git.rev_parse("refs/heads/feature/conflict") == theirs


def test_unreachable_remote_is_a_readable_error(tmp_path: Path) -> None:
    with pytest.raises(GitOpError, match="git clone of .* failed"):
        GitWorkspace(tmp_path / "r", str(tmp_path / "missing.git"), tmp_path / "wt")


def test_fetch_failure_is_a_gitop_error(ws: GitWorkspace, remote: Path) -> None:
    ws.remote = str(remote) + "-gone"  # the configured remote is gone
    with pytest.raises(GitOpError, match="fetch"):
        ws.checkout("feature/x", "task-6")


def test_parallel_checkouts_in_one_clone(ws: GitWorkspace, remote: Path) -> None:
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            co = ws.checkout(f"feature/p{i}", f"task-p{i}")
            (co.path / f"f{i}.txt").write_text(str(i))
            ws.commit_all(co.path, f"p{i}")
            ws.push(co.path, f"feature/p{i}")
            ws.remove(co.path)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    heads = git.Repo(remote).git.for_each_ref("refs/heads/feature/*").splitlines()
    assert len(heads) == 6


def test_task_ids_never_escape_the_worktrees_dir(ws: GitWorkspace) -> None:
    co = ws.checkout("feature/esc", "../../../etc/evil")
    assert co.path.resolve().parent == ws.worktrees_dir.resolve()


def test_a_held_worktree_is_never_replaced(ws: GitWorkspace) -> None:
    """A task and a terminal session asking for the same folder each get their own."""
    first = ws.checkout("feature/held", "task-same")
    (first.path / "work.txt").write_text("in progress\n")
    second = ws.checkout("feature/held", "task-same")
    assert second.path != first.path and (first.path / "work.txt").exists()
    ws.remove(first.path)
    again = ws.checkout("feature/held", "task-same")
    assert again.path == first.path and not (again.path / "work.txt").exists()


@pytest.fixture
def stalled_remote() -> Iterator[str]:
    """A git:// URL on loopback whose server accepts connections and then never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"git://127.0.0.1:{server.getsockname()[1]}/repo.git"
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    server.close()


def test_a_stalled_fetch_times_out_as_a_gitop_error(
    tmp_path: Path, remote: Path, stalled_remote: str
) -> None:
    # given: a workspace with a 1 s network timeout whose remote stops answering
    ws = GitWorkspace(tmp_path / "repo", str(remote), tmp_path / "wt", network_timeout=1)
    ws.remote = stalled_remote
    # when
    started = time.monotonic()
    with pytest.raises(GitOpError, match=r"git fetch of 'feature/stall' timed out after 1 s"):
        ws.checkout("feature/stall", "task-stall")
    # then: the stalled command is killed at the timeout
    assert time.monotonic() - started < 10
    assert not list((tmp_path / "wt").iterdir())


def test_a_stalled_push_times_out_as_a_gitop_error(tmp_path: Path, remote: Path, stalled_remote: str) -> None:
    ws = GitWorkspace(tmp_path / "repo", str(remote), tmp_path / "wt", network_timeout=1)
    co = ws.checkout("feature/stallpush", "task-stallpush")
    (co.path / "a.txt").write_text("a\n")
    ws.commit_all(co.path, "a")
    ws.remote = stalled_remote
    started = time.monotonic()
    with pytest.raises(GitOpError, match=r"git push to 'feature/stallpush' timed out after 1 s"):
        ws.push(co.path, "feature/stallpush")
    with pytest.raises(GitOpError, match=r"git push to 'kiro-wip/stallpush' timed out after 1 s"):
        ws.push_ref(co.path, "kiro-wip/stallpush")
    assert time.monotonic() - started < 10  # one try each: a remote that stalled is not hammered


def test_a_push_is_stopped_at_the_end_of_the_time_it_was_given(
    tmp_path: Path, remote: Path, stalled_remote: str
) -> None:
    """``timeout`` bounds the whole push (the lease's remainder), below the network timeout."""
    ws = GitWorkspace(tmp_path / "repo", str(remote), tmp_path / "wt", network_timeout=60)
    co = ws.checkout("feature/deadline", "task-deadline")
    (co.path / "a.txt").write_text("a\n")
    ws.commit_all(co.path, "a")
    ws.remote = stalled_remote
    started = time.monotonic()
    with pytest.raises(DeadlineError, match=r"git push to 'feature/deadline' stopped after 1.0 s"):
        ws.push(co.path, "feature/deadline", timeout=1.0)
    assert time.monotonic() - started < 5


def test_a_push_with_no_time_left_is_not_started(ws: GitWorkspace, remote: Path) -> None:
    co = ws.checkout("feature/late", "task-late")
    (co.path / "a.txt").write_text("a\n")
    ws.commit_all(co.path, "a")
    with pytest.raises(DeadlineError, match="not started"):
        ws.push(co.path, "feature/late", timeout=0)
    assert git.Repo(remote).git.for_each_ref("refs/heads/feature/late") == ""
    assert ws.push(co.path, "feature/late", timeout=30) == ws.head(co.path)  # time enough: pushed


def test_the_rebase_after_a_moved_branch_stays_inside_the_push_time(
    ws: GitWorkspace, remote: Path, tmp_path: Path
) -> None:
    """A push rejected because the branch moved fetches, rebases and pushes again, all inside the
    one ``timeout``: the second push is cut off by what remains of it, not by the network timeout."""
    # given: the branch moved on the remote during the task, and the remote now takes 20 s per push
    co = ws.checkout("feature/moved-late", "task-moved-late")
    other = other_clone(remote, tmp_path / "other", "main")
    (Path(other.working_dir) / "b.txt").write_text("b\n")
    other.git.add("b.txt")
    other.git.commit("-m", "b")
    other.git.push("origin", "HEAD:refs/heads/feature/moved-late")
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\nsleep 20\n")
    hook.chmod(0o755)
    (co.path / "a.txt").write_text("a\n")
    ws.commit_all(co.path, "a")
    # when
    started = time.monotonic()
    with pytest.raises(DeadlineError):
        ws.push(co.path, "feature/moved-late", timeout=1.5)
    # then: stopped at the push's time; the branch is as the other clone left it
    assert time.monotonic() - started < 5
    assert git.Repo(remote).git.rev_parse("refs/heads/feature/moved-late") == other.head.commit.hexsha


def test_a_stalled_clone_times_out_as_a_gitop_error(tmp_path: Path, stalled_remote: str) -> None:
    started = time.monotonic()
    with pytest.raises(GitOpError, match=r"git clone of .* timed out after 1 s"):
        GitWorkspace(tmp_path / "repo", stalled_remote, tmp_path / "wt", network_timeout=1)
    assert time.monotonic() - started < 10


def test_wip_pushes_fast_forward_and_never_replace_other_work(ws: GitWorkspace, remote: Path) -> None:
    """The WIP ref is pushed without force: the next attempt's WIP (built on the first) is a
    fast-forward; unrelated work finds the ref taken and goes to the fresh ref named next."""
    bare = git.Repo(remote)
    refs = ["kiro-wip/t1", "kiro-wip/t1-2"]
    # given: a first attempt's WIP
    first = ws.checkout("feature/wip", "task-wip-1")
    (first.path / "a.txt").write_text("first\n")
    ws.commit_all(first.path, "WIP: one")
    sha1, ref1 = ws.push_wip(first.path, refs)
    assert ref1 == "kiro-wip/t1" and bare.git.rev_parse("refs/heads/kiro-wip/t1") == sha1
    # when: a second attempt resumes from it -> fast-forward of the same ref
    second = ws.checkout("feature/wip", "task-wip-2", start_sha=sha1, start_ref=ref1)
    (second.path / "a.txt").write_text("second\n")
    ws.commit_all(second.path, "WIP: two")
    sha2, ref2 = ws.push_wip(second.path, refs)
    assert ref2 == "kiro-wip/t1" and bare.git.rev_parse("refs/heads/kiro-wip/t1") == sha2
    assert bare.git.rev_parse(f"{sha2}^") == sha1
    # and: work that does not build on it goes to the fresh ref; the earlier WIP stays as it was
    other = ws.checkout("feature/wip", "task-wip-3")
    (other.path / "b.txt").write_text("other\n")
    ws.commit_all(other.path, "WIP: unrelated")
    sha3, ref3 = ws.push_wip(other.path, refs)
    assert ref3 == "kiro-wip/t1-2" and bare.git.rev_parse("refs/heads/kiro-wip/t1-2") == sha3
    assert bare.git.rev_parse("refs/heads/kiro-wip/t1") == sha2
    with pytest.raises(RefRejectedError) as rejected:
        ws.push_ref(other.path, "kiro-wip/t1")
    assert rejected.value.moved


def test_push_refused_by_a_hook_is_not_rebased_or_retried(
    ws: GitWorkspace, remote: Path, tmp_path: Path
) -> None:
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'branch is frozen' >&2\nexit 1\n")
    hook.chmod(0o755)
    co = ws.checkout("feature/frozen", "task-frozen")
    (co.path / "a.txt").write_text("a\n")
    ws.commit_all(co.path, "a")
    with pytest.raises(RefRejectedError, match="branch is frozen") as err:
        ws.push(co.path, "feature/frozen")
    assert not err.value.moved
    assert git.Repo(remote).git.for_each_ref("refs/heads/feature/frozen") == ""


# one runner process: waits for the go file, opens the shared clone, works in a worktree of its own
# and in one whose name the other process asks for too, then holds it until the hold file appears
WORKER = r"""
import json, sys, time
from pathlib import Path
from ec2_runner.gitops import GitWorkspace
repo, remote, wt, go, hold, me = sys.argv[1:]
while not Path(go).exists():
    time.sleep(0.002)
ws = GitWorkspace(Path(repo), remote, Path(wt))
mine = ws.checkout(f"feature/proc-{me}", f"task-{me}")
(mine.path / f"{me}.txt").write_text(me)
ws.commit_all(mine.path, f"from {me}")
ws.push(mine.path, f"feature/proc-{me}")
same = ws.checkout("feature/shared", "task-same")
(same.path / "owner.txt").write_text(me)
print(json.dumps({"mine": str(mine.path), "same": str(same.path)}), flush=True)
while not Path(hold).exists():
    time.sleep(0.01)
print(json.dumps({"intact": (same.path / "owner.txt").read_text() == me}), flush=True)
ws.remove(same.path)
ws.remove(mine.path)
"""


def test_two_processes_share_one_clone_and_never_take_each_others_worktree(
    tmp_path: Path, remote: Path
) -> None:
    """Runners started by hand on one machine share REPO_PATH: both clone-or-open it at the same
    moment, work side by side, and a folder one of them holds is never replaced by the other."""
    # given: two runner processes on one empty repo path, released at the same instant
    repo, wt, go, hold = (
        tmp_path / "shared" / "repo",
        tmp_path / "shared" / "wt",
        tmp_path / "go",
        tmp_path / "hold",
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(repo), str(remote), str(wt), str(go), str(hold), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for i in range(2)
    ]
    try:
        # when
        go.touch()
        held = []
        for proc in procs:
            line = proc.stdout.readline() if proc.stdout else ""
            assert line, proc.communicate(timeout=30)[1][-2000:]
            held.append(json.loads(line))
        # then: each holds a folder of its own, also for the name both asked for
        assert held[0]["same"] != held[1]["same"]
        assert all(Path(h["same"]).is_dir() and Path(h["mine"]).is_dir() for h in held)
        hold.touch()
        results = [proc.communicate(timeout=30) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    assert all(json.loads(out.splitlines()[-1]) == {"intact": True} for out, _ in results)
    heads = git.Repo(remote).git.for_each_ref("--format=%(refname)", "refs/heads/feature/proc-*").split()
    assert sorted(heads) == ["refs/heads/feature/proc-0", "refs/heads/feature/proc-1"]
    assert git.Repo(repo).git.worktree("list", "--porcelain").count("worktree ") == 1  # the clone alone


def test_a_worktree_lock_lives_as_long_as_its_worktree(ws: GitWorkspace) -> None:
    """Each worktree in use holds a lock file in the clone's git dir; removing it deletes the file,
    so locks do not pile up over thousands of tasks, and the worktrees folder holds worktrees only."""
    locks = ws.common_dir / "aipm-worktree-locks"
    co = ws.checkout("feature/lock", "task-lock")
    assert len(list(locks.iterdir())) == 1
    assert [p.name for p in ws.worktrees_dir.iterdir()] == [co.path.name]
    ws.remove(co.path)
    assert list(locks.iterdir()) == [] and list(ws.worktrees_dir.iterdir()) == []


def _crash_with_a_worktree(tmp_path: Path, remote: Path, name: str, dirty: bool) -> Path:
    """A runner process that checks out ``name`` (and writes into it when ``dirty``), then dies."""
    script = (
        "import os, sys; from pathlib import Path; from ec2_runner.gitops import GitWorkspace\n"
        f"ws = GitWorkspace(Path({str(tmp_path / 'runner' / 'repo')!r}), {str(remote)!r},"
        f" Path({str(tmp_path / 'runner' / 'wt')!r}))\n"
        f"co = ws.checkout('feature/crash', {name!r})\n"
        f"if {dirty!r}: (co.path / 'unsaved.txt').write_text('work nobody pushed')\n"
        "print(co.path, flush=True); os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def test_a_crashed_runs_unsaved_work_is_moved_aside_never_deleted(
    tmp_path: Path, remote: Path, ws: GitWorkspace
) -> None:
    # given: a runner died holding a worktree with uncommitted work
    left = _crash_with_a_worktree(tmp_path, remote, "task-crash", dirty=True)
    # when: the same folder is asked for again
    fresh = ws.checkout("feature/crash", "task-crash")
    # then: a clean worktree there, and the work kept beside it
    assert fresh.path == left and not (fresh.path / "unsaved.txt").exists()
    (kept,) = (ws.worktrees_dir / ".leftover").iterdir()
    assert (kept / "unsaved.txt").read_text() == "work nobody pushed"


def test_a_crashed_runs_clean_worktree_is_simply_replaced(
    tmp_path: Path, remote: Path, ws: GitWorkspace
) -> None:
    left = _crash_with_a_worktree(tmp_path, remote, "task-clean", dirty=False)
    fresh = ws.checkout("feature/crash", "task-clean")
    assert fresh.path == left
    assert not (ws.worktrees_dir / ".leftover").exists()


def test_a_leftover_with_work_is_reused_when_asked(tmp_path: Path, remote: Path, ws: GitWorkspace) -> None:
    """What a terminal session reopened after a runner restart asks for: its own folder, work intact."""
    left = _crash_with_a_worktree(tmp_path, remote, "term-abc", dirty=True)
    again = ws.checkout("feature/crash", "term-abc", reuse_leftover_work=True)
    assert again.path == left and (again.path / "unsaved.txt").read_text() == "work nobody pushed"
    assert not (ws.worktrees_dir / ".leftover").exists()
    # and it is held like any checkout: a second ask gets a folder of its own
    other = ws.checkout("feature/crash", "term-abc", reuse_leftover_work=True)
    assert other.path != left and not (other.path / "unsaved.txt").exists()


def test_the_next_runner_removes_the_leftovers_holding_nothing_unique_and_keeps_the_rest(
    tmp_path: Path, remote: Path, ws: GitWorkspace
) -> None:
    """What a runner does as it starts on a home a dead runner used: a clean worktree (and an empty
    folder) goes; one with work, one a live process holds, and a folder git does not know stay."""
    # given: runner processes that died holding a clean and a dirty worktree, a worktree this
    # process holds, a folder of someone else's and an empty one
    clean = _crash_with_a_worktree(tmp_path, remote, "task-clean", dirty=False)
    dirty = _crash_with_a_worktree(tmp_path, remote, "task-dirty", dirty=True)
    live = ws.checkout("feature/live", "task-live").path
    stray = ws.worktrees_dir / "notes"
    stray.mkdir()
    (stray / "todo.txt").write_text("mine")
    empty = ws.worktrees_dir / "empty"
    empty.mkdir()
    # when
    removed = GitWorkspace(ws.repo_path, str(remote), ws.worktrees_dir).remove_leftovers()
    # then
    assert sorted(removed) == sorted([clean, empty])
    assert not clean.exists() and not empty.exists()
    assert (dirty / "unsaved.txt").read_text() == "work nobody pushed"
    assert live.is_dir() and (stray / "todo.txt").read_text() == "mine"
    listed = git.Repo(ws.repo_path).git.worktree("list", "--porcelain")
    assert str(clean) not in listed and str(dirty) in listed and str(live) in listed
    # the dead runner's lock file of the removed worktree is gone with it
    assert not ws._lock_file(clean).exists()
