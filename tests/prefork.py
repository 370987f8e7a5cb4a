"""The ``aipm`` and ``aws`` command lines as processes of their own, forked from one interpreter that
has imported them already.

A test that runs ``python -m ec2_runner.cli ...`` or the venv's ``aws`` pays an interpreter's start
and its imports (boto3, botocore's models, rich, pydantic: ~0.7 CPU-s each, ~1 s for the aws CLI)
for a command that itself takes a few milliseconds; on two cores a few hundred such processes are
a large part of the suite. Here one *zygote* per test process imports both once; each command is a
fork of it, in its own process with its own pid, folder, environment, argv and standard streams,
run through the same ``main`` its console script calls, ending with that ``main``'s exit code. What
a fork does not repeat is the interpreter's start and the imports, which ``tests/integration/
test_packaging.py`` covers through the installed console scripts.

The zygote is single-threaded (a fork of a threaded process could inherit a held lock); it forks on
each request, sends the child's pid at once and its exit code when it ends, and exits with its
parent (its stdin is the parent's pipe).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import setproctitle

ROOT = Path(__file__).resolve().parents[1]
# imported once in the zygote: everything the two command lines import before they act
PRELOAD = (
    "ec2_runner.cli",
    "ec2_runner.console",
    "ec2_runner.commands.context",
    "ec2_runner.commands.aws_errors",
    "ec2_runner.commands.submit",
    "ec2_runner.commands.tasks",
    "ec2_runner.commands.rows",
    "ec2_runner.commands.dlq",
    "ec2_runner.commands.runners",
    "ec2_runner.commands.logs",
    "ec2_runner.commands.doctor",
    "ec2_runner.doctor_checks",
    "shared.aws",
    "shared.store",
    "shared.dead_letters",
    "shared.tokens",
    "awscli.clidriver",
    # the runner (``python -m ec2_runner``) and what it imports as it starts
    "ec2_runner.main",
    "ec2_runner.daemon",
    "ec2_runner.pipeline",
    "ec2_runner.agents",
    "ec2_runner.kiro",
    "ec2_runner.claude_code",
    "ec2_runner.codex",
    "ec2_runner.gitops",
    "ec2_runner.safegit",
    "ec2_runner.sandbox",
    "ec2_runner.presence",
    "ec2_runner.terminal",
    "ec2_runner.ws_client",
    "ec2_runner.instance_notices",
    "ec2_runner.metrics",
)
KINDS = ("aipm", "aws", "runner")
_MAX_REQUEST = 1 << 20
# the command line each kind stands for
TITLES = {
    "aipm": [sys.executable, "-m", "ec2_runner.cli"],
    "aws": [str(Path(sys.executable).parent / "aws")],
    "runner": [sys.executable, "-m", "ec2_runner"],
}


# -- the zygote ------------------------------------------------------------------------------------
def _preload() -> None:
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    with contextlib.suppress(Exception):  # the aws CLI's own lazy imports: its plugins and handlers
        from awscli.clidriver import create_clidriver

        driver = create_clidriver()
        driver._get_command_table()
        driver._get_argument_table()
    import boto3  # botocore's data (the loader is shared): read once, here

    for service in ("dynamodb", "sqs", "secretsmanager", "cloudformation", "logs"):
        with contextlib.suppress(Exception):
            boto3.session.Session().get_available_regions(service)


def _run_command(kind: str) -> int:
    """What the console script does: ``sys.exit(main())``, with ``main`` reading ``sys.argv``."""
    if kind == "aipm":
        from ec2_runner.cli import main

        return _code(main())
    if kind == "runner":
        from ec2_runner.main import main as runner_main

        return _code(runner_main())
    import awscli
    from awscli.clidriver import main as aws_main

    importlib.reload(awscli)  # its import puts its data folder on AWS_DATA_PATH, in this environment

    return _code(aws_main())


def _code(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    print(value, file=sys.stderr)  # sys.exit("message"): printed, exit 1
    return 1


def _child(request: dict[str, Any], fds: list[int], close: list[int]) -> None:
    """In the fork: become the command, then end with its exit code (never returns)."""
    code = 1
    try:
        _die_with_parent()
        signal.set_wakeup_fd(-1)
        # the signal dispositions a Python process starts with (it ignores SIGPIPE and SIGXFSZ)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in close:
            os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        # its command line in /proc as the process it stands for would have it (hooks and tests find
        # a runner by its command line); before the environment changes, which it needs untouched
        setproctitle.setproctitle(request["title"])
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        try:
            code = _run_command(request["kind"])
        except SystemExit as e:
            code = _code(e.code)
        except KeyboardInterrupt:
            code = 130
        except BaseException:
            traceback.print_exc()
            code = 1
        with contextlib.suppress(Exception):
            atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code & 0xFF)


def _die_with_parent() -> None:
    """SIGKILL when the parent goes (Linux's PR_SET_PDEATHSIG): a runner or a command is never left
    behind by a test process that died, nor the zygote."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def serve(path: str) -> None:
    """The zygote's loop: one fork per request on ``path``'s socket, until stdin closes (then its
    children are killed)."""
    _die_with_parent()
    _preload()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(path)
    server.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, socket.socket] = {}
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        for key, _ in selector.select():
            if key.fileobj is sys.stdin:
                if not os.read(sys.stdin.fileno(), 4096):  # the test process is gone
                    for pid in children:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    return
            elif key.fileobj is server:
                conn, _ = server.accept()
                try:
                    message, fds, _, _ = socket.recv_fds(conn, _MAX_REQUEST, 3)
                    request = json.loads(message)
                except (OSError, ValueError):
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    _child(request, fds, [server.fileno(), conn.fileno(), wake_r, wake_w, sys.stdin.fileno()])
                for fd in fds:
                    os.close(fd)
                with contextlib.suppress(OSError):
                    conn.send(json.dumps({"pid": pid}).encode())
                children[pid] = conn
            else:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 4096):
                        pass
            _reap(children)


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.send(json.dumps({"code": os.waitstatus_to_exitcode(status)}).encode())
            conn.close()


# -- the test side ---------------------------------------------------------------------------------
class Zygote:
    """One zygote for this test process, started on first use."""

    _lock = threading.Lock()
    _proc: subprocess.Popen[bytes] | None = None
    _path = ""

    @classmethod
    def path(cls) -> str:
        with cls._lock:
            if cls._proc is None or cls._proc.poll() is not None:
                folder = tempfile.mkdtemp(prefix="aipm-zygote-")
                cls._path = os.path.join(folder, "socket")
                env = {
                    **os.environ,
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                }
                cls._proc = subprocess.Popen(
                    [sys.executable, "-m", "tests.prefork", cls._path],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    cwd=ROOT,
                    env=env,
                )
                assert cls._proc.stdout is not None
                ready = cls._proc.stdout.readline()
                if ready.strip() != b"ready":
                    raise RuntimeError("the CLI zygote did not start (tests/prefork.py)")
                atexit.register(cls._proc.kill)
            return cls._path


class Forked:
    """A process forked by the zygote, handled as a ``subprocess.Popen``: ``pid``, ``args``,
    ``returncode``, ``poll``, ``wait``, ``send_signal``, ``terminate`` and ``kill``. Its standard
    streams are the file descriptors given (stdin /dev/null, stdout and stderr this process's own,
    when None); ``returncode`` is negative for a signal, as Popen's."""

    def __init__(
        self,
        kind: str,
        args: list[str] | tuple[str, ...],
        *,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> None:
        assert kind in KINDS, kind
        self.args = [*TITLES[kind], *args]
        self.returncode: int | None = None
        self._ended = threading.Event()
        request = {
            "kind": kind,
            "argv": ["aipm" if kind == "aipm" else kind, *args],
            "title": " ".join([*TITLES[kind], *args]),
            "env": dict(os.environ if env is None else env),
            "cwd": str(cwd or os.getcwd()),
        }
        devnull = os.open(os.devnull, os.O_RDONLY) if stdin is None else -1
        fds = [
            devnull if stdin is None else stdin,
            1 if stdout is None else stdout,
            2 if stderr is None else stderr,
        ]
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._sock.connect(Zygote.path())
            socket.send_fds(self._sock, [json.dumps(request).encode()], fds)
        finally:
            if devnull >= 0:
                os.close(devnull)
        self.pid = int(json.loads(self._sock.recv(4096) or b'{"pid": 0}')["pid"])
        if not self.pid:
            raise RuntimeError("the zygote (tests/prefork.py) did not fork the command")
        threading.Thread(target=self._await_end, daemon=True).start()

    def _await_end(self) -> None:
        try:
            ended = self._sock.recv(4096)
            self.returncode = int(json.loads(ended)["code"]) if ended else -signal.SIGKILL
        finally:
            self._sock.close()
            self._ended.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def run(
    kind: str,
    args: list[str] | tuple[str, ...],
    *,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 60,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``aipm ARGS`` (kind ``aipm``) or ``aws ARGS`` (kind ``aws``) as ``subprocess.run`` with
    ``capture_output=True, text=True`` would give it: a process of its own, forked from the zygote.
    Its stdin is ``input``, else /dev/null (not a terminal)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    in_r, in_w = os.pipe() if input is not None else (None, -1)
    try:
        proc = Forked(kind, args, env=env, cwd=cwd, stdin=in_r, stdout=out_w, stderr=err_w)
    finally:
        for fd in (in_r, out_w, err_w):
            if fd is not None:
                os.close(fd)
    outputs = _collect(out_r, err_r, in_w, input)
    deadline = time.monotonic() + timeout
    try:
        for reader in outputs.threads:
            reader.join(max(deadline - time.monotonic(), 0))
        if any(t.is_alive() for t in outputs.threads):
            raise subprocess.TimeoutExpired(proc.args, timeout)
        code = proc.wait(max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return subprocess.CompletedProcess(proc.args, code, outputs.text(0), outputs.text(1))


class _Outputs:
    def __init__(self) -> None:
        self.data: list[list[bytes]] = [[], []]
        self.threads: list[threading.Thread] = []

    def text(self, index: int) -> str:
        text = b"".join(self.data[index]).decode("utf-8", "replace")
        return text.replace("\r\n", "\n").replace("\r", "\n")  # text=True's universal newlines


def _collect(out_r: int, err_r: int, in_w: int, input: str | None) -> _Outputs:
    outputs = _Outputs()

    def drain(fd: int, into: list[bytes]) -> None:
        with open(fd, "rb", closefd=True) as stream:
            while chunk := stream.read1(65536):
                into.append(chunk)

    def feed() -> None:
        with open(in_w, "wb", closefd=True) as stream, contextlib.suppress(BrokenPipeError):
            stream.write((input or "").encode())

    for fd, into in ((out_r, outputs.data[0]), (err_r, outputs.data[1])):
        outputs.threads.append(threading.Thread(target=drain, args=(fd, into), daemon=True))
    if in_w >= 0:
        threading.Thread(target=feed, daemon=True).start()
    for thread in outputs.threads:
        thread.start()
    return outputs


def aipm(args: list[str] | tuple[str, ...], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return run("aipm", args, **kwargs)


def aws(args: list[str] | tuple[str, ...], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return run("aws", args, **kwargs)


def runner_process(
    argv: list[str], *, env: dict[str, str], cwd: str, stdout: Any = None, stderr: Any = None
) -> Forked:
    """``python -m ec2_runner`` as the local stack starts it (``LocalStack.process_launcher``),
    forked: ``stdout``/``stderr`` are open files (or ``subprocess.STDOUT``), else this process's."""
    assert argv[1:] == ["-m", "ec2_runner"], argv
    out = stdout.fileno() if stdout is not None else None
    err = out if stderr == subprocess.STDOUT else (stderr.fileno() if stderr is not None else None)
    return Forked("runner", [], env=env, cwd=cwd, stdout=out, stderr=err)


if __name__ == "__main__":
    serve(sys.argv[1])
