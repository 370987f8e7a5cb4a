"""Every git command the runner runs, with a configuration nothing in the repository can change.

An agent works in a worktree of the runner's clone, so it can write the clone's git directory:
its ``config`` (shared by every worktree), hooks, ``info/attributes``, a worktree's
``config.worktree``, even the ``.git`` file that says where the git directory is. Git would then
run what it planted (an fsmonitor, a hook, a filter, an ssh command, a credential helper) inside
the runner's own later commands, with the runner's secrets. :class:`SafeGit` closes that in layers:

1. **Environment.** Git gets a fresh environment, not the runner's: no AWS keys, no runner or token
   secret, nothing but what git and ssh need. System and global config are off
   (``GIT_CONFIG_NOSYSTEM``, ``GIT_CONFIG_GLOBAL=/dev/null``); the editor, pager, askpass, ssh and
   git:// proxy commands and the identity are set by variables, which win over any config file.
2. **Command-line overrides** (``-c``, which win over the repository's config) for every other key
   that names a program and can be overridden: fsmonitor, hooks path, credential helpers, signing,
   alternate refs, and only the one transport the configured remote needs.
3. **A git directory of its own.** The runner's commands read their config from a private git
   directory beside the clone (``.<clone>.runner-git``: the runner's ``config``, an empty
   ``info/``, no hooks, the objects, refs and worktree admin folders shared by symlink), through
   ``GIT_DIR`` / ``GIT_COMMON_DIR`` / ``GIT_WORK_TREE`` the runner works out itself, never what a
   worktree's ``.git`` file says. What ``-c`` cannot switch off (filter, textconv and merge drivers
   named by attributes, ``include.path``, ``url.*.insteadOf``, ``remote.*.pushurl``,
   ``info/attributes``, ``extensions.worktreeConfig``) is therefore never read, even when an agent
   writes it while a runner command starts (another slot's agent is running meanwhile).
4. **Restore.** Before each command the clone's own ``config`` is put back to the runner's (made
   from the configured remote), and ``config.worktree`` files, ``info/attributes``,
   ``objects/info/alternates`` and hooks the runner never writes are removed, with a warning that
   names the worktree: the agent's next git, and a person's in the clone, find it clean too.

Fetches and pushes name the configured URL, never ``origin``. What this does not stop without the
agent sandbox: an agent that deliberately writes the runner's own files outside the repository (its
private git directory, its code); the sandbox hides them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

import git

from ec2_runner.reaping import run_to_end

logger = logging.getLogger(__name__)

# what git (and the ssh it starts) may see of the runner's environment: nothing secret
_ENV_PASSTHROUGH = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "TMPDIR",
    "TZ",
    "SSH_AUTH_SOCK",  # an operator's ssh-agent for an ssh remote
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "all_proxy",
    "GIT_SSL_CAINFO",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)
# the only keys of a clone's config the runner keeps: what git wrote to describe the repository
_KEPT_KEYS = (
    "core.repositoryformatversion",
    "core.filemode",
    "core.bare",
    "core.logallrefupdates",
    "core.symlinks",
    "core.ignorecase",
    "core.precomposeunicode",
    "extensions.objectformat",
    "extensions.refstorage",
)
# files in the git directory the runner never writes, and git would read
_FOREIGN_FILES = ("info/attributes", "objects/info/alternates", "config.worktree")
# what the runner's private git directory shares with the clone's (symlinks): its objects and refs
_SHARED = ("objects", "refs", "logs", "worktrees", "packed-refs", "shallow")
_SHARED_DIRS = ("objects", "refs", "logs", "worktrees")


class GitTimeoutError(git.GitCommandError):
    """A git command was killed at the end of the time it was given."""


def transports(url: str) -> list[str]:
    """The git transports (``protocol.<name>.allow``) a remote URL needs: no other is allowed, so
    no rewritten URL can reach for ``ext::``, a remote helper or another scheme."""
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)::", url)
    if m:  # <transport>::<address>: a remote helper the operator chose (git-remote-codecommit, ...)
        return [m.group(1)]
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if m:
        scheme = m.group(1).lower()
        if scheme in ("http", "https"):
            return ["http", "https"]  # a redirect from one to the other
        return ["ssh"] if scheme in ("ssh", "git+ssh", "ssh+git") else [scheme]
    if re.match(r"^[^/]+:", url) and not Path(url).exists():
        return ["ssh"]  # scp-like user@host:path
    return ["file"]


def _quote(value: str) -> str:
    if any(c in value for c in "\n\r\0"):
        raise ValueError(f"a git setting cannot hold a line break: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t") + '"'


class SafeGit:
    """Runs git for one clone (at ``common_dir``) with the runner's configuration only.

    The runner's commands read their config from ``private_dir``, a git directory of the runner's
    own beside the clone: its ``config`` and ``info/`` are the runner's, and everything else
    (objects, refs, reflogs, the worktrees' admin folders) is a symlink to the clone's, so both see
    the same repository. Git's own ``GIT_COMMON_DIR`` points the runner's commands there, while the
    agent's git keeps using the clone's git directory: a config, ``info/attributes`` or hook an
    agent writes there, even while the runner's command starts, is never read by it. (Git rewrites
    ``packed-refs`` only when it deletes a packed ref or packs refs; the runner does neither.)"""

    def __init__(
        self,
        common_dir: Path,
        remote: str,
        private_dir: Path,
        *,
        author: tuple[str, str],
        credential_helper: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.common_dir = Path(common_dir)
        self.private_dir = Path(private_dir)
        self.remote = remote
        self.credential_helper = credential_helper
        self._env = self._environment(os.environ if environ is None else environ, author)
        self._config: bytes | None = None  # the config the runner writes (its own and the clone's)
        self._restore_lock = threading.Lock()
        self._admin_dirs: dict[Path, Path] = {}  # worktree -> its admin dir, learnt when it was made

    # -- what git runs with ------------------------------------------------------------------
    @staticmethod
    def _environment(environ: Mapping[str, str], author: tuple[str, str]) -> dict[str, str]:
        env = {k: environ[k] for k in _ENV_PASSTHROUGH if k in environ}
        env.setdefault("PATH", os.defpath)
        if environ.get("GIT_SSH_COMMAND"):  # the operator's ssh (a deploy key, known hosts)
            ssh = environ["GIT_SSH_COMMAND"]
        elif environ.get("GIT_SSH"):
            ssh = shlex.quote(environ["GIT_SSH"])
        else:
            ssh = "ssh"
        env.update(
            {
                "LC_ALL": "C",  # git's messages in English: the runner reads some of them
                "LANGUAGE": "C",
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": os.devnull,
                "GIT_ATTR_NOSYSTEM": "1",
                "GIT_TERMINAL_PROMPT": "0",
                "GIT_NO_REPLACE_OBJECTS": "1",
                # each of these wins over the config key of the same job; empty means "none"
                "GIT_SSH_COMMAND": ssh,
                "GIT_ASKPASS": "",
                "GIT_PROXY_COMMAND": "",
                "GIT_EDITOR": "true",
                "GIT_SEQUENCE_EDITOR": "true",
                "GIT_PAGER": "cat",
                "PAGER": "cat",
                "GIT_AUTHOR_NAME": author[0],
                "GIT_AUTHOR_EMAIL": author[1],
                "GIT_COMMITTER_NAME": author[0],
                "GIT_COMMITTER_EMAIL": author[1],
            }
        )
        return env

    def overrides(self) -> list[str]:
        """The ``-c`` options every command gets (git passes them on to the git processes it starts)."""
        settings = [
            ("core.fsmonitor", "false"),
            ("core.hooksPath", os.devnull),
            ("core.alternateRefsCommand", "true"),
            ("credential.helper", ""),  # empty: forget every helper named before
            *([("credential.helper", self.credential_helper)] if self.credential_helper else []),
            ("commit.gpgSign", "false"),
            ("tag.gpgSign", "false"),
            ("push.gpgSign", "false"),
            ("log.showSignature", "false"),
            ("gpg.program", "false"),
            ("gpg.ssh.program", "false"),
            ("gpg.x509.program", "false"),
            ("submodule.recurse", "false"),
            ("fetch.recurseSubmodules", "false"),
            ("push.recurseSubmodules", "no"),
            ("gc.auto", "0"),
            ("maintenance.auto", "false"),
            ("http.sslVerify", "true"),
            ("protocol.allow", "never"),
            *((f"protocol.{name}.allow", "always") for name in transports(self.remote)),
        ]
        out: list[str] = []
        for key, value in settings:
            out += ["-c", f"{key}={value}"]
        return out

    # -- the clone's own files ---------------------------------------------------------------
    def own_config(self) -> None:
        """Make the clone's config the runner's: the keys git wrote to describe the repository, kept
        as they are, and ``origin`` at the configured remote. Everything else (anything planted
        by an earlier run that died before a restore) goes."""
        path = self.common_dir / "config"
        kept: dict[str, str] = {}
        if path.is_file() and not path.is_symlink():
            out = self.run(["config", "--file", str(path), "--no-includes", "--null", "--list"], bare=True)
            for entry in out.split("\0"):
                key, _, value = entry.partition("\n")
                if key.lower() in _KEPT_KEYS:
                    kept[key.lower()] = value
        kept.setdefault("core.repositoryformatversion", "0")
        kept.setdefault("core.bare", "false")
        sections: dict[str, list[str]] = {}
        for key in _KEPT_KEYS:
            if key in kept:
                section, name = key.split(".")
                sections.setdefault(f"[{section}]", []).append(f"\t{name} = {_quote(kept[key])}")
        sections['[remote "origin"]'] = [
            f"\turl = {_quote(self.remote)}",
            f"\tfetch = {_quote('+refs/heads/*:refs/remotes/origin/*')}",
        ]
        text = "".join(
            f"{head}\n" + "".join(f"{line}\n" for line in lines) for head, lines in sections.items()
        )
        self._config = text.encode()
        with self._restore_lock:
            self._write_config(self.common_dir)
            self._make_private_dir()
        self.restore(quiet=True)

    def _make_private_dir(self) -> None:
        """The runner's own git directory: its config and an empty ``info/``, the rest shared."""
        private = self.private_dir
        private.mkdir(parents=True, exist_ok=True)
        for name in _SHARED_DIRS:
            (self.common_dir / name).mkdir(exist_ok=True)  # a symlink to nothing cannot be written into
        self._link_shared()
        head = self.common_dir / "HEAD"
        text = head.read_text() if head.is_file() and not head.is_symlink() else ""
        if not re.fullmatch(r"ref: refs/heads/[^\s]+\n?", text):
            text = "ref: refs/heads/main\n"
        (private / "HEAD").write_text(text)
        self._write_config(private)

    def _link_shared(self) -> list[str]:
        fixed = []
        for name in _SHARED:
            link, target = self.private_dir / name, str(self.common_dir / name)
            with contextlib.suppress(OSError):
                if os.readlink(link) == target:
                    continue
            if name in ("packed-refs", "shallow") and link.is_file() and not link.is_symlink():
                os.replace(link, target)  # git rewrote the file in place of the link: it is the newest
            tmp = self.private_dir / f".{name}.{os.getpid()}.{threading.get_ident()}"
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.symlink(target, tmp)
            if link.is_dir() and not link.is_symlink():
                shutil.rmtree(link, ignore_errors=True)
            os.replace(tmp, link)  # atomic: another runner process sharing the clone may do the same
            fixed.append(f"{self.private_dir.name}/{name}")
        return fixed

    def _write_config(self, git_dir: Path) -> None:
        assert self._config is not None
        fd, tmp = tempfile.mkstemp(dir=git_dir, prefix=".config-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self._config)
            os.replace(tmp, git_dir / "config")  # replaces a symlink, never writes through it
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _config_is_ours(self, git_dir: Path) -> bool:
        config = git_dir / "config"
        try:
            return not config.is_symlink() and config.read_bytes() == self._config
        except OSError:
            return False

    def restore(self, where: str | None = None, *, quiet: bool = False) -> list[str]:
        """Put the clone's git directory back as the runner keeps it; what had to be fixed. Cheap
        when nothing changed (one read and a few directory listings)."""
        if self._config is None:
            return []
        fixed: list[str] = []
        with self._restore_lock:
            # the runner's own git directory first (what its commands read)
            if not self._config_is_ours(self.private_dir):
                self._write_config(self.private_dir)
                fixed.append(f"{self.private_dir.name}/config")
            for name in ("info", "hooks"):
                p = self.private_dir / name
                if p.is_symlink() or (p.exists() and (not p.is_dir() or any(p.iterdir()))):
                    _remove(p)
                    fixed.append(f"{self.private_dir.name}/{name}")
            fixed += self._link_shared()
            # then the clone's (what the agent's git reads, and a person's in the clone)
            if not self._config_is_ours(self.common_dir):
                self._write_config(self.common_dir)
                fixed.append("config")
            # nothing is followed out of the git directory: a symlink planted in place of a folder
            # is removed itself, never what it points at
            admin_dirs = [self.common_dir]
            worktrees = self.common_dir / "worktrees"
            if worktrees.is_symlink():
                _remove(worktrees)
                fixed.append("worktrees")
            with contextlib.suppress(OSError):
                admin_dirs += [p for p in worktrees.iterdir() if p.is_dir() and not p.is_symlink()]
            for base in admin_dirs:
                for rel in _FOREIGN_FILES:
                    p = base / rel
                    link = _under_symlink(base, p)
                    if link is not None:
                        _remove(link)
                        fixed.append(str(link.relative_to(self.common_dir)))
                    elif p.exists() or p.is_symlink():
                        _remove(p)
                        fixed.append(str(p.relative_to(self.common_dir)))
            hooks = self.common_dir / "hooks"
            if hooks.is_symlink() or (hooks.exists() and not hooks.is_dir()):
                _remove(hooks)
                fixed.append("hooks")
            with contextlib.suppress(OSError):
                for p in hooks.iterdir():
                    if not p.name.endswith(".sample"):  # git's templates are the only hooks it had
                        _remove(p)
                        fixed.append(f"hooks/{p.name}")
        if fixed and not quiet:
            logger.warning(
                "the clone's git directory was changed by something other than the runner (an agent's "
                "planted git settings?); restored %s before running git%s",
                ", ".join(sorted(set(fixed))),
                f" in {where}" if where else "",
            )
        return fixed

    # -- worktrees ---------------------------------------------------------------------------
    def learn_worktree(self, path: Path) -> None:
        """Note a worktree the runner has just made (before any agent ran in it), and point its
        ``.git`` file at the clone's git directory (git wrote the runner's private one there)."""
        admin = self._find_admin_dir(Path(path))
        self._admin_dirs[Path(path)] = admin
        (Path(path) / ".git").write_text(f"gitdir: {os.path.realpath(admin)}\n")

    def forget_worktree(self, path: Path) -> None:
        self._admin_dirs.pop(Path(path), None)

    def admin_dir(self, path: Path) -> Path:
        """The clone's admin directory of a worktree (``<common>/worktrees/<id>``): the one noted when
        the runner made it, else the registered one whose ``gitdir`` is this folder (never what the
        folder's own ``.git`` file says). NotAWorktreeError when there is none."""
        path = Path(path)
        known = self._admin_dirs.get(path)
        if known is not None and known.is_dir() and not known.is_symlink():
            return known
        return self._find_admin_dir(path)

    def _find_admin_dir(self, path: Path) -> Path:
        want = os.path.realpath(path / ".git")
        root = self.common_dir / "worktrees"
        candidates = [root / path.name]
        with contextlib.suppress(OSError):
            candidates += sorted(p for p in root.iterdir() if p.name != path.name)
        for admin in candidates:
            try:
                if admin.is_symlink() or not admin.is_dir():
                    continue
                if os.path.realpath((admin / "gitdir").read_text().strip()) == want:
                    return admin
            except OSError:
                continue
        raise NotAWorktreeError(f"{path} is not a git repository of this runner (no worktree of its clone)")

    # -- running -----------------------------------------------------------------------------
    def run(
        self,
        args: list[str],
        *,
        worktree: Path | None = None,
        bare: bool = False,
        timeout: float | None = None,
        strip: bool = True,
    ) -> str:
        """``git <args>`` in the clone (or in ``worktree``); its stdout. GitCommandError when it
        fails, GitTimeoutError when it was killed at ``timeout``. ``bare``: outside any repository
        (``git config --file``, ``git clone``)."""
        code, out, err = self.run_full(args, worktree=worktree, bare=bare, timeout=timeout)
        if code != 0:
            raise git.GitCommandError(["git", *args], code, err, out)
        if strip:
            return out[:-1] if out.endswith("\n") else out
        return out

    def run_full(
        self,
        args: list[str],
        *,
        worktree: Path | None = None,
        bare: bool = False,
        timeout: float | None = None,
    ) -> tuple[int, str, str]:
        """``(exit code, stdout, stderr)`` of ``git <args>``, for a command that may fail (a report).
        GitTimeoutError when it was killed at ``timeout``; NotAWorktreeError for a folder that is
        none of the clone's worktrees."""
        env = dict(self._env)
        if bare:
            cwd = os.sep  # absolute paths only: no repository is found from here
        elif worktree is None:
            self.restore()
            # both: git passes GIT_COMMON_DIR on to the git it starts (worktree add's checkout)
            env.update(GIT_DIR=str(self.private_dir), GIT_COMMON_DIR=str(self.private_dir))
            cwd = str(self.common_dir)
        else:
            admin = self.admin_dir(worktree)
            self.restore(str(worktree))
            env.update(GIT_DIR=str(admin), GIT_COMMON_DIR=str(self.private_dir), GIT_WORK_TREE=str(worktree))
            cwd = str(worktree)
        argv = ["git", *self.overrides(), *args]
        try:  # a timeout kills git and everything it started (ssh, helpers)
            done = run_to_end(argv, cwd=cwd, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise GitTimeoutError(["git", *args], -signal.SIGKILL, f"killed after {timeout:g} s") from None
        return done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace")


class NotAWorktreeError(Exception):
    """A folder the runner was asked to run git in is none of its clone's worktrees."""


def _under_symlink(base: Path, p: Path) -> Path | None:
    """The first folder between ``base`` and ``p`` (``p``'s parents, not ``p``) that is a symlink."""
    for parent in reversed(p.relative_to(base).parents):
        if parent != Path(".") and (base / parent).is_symlink():
            return base / parent
    return None


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
