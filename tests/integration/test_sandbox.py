"""The agent sandbox on its own and through the agent adapters: real bubblewrap, real processes,
the hostile probe (tests/hostile_agent/probe) as the agent."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ec2_runner.agent_settings import AgentSettings
from ec2_runner.agents import CommandAgent, DemoAgent
from ec2_runner.sandbox import Sandbox, SandboxSettings, SandboxUnavailable, make_sandbox
from tests.fixtures import metadata_stand_in as stand_in_for_metadata

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        shutil.which("bwrap") is None, reason="bubblewrap is not installed (make venv installs it)"
    ),
]

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "tests" / "hostile_agent" / "probe"
FAKE_AGENT_CLI = ROOT / "tests" / "fake_agent" / "kiro-cli"
SECRETS = ("AWS_SECRET_ACCESS_KEY", "RUNNER_SECRET", "TOKEN_SECRET")


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """A runner's folders as the runner lays them out: its clone, its worktrees (this task's and
    another task's), its state, and a folder outside all of them."""
    state = tmp_path / "state"
    repo = state / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / ".git" / "config").write_text('[remote "origin"]\n\turl = https://token@example.invalid/x\n')
    worktrees = state / "worktrees"
    own = worktrees / "task-a"
    other = worktrees / "task-b"
    own.mkdir(parents=True)
    other.mkdir(parents=True)
    (other / "work.txt").write_text("task b's work\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    return {
        "state": state,
        "repo": repo,
        "worktrees": worktrees,
        "own": own,
        "other": other,
        "outside": outside,
    }


def sandbox_for(layout: dict[str, Path], **settings: Any) -> Sandbox:
    knobs = {"AGENT_SANDBOX": "bwrap", "AGENT_NETWORK": "none", **settings}
    return make_sandbox(
        SandboxSettings(**knobs), hidden=[layout["repo"], layout["worktrees"], layout["state"]]
    )


def probe_agent(sandbox: Sandbox | None, **settings: Any) -> CommandAgent:
    return CommandAgent(
        AgentSettings(agent="command", command=str(PROBE), kill_grace=0.5, **settings), sandbox
    )


def report(worktree: Path) -> dict[str, Any]:
    return json.loads((worktree / "probe-report.json").read_text())


# a runner process of its own: its secrets are in its environment from the start, as a real
# runner's are (so /proc/<runner>/environ holds them), and it runs one agent, sandboxed or not
RUNNER = """
import json, sys
from pathlib import Path
from ec2_runner.agent_settings import AgentSettings
from ec2_runner.agents import CommandAgent
from ec2_runner.sandbox import SandboxSettings, make_sandbox
command, worktree, hidden, prompt = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
settings = SandboxSettings()
sandbox = make_sandbox(settings, hidden=[Path(p) for p in hidden]) if settings.mode == "bwrap" else None
agent = CommandAgent(AgentSettings(agent="command", command=command), sandbox)
result = agent.run(prompt, worktree, timeout=30)
print(json.dumps({"ok": result.ok, "error": result.error}))
"""


def run_in_runner_process(layout: dict[str, Path], secrets: dict[str, str], sandbox: str) -> dict[str, Any]:
    hidden = json.dumps([str(layout[k]) for k in ("repo", "worktrees", "state")])
    env = {
        **os.environ,
        **secrets,
        "PYTHONPATH": str(ROOT),
        "AGENT_SANDBOX": sandbox,
        "AGENT_NETWORK": "none",
    }
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(PROBE), str(layout["own"]), hidden, "look around"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["ok"], outcome["error"]
    return report(layout["own"])


@pytest.fixture
def secrets() -> dict[str, str]:
    """The runner's secrets, with values no one could guess."""
    return {name: f"s3cret-{name.lower()}-{uuid.uuid4().hex}" for name in SECRETS}


def test_no_secret_is_readable_through_the_environment_or_any_process(
    layout: dict[str, Path], secrets: dict[str, str]
) -> None:
    """The sandboxed agent of a runner process that holds the secrets sees none of them in its own
    environment, nor in the environ or cmdline of any process it can see (its parent's included)."""
    # when
    seen = run_in_runner_process(layout, secrets, "bwrap")
    # then
    assert seen["processes"], "the probe saw no process at all, not even itself"
    assert str(seen["pid"]) in seen["processes"]
    text = json.dumps(seen)
    for name, value in secrets.items():
        assert value not in text, f"{name} reached the sandboxed agent"


def test_unsandboxed_agent_reads_its_parents_secret_which_is_what_the_sandbox_stops(
    layout: dict[str, Path], secrets: dict[str, str]
) -> None:
    """The control for the test above: with the sandbox off the same probe finds the runner's
    secrets in its parent's /proc environ (the hole the issue reports)."""
    text = json.dumps(run_in_runner_process(layout, secrets, "off"))
    assert all(value in text for value in secrets.values())


def test_only_the_sandbox_s_own_processes_are_visible(layout: dict[str, Path]) -> None:
    """A pid namespace with its own /proc: no runner, no test process, no other agent."""
    result = probe_agent(sandbox_for(layout)).run("look around", layout["own"], timeout=30)
    assert result.ok, result.error
    cmdlines = [p["cmdline"] for p in report(layout["own"])["processes"].values()]
    # bubblewrap itself (the namespace's first process) and the probe: nothing else
    others = [c for c in cmdlines if not c.startswith("/usr/bin/bwrap ") and "hostile_agent/probe" not in c]
    assert others == [] and len(cmdlines) == 2, cmdlines


def test_other_worktrees_the_clone_and_the_state_cannot_be_read_or_written(layout: dict[str, Path]) -> None:
    """Another task's worktree, the runner's clone (its config holds the remote URL) and its state
    are not there at all inside; writes to them fail and nothing changes on the host."""
    other, repo, state = layout["other"], layout["repo"], layout["state"]
    targets = [other / "work.txt", other, repo / ".git" / "config", repo]
    writes = [other / "INJECTED-by-a.txt", repo / ".git" / "hooks" / "pre-push", state / "planted.txt"]
    prompt = " ".join([*(f"[probe:read {t}]" for t in targets), *(f"[probe:write {w}]" for w in writes)])
    prompt += f" [probe:read {state}] [probe:read {layout['worktrees']}]"
    # when
    result = probe_agent(sandbox_for(layout)).run(prompt, layout["own"], timeout=30)
    # then
    assert result.ok, result.error
    seen = report(layout["own"])
    reads = seen["read"]
    assert all(reads[str(t)].startswith("error") for t in targets), reads
    assert all(v.startswith("error") for v in seen["write"].values()), seen["write"]
    # all the folders above the worktree show is the way down to it (its mount point)
    assert reads[str(state)] == "listed: worktrees" and reads[str(layout["worktrees"])] == "listed: task-a"
    assert not (other / "INJECTED-by-a.txt").exists()
    assert not (repo / ".git" / "hooks").exists() and not (state / "planted.txt").exists()
    assert (other / "work.txt").read_text() == "task b's work\n"


def test_a_write_through_a_committed_symlink_never_lands_outside_the_worktree(
    layout: dict[str, Path],
) -> None:
    """Symlinks in the worktree to a folder outside, to another worktree, to a system file: each
    write through them fails or stays inside the sandbox; the targets on the host are untouched."""
    own, outside, other = layout["own"], layout["outside"], layout["other"]
    (own / "out").symlink_to(outside)
    (own / "sibling").symlink_to(Path("..") / "task-b")
    (own / "hostname").symlink_to("/etc/hostname")
    (own / "up").symlink_to("..")
    before = Path("/etc/hostname").read_bytes() if Path("/etc/hostname").exists() else None
    prompt = (
        "[probe:write out/pwned.txt] [probe:write sibling/pwned.txt] [probe:write hostname] "
        "[probe:write up/task-b/pwned.txt] [probe:write inside.txt]"
    )
    # when
    result = probe_agent(sandbox_for(layout)).run(prompt, own, timeout=30)
    # then
    assert result.ok, result.error
    writes = report(own)["write"]
    assert writes["inside.txt"] == "written"  # the worktree itself is writable
    assert not list(outside.iterdir())
    assert not (other / "pwned.txt").exists()
    assert (Path("/etc/hostname").read_bytes() if before is not None else None) == before
    assert writes["hostname"].startswith("error"), writes


def test_the_demo_agent_writing_through_a_symlinked_tasks_md_leaves_the_target_alone(
    layout: dict[str, Path],
) -> None:
    """The product's own demo agent appends to TASKS.md: a committed TASKS.md that links outside
    does not lead its write there."""
    own, outside = layout["own"], layout["outside"]
    target = outside / "victim.md"
    target.write_text("untouched\n")
    (own / "TASKS.md").symlink_to(target)
    DemoAgent(AgentSettings(agent="demo"), sandbox_for(layout)).run("Task: demo\nDetails.", own, timeout=30)
    assert target.read_text() == "untouched\n"


def test_the_demo_agent_works_in_the_sandbox(layout: dict[str, Path]) -> None:
    """The runner's own Python (a venv, its base install possibly under the runner's home) runs
    the demo agent inside: TASKS.md is written in the worktree."""
    result = DemoAgent(AgentSettings(agent="demo"), sandbox_for(layout)).run(
        "Task: boxed demo\nDetails.", layout["own"], timeout=30
    )
    assert result.ok, result.error
    assert "boxed demo" in (layout["own"] / "TASKS.md").read_text()


@pytest.fixture
def metadata_stand_in() -> Iterator[tuple[str, list[bytes]]]:
    with stand_in_for_metadata() as served:
        yield served


@pytest.mark.parametrize("network", ["none", "proxy"])
def test_the_metadata_stand_in_cannot_be_reached(
    layout: dict[str, Path], metadata_stand_in: tuple[str, list[bytes]], network: str
) -> None:
    """With the sandbox's own network namespace (none, or the proxy's, which does not list it),
    a connection to the host's listener fails and the listener hears nothing."""
    address, got = metadata_stand_in
    sandbox = sandbox_for(layout, AGENT_NETWORK=network)
    try:
        result = probe_agent(sandbox).run(f"[probe:connect {address}]", layout["own"], timeout=30)
    finally:
        sandbox.close()
    assert result.ok, result.error
    assert report(layout["own"])["connect"][address].startswith("error")
    assert got == []


def test_with_the_host_network_the_same_listener_is_reached(
    layout: dict[str, Path], metadata_stand_in: tuple[str, list[bytes]]
) -> None:
    """The control: AGENT_NETWORK=host shares the runner's network, and the probe gets through
    (which is why host mode needs the metadata service blocked some other way)."""
    address, got = metadata_stand_in
    result = probe_agent(sandbox_for(layout, AGENT_NETWORK="host")).run(
        f"[probe:connect {address}]", layout["own"], timeout=30
    )
    assert result.ok, result.error
    assert report(layout["own"])["connect"][address] == "connected"


def processes_with(token: str) -> list[int]:
    """Host pids whose environment carries ``token``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if token.encode() in (entry / "environ").read_bytes():
                stat = (entry / "stat").read_text()
                if stat[stat.rfind(")") + 2] not in "ZX":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_hung_sandboxed_agent_is_killed_at_its_timeout_with_nothing_left(
    layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent that ignores SIGTERM, with a helper in a session of its own (out of the agent's
    process group), ends at the timeout and leaves no process behind."""
    token = f"probe-run-{uuid.uuid4().hex}"
    monkeypatch.setenv("PROBE_RUN", token)
    agent = probe_agent(sandbox_for(layout))
    # when
    result = agent.run("[probe:hang]", layout["own"], timeout=3)
    # then
    assert not result.ok and "timed out" in (result.error or "")
    assert "probe hanging" in result.output  # it really ran (and started its helper) before the kill
    deadline = time.monotonic() + 10
    while processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(token) == []


def test_the_private_temporary_folder_is_removed_after_the_run(layout: dict[str, Path]) -> None:
    """What the agent wrote to /tmp and $HOME is gone once its run ended."""
    sandbox = sandbox_for(layout)
    boxed = sandbox.wrap(
        ["sh", "-c", "echo x > /tmp/left && echo y > $HOME/left"], layout["own"], dict(os.environ)
    )
    assert boxed.private is not None and boxed.private.exists()
    subprocess.run(boxed.argv, env=boxed.env, check=True, timeout=30)
    assert (boxed.private / "tmp" / "left").exists()
    boxed.close()
    assert not boxed.private.exists()


def test_a_missing_bwrap_refuses_with_what_to_do() -> None:
    """AGENT_SANDBOX=bwrap without bubblewrap: the error says to install it or to turn it off."""
    with pytest.raises(SandboxUnavailable) as e:
        make_sandbox(SandboxSettings(AGENT_SANDBOX="bwrap", AGENT_SANDBOX_BWRAP="no-such-bwrap-here"))
    assert "install bubblewrap" in str(e.value) and "AGENT_SANDBOX=off" in str(e.value)


def test_a_bwrap_that_fails_its_self_check_refuses_with_what_to_do(tmp_path: Path) -> None:
    """A bubblewrap that cannot make its namespaces here (played by a program that fails)."""
    broken = tmp_path / "bwrap"
    broken.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(SandboxUnavailable) as e:
        make_sandbox(SandboxSettings(AGENT_SANDBOX="bwrap", AGENT_SANDBOX_BWRAP=str(broken)))
    message = str(e.value)
    assert "self-check" in message and "No permissions" in message and "AGENT_SANDBOX=off" in message


def test_sandbox_off_runs_the_command_as_it_is(layout: dict[str, Path]) -> None:
    """AGENT_SANDBOX=off: the command and environment are passed through untouched."""
    sandbox = make_sandbox(SandboxSettings(AGENT_SANDBOX="off"))
    boxed = sandbox.wrap(["probe", "x"], layout["own"], {"A": "1"})
    assert boxed.argv == ["probe", "x"] and boxed.env == {"A": "1"}


def test_settings_refuse_what_they_cannot_use() -> None:
    """A host without a port, a relative extra path, an unknown mode: refused at start-up."""
    from pydantic import ValidationError

    for bad in (
        {"AGENT_ALLOWED_HOSTS": "api.example.com"},
        {"AGENT_SANDBOX_WRITABLE": "relative/dir"},
        {"AGENT_SANDBOX": "docker"},
        {"AGENT_NETWORK": "open"},
    ):
        with pytest.raises(ValidationError):
            SandboxSettings(**bad)
    ok = SandboxSettings(AGENT_ALLOWED_HOSTS="api.example.com:443, *.kiro.dev:443", AGENT_SANDBOX="BWRAP")
    assert ok.allowed_hosts == ["api.example.com:443", "*.kiro.dev:443"] and ok.mode == "bwrap"


def test_a_refine_terminal_s_agent_runs_in_the_sandbox(
    moto_endpoint: str, table: str, tmp_path: Path
) -> None:
    """A terminal session's agent (a shell here, what a user can make any agent run) sees its
    worktree, not the runner's clone nor other processes; closing the session leaves no process of
    it (a helper that left its session included) and removes its private folder."""
    import asyncio

    from shared import frames as fr
    from tests.integration.refine_support import (
        SHELL,
        Browser,
        browser_token,
        running_gateway,
        running_runner,
        session_manager,
    )

    sandbox = make_sandbox(
        SandboxSettings(AGENT_SANDBOX="bwrap", AGENT_NETWORK="none"),
        hidden=[tmp_path / "clone", tmp_path / "worktrees"],
    )
    token = f"terminal-run-{uuid.uuid4().hex}"
    env = {"PATH": "/usr/bin:/bin", "TERM": "xterm-256color", "PS1": "$ ", "HOME": "/tmp", "PROBE_RUN": token}
    seen: dict[str, str] = {}
    with (
        running_gateway(moto_endpoint, table) as gw,
        running_runner(gw, lambda: session_manager(tmp_path, SHELL, env, sandbox=sandbox)),
    ):

        async def scenario() -> None:
            browser = await Browser.connect(gw.ws_url, browser_token(branch="feature/boxed"))
            await browser.open(branch="feature/boxed", timeout=20)
            # (each marker is computed by the shell, so the echoed command line never matches it)
            await browser.type(f"echo CLONE-$(ls -A {tmp_path / 'clone'} 2>/dev/null | wc -l)-$((6*7))\r")
            await browser.wait_for(lambda b: re.search(r"CLONE-\d+-42", b.text) is not None, 10)
            await browser.type(
                "echo PIDS $(ls /proc | grep -c '^[0-9]') PID1 $(tr '\\0' ' ' </proc/1/cmdline)\r"
            )
            await browser.wait_text("PID1 /usr/bin/bwrap", 10)
            seen["clone"] = re.findall(r"CLONE-(\d+)-42", browser.text)[0]
            seen["pid1"] = browser.text.split("PID1 /usr/bin/bwrap")[-1].split("\r\n")[0]
            seen["pids"] = browser.text.split("PIDS ")[-1].split()[0]
            # a helper that shrugs off signals and leaves the shell's session: the user closes the
            # session while it runs, and the sandbox's end must take it along
            await browser.type("(trap '' TERM HUP INT; setsid sleep 3600 &); echo BG-$((1+1))\r")
            await browser.wait_text("BG-2", 10)
            await browser.send(fr.CloseFrame(session_id=browser.session_id))
            await browser.wait_frame(fr.ExitFrame, 10)
            await browser.close()

        asyncio.run(scenario())
    # then: the clone was not there, the shell saw its sandbox's processes only
    assert seen["clone"] == "0" and any((tmp_path / "clone").iterdir()), seen  # empty inside only
    assert int(seen["pids"]) < 10, seen  # bwrap, the shell and that one line's commands (the host: hundreds)
    private = Path(seen["pid1"].split("--bind ")[1].split()[0]).parent  # <private>/tmp -> /tmp
    assert private.name.startswith("aipm-agent-")
    assert not private.exists()
    deadline = time.monotonic() + 10
    while processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(token) == []


@pytest.fixture
def model_endpoint() -> Iterator[str]:
    """An HTTP server on host loopback standing in for the model API: its host:port."""
    import http.server

    class Reply(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"the model answers")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Reply)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_through_the_proxy_the_agent_reaches_the_model_endpoint_and_nothing_else(
    layout: dict[str, Path], model_endpoint: str, metadata_stand_in: tuple[str, list[bytes]]
) -> None:
    """AGENT_NETWORK=proxy: the agent's HTTP client (its proxy settings from the sandbox) gets the
    allow-listed model endpoint's answer; the metadata stand-in, not listed, is refused, and its
    listener hears nothing."""
    pytest.importorskip("ec2_runner.egress", reason="the egress proxy (ec2_runner/egress.py) is not here")
    address, got = metadata_stand_in
    fetch = (
        "import sys, urllib.request\n"
        "for target in sys.argv[1:]:\n"
        "    try:\n"
        "        body = urllib.request.urlopen(f'http://{target}/', timeout=10).read().decode()\n"
        "    except Exception as e:\n"
        "        body = f'refused: {e}'\n"
        "    print(target, body)\n"
    )
    sandbox = sandbox_for(layout, AGENT_NETWORK="proxy", AGENT_ALLOWED_HOSTS=model_endpoint)
    try:
        with sandbox.run(
            [sys.executable, "-c", fetch, model_endpoint, address], layout["own"], dict(os.environ)
        ) as boxed:
            done = subprocess.run(boxed.argv, env=boxed.env, capture_output=True, text=True, timeout=60)
    finally:
        sandbox.close()
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines[model_endpoint] == "the model answers", done.stderr
    assert lines[address].startswith("refused") and "403" in lines[address]
    assert got == []


def test_a_task_s_sandboxed_conversation_resumes_in_its_sandboxed_terminal(
    moto_endpoint: str, table: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent CLI's own state folder listed in AGENT_SANDBOX_WRITABLE: the task's headless run
    (in the sandbox) leaves its conversation there, and the task's Refine session (in the sandbox
    too) resumes it, as it does unsandboxed."""
    import asyncio

    from ec2_runner.agents import make_agent
    from tests.integration.refine_support import (
        Browser,
        FakeKiro,
        browser_token,
        running_gateway,
        running_runner,
        session_manager,
        workspace,
    )

    kiro = FakeKiro(tmp_path)
    logs = tmp_path / "agent-log"  # a folder of its own: the sandbox may show it writable
    logs.mkdir()
    kiro.home.mkdir()
    kiro.log = logs / "fake-kiro.log"
    kiro.env["FAKE_AGENT_LOG"] = str(kiro.log)
    monkeypatch.setenv("FAKE_AGENT_LOG", str(kiro.log))
    monkeypatch.setenv("FAKE_KIRO_HOME", str(kiro.home))
    sandbox = make_sandbox(
        SandboxSettings(
            AGENT_SANDBOX="bwrap",
            AGENT_NETWORK="none",
            AGENT_SANDBOX_WRITABLE=f"{kiro.home}:{logs}",
        ),
        hidden=[tmp_path / "clone", tmp_path / "worktrees"],
    )
    ws = workspace(tmp_path)
    # given: the task's headless run, sandboxed, in the task's folder (removed once it succeeded)
    ran = ws.checkout("feature/one", "task-T-1")
    agent = make_agent(
        AgentSettings(agent="kiro", command=f"{FAKE_AGENT_CLI} chat --no-interactive --trust-all-tools"),
        sandbox,
    )
    result = agent.run("Task: the task's own run", ran.path, timeout=30)
    assert result.ok, result.error
    ws.remove(ran.path)
    # when: its Refine session opens
    with (
        running_gateway(moto_endpoint, table) as gw,
        running_runner(
            gw, lambda: session_manager(tmp_path, kiro.argv_for, kiro.env, ws=ws, sandbox=sandbox)
        ),
    ):

        async def scenario() -> None:
            task = await Browser.connect(gw.ws_url, browser_token(task="T-1"))
            await task.open(task_id="T-1", timeout=20)
            # then
            await task.wait_text(
                f"Resumed the previous conversation in {ran.path.resolve()} (2 messages)", 10
            )
            await task.close()

        asyncio.run(scenario())
    assert [e["mode"] for e in kiro.events("start")] == ["headless", "interactive"]


def test_the_agent_cannot_make_namespaces_of_its_own(layout: dict[str, Path]) -> None:
    """Inside, `unshare --user` fails (bubblewrap's --disable-userns): no namespaced capabilities
    for the agent to work with. Outside, the same command works (the control)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare here")
    assert subprocess.run(["unshare", "--user", "true"], capture_output=True).returncode == 0
    with sandbox_for(layout).run(["unshare", "--user", "true"], layout["own"], dict(os.environ)) as boxed:
        done = subprocess.run(boxed.argv, env=boxed.env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0, done.stdout
