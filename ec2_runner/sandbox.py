"""The agent's sandbox: every agent process (headless or a Refine terminal's) runs in bubblewrap.

The agent runs model output with trusted tools, so it is treated as hostile. Inside its sandbox:

- writable: the task's own worktree and a private temporary directory (``/tmp`` and the agent's
  ``$HOME``, both emptied when the run ends), plus any writable extras the operator configures
  (the agent CLI's own login or state directory);
- read-only: the system directories the CLI needs (``/usr``, ``/etc`` minus the runner's
  configuration and the host's credential files, the ``/bin`` and ``/lib`` links), the Python
  prefix when the command is a Python program, the command's own directory, configured extras;
- invisible: everything else: other worktrees, the runner's clone and state, ``/etc/aipm``, the
  runner user's home, ``/proc`` of every process outside (a pid namespace with its own ``/proc``);
- network (``AGENT_NETWORK``): ``proxy`` (default) is a network namespace whose only way out is the
  runner's allow-list proxy (:mod:`ec2_runner.egress`), which never connects to link-local or
  metadata addresses; ``none`` is a network namespace with loopback only; ``host`` shares the
  runner's network (then block 169.254.169.254 for the agent some other way).

A committed symlink cannot lead a write out of the worktree: its target, seen from inside, is
either not mounted, read-only, or in the private temporary directory.

Killing the sandbox kills everything in it: bubblewrap runs with ``--die-with-parent`` and, as the
pid namespace's first process, takes every process of the namespace with it when it ends.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

logger = logging.getLogger(__name__)

# read-only system directories (a symlink, as /bin on a merged-/usr system, is recreated as one)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
# inside /etc: the runner's own configuration and files only root should read (the agent's uid is
# the runner's outside, so a root runner's agent would otherwise read them)
MASKED = (
    "/etc/aipm",
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssh",
    "/etc/security/opasswd",
)
# DNS when the agent shares the host's network and /etc/resolv.conf points at a resolver in /run
HOST_NETWORK_RUN = ("/run/systemd/resolve", "/run/resolvconf", "/run/NetworkManager")
PROXY_SOCKET = "/run/aipm/egress.sock"  # where the egress proxy's socket appears inside
SELF_CHECK_TIMEOUT = 20.0
_HOST_PORT = re.compile(r"^(\*\.)?[A-Za-z0-9.-]+:\d{1,5}$|^\[[0-9A-Fa-f:.]+\]:\d{1,5}$")


class SandboxUnavailable(Exception):
    """The configured sandbox cannot run here; the message says what to do (install, or turn it off)."""


class SandboxSettings(BaseSettings):
    """How agents are sandboxed: read from the environment once, at start-up."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    mode: Literal["bwrap", "off"] = Field(default="bwrap", validation_alias="AGENT_SANDBOX")
    network: Literal["proxy", "none", "host"] = Field(default="proxy", validation_alias="AGENT_NETWORK")
    # host:port the proxy lets the agent reach (the model API); `*.example.com:443` for a suffix
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="AGENT_ALLOWED_HOSTS"
    )
    # extra paths the agent sees read-only / writable at their own path (the CLI's login dir)
    read_only: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, validation_alias="AGENT_SANDBOX_READ_ONLY"
    )
    writable: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, validation_alias="AGENT_SANDBOX_WRITABLE"
    )
    # the agent's uid and gid inside its user namespace (nobody by default)
    uid: int = Field(default=65534, ge=0, validation_alias="AGENT_SANDBOX_UID")
    gid: int = Field(default=65534, ge=0, validation_alias="AGENT_SANDBOX_GID")
    bwrap: str = Field(default="bwrap", validation_alias="AGENT_SANDBOX_BWRAP")
    proxy_port: int = Field(default=3128, ge=1, le=65535, validation_alias="AGENT_PROXY_PORT")

    @field_validator("mode", "network", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, v: object) -> object:
        if isinstance(v, str):
            v = [h for h in re.split(r"[,\s]+", v) if h]
        if isinstance(v, list):
            for host in v:
                if not isinstance(host, str) or not _HOST_PORT.match(host):
                    raise ValueError(f"{host!r} is not host:port (e.g. api.example.com:443)")
        return v

    @field_validator("read_only", "writable", mode="before")
    @classmethod
    def _paths(cls, v: object) -> object:
        if isinstance(v, str):
            v = [p for p in v.split(os.pathsep) if p.strip()]
        if isinstance(v, list):
            for p in v:
                if not Path(p).is_absolute():
                    raise ValueError(f"{p!r} is not an absolute path")
        return v


@dataclass
class Sandboxed:
    """One command made ready to run in the sandbox: spawn ``argv`` with ``env``, then ``close()``
    (which removes its private temporary directory) once it has ended."""

    argv: list[str]
    env: dict[str, str]
    private: Path | None = None
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.private is not None:
            _rmtree(self.private)


class Sandbox:
    """Turns an agent command, its worktree and its environment into a sandboxed command.

    ``hidden``: paths of the runner's own (its clone, worktrees and state) kept invisible even when
    they lie below a directory the sandbox shows. ``start()`` checks the sandbox and starts the
    egress proxy the sandboxes of ``AGENT_NETWORK=proxy`` reach the model API through (its socket
    in a folder made in ``state_dir``, default the temporary folder); ``close()`` stops it."""

    def __init__(
        self,
        settings: SandboxSettings,
        *,
        hidden: Sequence[Path] = (),
        state_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.hidden = [Path(os.path.realpath(p)) for p in hidden]
        self._state_dir = state_dir
        self._user_ns = True
        self._proxy: Any = None
        self._proxy_socket: Path | None = None
        self._bridge: Any = None
        self._network = settings.network
        self._exe = settings.bwrap
        self._disable_userns = False

    @property
    def enabled(self) -> bool:
        return self.settings.mode == "bwrap"

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Sandbox:
        """Check that the sandbox works here (once) and start the egress proxy it needs; raises
        :class:`SandboxUnavailable` with what to do when it cannot run."""
        if not self.enabled:
            logger.warning(
                "AGENT_SANDBOX=off: agents run unsandboxed, with the runner's view of its files, "
                "processes and network"
            )
            return self
        exe = shutil.which(self.settings.bwrap)
        if exe is None:
            raise SandboxUnavailable(
                f"AGENT_SANDBOX=bwrap but {self.settings.bwrap!r} is not installed: install bubblewrap "
                "(apt-get install bubblewrap, or dnf install bubblewrap), or set AGENT_SANDBOX=off to run "
                "agents unsandboxed (they then see the runner's files, other tasks' worktrees, other "
                "processes and the network, the instance metadata service included)"
            )
        self._exe = exe
        # bubblewrap 0.8+: the agent cannot make user namespaces of its own (and a kernel's worth of
        # namespaced capabilities with them)
        self._disable_userns = "--disable-userns" in _help(exe)
        try:
            if self._network == "proxy":
                self._start_proxy()
            self._self_check()
        except BaseException:
            self.close()
            raise
        logger.info(
            "agents run in bubblewrap (network %s%s, uid %s)",
            self._network,
            f", allowed {','.join(self.settings.allowed_hosts)}" if self._network == "proxy" else "",
            self.settings.uid if self._user_ns else "the runner's",
        )
        return self

    def close(self) -> None:
        proxy, self._proxy = self._proxy, None
        if proxy is not None:
            with contextlib.suppress(Exception):
                proxy.close()
        if self._proxy_socket is not None:
            _rmtree(self._proxy_socket.parent)
            self._proxy_socket = None

    def _start_proxy(self) -> None:
        try:
            egress = importlib.import_module("ec2_runner.egress")
        except ImportError:
            # stricter than asked, never looser: no proxy means no network at all
            logger.warning(
                "AGENT_NETWORK=proxy but this runner has no egress proxy (ec2_runner.egress): "
                "agents get no network at all, as with AGENT_NETWORK=none"
            )
            self._network = "none"
            return
        if not self.settings.allowed_hosts:
            logger.warning(
                "AGENT_NETWORK=proxy with no AGENT_ALLOWED_HOSTS: agents reach no host at all; list "
                "the agent's model API (host:port) there"
            )
        base = self._state_dir or Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="aipm-egress-", dir=base))
        self._proxy_socket = folder / "egress.sock"
        self._proxy = egress.EgressProxy(list(self.settings.allowed_hosts), self._proxy_socket)
        self._proxy.start()
        self._bridge = egress

    def _self_check(self) -> None:
        """Run ``true`` in a sandbox built as an agent's is: with a user namespace, or (where the
        host allows none) without one."""
        with tempfile.TemporaryDirectory(prefix="aipm-sandbox-check-") as wt:
            env = {"PATH": os.environ.get("PATH", os.defpath)}
            tried: list[str] = []
            for user_ns in (True, False):
                self._user_ns = user_ns
                sandboxed = self.wrap(["true"], Path(wt), env)
                try:
                    done = subprocess.run(
                        sandboxed.argv,
                        env=sandboxed.env,
                        capture_output=True,
                        text=True,
                        timeout=SELF_CHECK_TIMEOUT,
                    )
                except (OSError, subprocess.TimeoutExpired) as e:
                    tried.append(str(e))
                    continue
                finally:
                    sandboxed.close()
                if done.returncode == 0:
                    if not user_ns:
                        logger.warning(
                            "bubblewrap cannot make a user namespace here (%s); agents run sandboxed "
                            "under the runner's own uid",
                            " ".join(tried[-1:]) or "refused",
                        )
                    return
                tried.append((done.stderr or done.stdout).strip()[:300] or f"exit {done.returncode}")
        raise SandboxUnavailable(
            f"AGENT_SANDBOX=bwrap but bubblewrap failed its self-check ({'; '.join(tried)}): check that "
            "this host allows bubblewrap (user namespaces, or a setuid bwrap), or set AGENT_SANDBOX=off to "
            "run agents unsandboxed (they then see the runner's files, other tasks' worktrees, other "
            "processes and the network, the instance metadata service included)"
        )

    # -- one command ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def run(self, argv: list[str], worktree: Path, env: dict[str, str]) -> Iterator[Sandboxed]:
        """``wrap`` as a context: the private directory goes when the block ends."""
        sandboxed = self.wrap(argv, worktree, env)
        try:
            yield sandboxed
        finally:
            sandboxed.close()

    def wrap(self, argv: list[str], worktree: Path, env: dict[str, str]) -> Sandboxed:
        """The command and environment that run ``argv`` in ``worktree`` inside the sandbox (the
        command itself when the sandbox is off). Call ``close()`` on the result once it ended."""
        if not self.enabled:
            return Sandboxed(list(argv), dict(env))
        worktree = Path(os.path.realpath(worktree))
        private = Path(tempfile.mkdtemp(prefix="aipm-agent-"))
        try:
            (private / "tmp").mkdir()
            (private / "home").mkdir()
            inner_env = dict(env)
            home = env.get("HOME") or ""
            home_ok = bool(home) and Path(home).is_absolute() and not _is_system(Path(home))
            inner_env["HOME"] = home if home_ok else "/tmp"
            inner_env["TMPDIR"] = "/tmp"
            for name in ("TMP", "TEMP"):
                inner_env.pop(name, None)
            args = [self._exe]
            args += self._namespaces()
            args += ["--proc", "/proc", "--dev", "/dev"]
            args += _system_binds()
            if self._network == "host":
                for d in HOST_NETWORK_RUN:
                    args += ["--ro-bind-try", d, d]
            # the private folder first: what is shown below may lie in $HOME (a Python under ~/.pyenv)
            args += ["--bind", str(private / "tmp"), "/tmp"]
            shown: list[Path] = [*(Path(d) for d in SYSTEM_DIRS), Path("/tmp")]
            if home_ok:
                args += ["--bind", str(private / "home"), home]
                shown.append(Path(home))
            for ro in self._program_paths(argv, env):
                args += ["--ro-bind", str(ro), str(ro)]
                shown.append(ro)
            for ro in self.settings.read_only:
                args += ["--ro-bind-try", str(ro), str(ro)]
                shown.append(Path(ro))
            for rw in self.settings.writable:
                args += ["--bind-try", str(rw), str(rw)]
                shown.append(Path(rw))
            if self._proxy_socket is not None and self._network == "proxy":
                args += ["--bind", str(self._proxy_socket), PROXY_SOCKET]
            # the runner's own folders: an empty read-only tmpfs wherever one would show (below a
            # folder shown above, or on the way down to the worktree), parents first
            above: list[Path] = []
            covered: list[Path] = []
            for hide in sorted(set(self.hidden), key=lambda p: len(p.parts)):
                if _within(worktree, hide):
                    args += ["--tmpfs", str(hide)]
                    above.append(hide)
                elif any(_within(hide, c) for c in (*covered, *above)):
                    continue  # inside an empty tmpfs made above: not there at all
                elif hide.is_dir() and any(_within(hide, s) for s in shown):
                    args += ["--tmpfs", str(hide), "--remount-ro", str(hide)]
                    covered.append(hide)
            args += ["--bind", str(worktree), str(worktree), "--chdir", str(worktree)]
            for hide in reversed(above):  # read-only once the worktree's mount point is made in it
                args += ["--remount-ro", str(hide)]
            command = list(argv)
            if self._network == "proxy" and self._bridge is not None:
                port = self.settings.proxy_port
                command = self._bridge.bridge_argv(Path(PROXY_SOCKET), port, command)
                inner_env.update(self._bridge.proxy_env(port))
            args += ["--", *command]
        except BaseException:
            _rmtree(private)
            raise
        return Sandboxed(args, inner_env, private)

    def _namespaces(self) -> list[str]:
        args = ["--unshare-all", "--die-with-parent"]
        if self._network == "host":
            args.append("--share-net")
        if self._user_ns:
            args += ["--unshare-user", "--uid", str(self.settings.uid), "--gid", str(self.settings.gid)]
            if self._disable_userns:
                args.append("--disable-userns")
        return args

    def _program_paths(self, argv: list[str], env: dict[str, str]) -> list[Path]:
        """What the command needs to run, read-only: its own directory (and its script's, for an
        interpreter), and the Python prefixes when it is a Python program (or the proxy bridge,
        which is one)."""
        paths: list[Path] = []
        exe = argv[0] if os.sep in argv[0] else shutil.which(argv[0], path=env.get("PATH")) or argv[0]
        bridge = self._network == "proxy" and self._bridge is not None
        python = bridge
        for candidate in [exe, *argv[1:2]]:  # the command, and the script an interpreter runs
            if not os.path.isabs(candidate) or not os.path.isfile(candidate):
                continue
            real = Path(os.path.realpath(candidate))
            paths += [Path(os.path.abspath(candidate)).parent, real.parent]
            python = python or real.name.startswith("python") or _python_shebang(real)
        if python:
            paths += [Path(os.path.realpath(p)) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix}]
        if bridge:
            paths.append(Path(self._bridge.__file__).resolve().parent)  # the bridge is a file there
        kept: list[Path] = []
        for p in paths:
            hidden = any(_within(p, h) for h in self.hidden)
            if p.is_dir() and not _is_system(p) and p not in kept and not hidden:
                kept.append(p)
        return kept


def make_sandbox(
    settings: SandboxSettings, *, hidden: Sequence[Path] = (), state_dir: Path | None = None
) -> Sandbox:
    """The runner's sandbox, checked and started: raises :class:`SandboxUnavailable` when the
    configured sandbox cannot run here."""
    return Sandbox(settings, hidden=hidden, state_dir=state_dir).start()


def _system_binds() -> list[str]:
    args: list[str] = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for m in MASKED:
        if os.path.islink(m) or not os.path.exists(m):
            continue
        if os.path.isdir(m):
            args += ["--tmpfs", m, "--remount-ro", m]
        else:
            args += ["--ro-bind", "/dev/null", m]
    return args


def _help(exe: str) -> str:
    try:
        done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=SELF_CHECK_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr


def _is_system(p: Path) -> bool:
    return str(p) == "/" or any(_within(p, Path(d)) for d in SYSTEM_DIRS)


def _within(p: Path, parent: Path) -> bool:
    return p == parent or parent in p.parents


def _python_shebang(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            first = f.readline(200)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


def _rmtree(path: Path) -> None:
    """Remove a directory the agent may have left unwritable (chmod 000) parts in."""

    for root, dirs, _ in os.walk(path):
        for d in dirs:
            p = os.path.join(root, d)
            if not os.path.islink(p):
                with contextlib.suppress(OSError):
                    os.chmod(p, stat.S_IRWXU)
    shutil.rmtree(path, ignore_errors=True)
