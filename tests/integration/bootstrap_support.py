"""Pieces of the bootstrap test (test_bootstrap.py): the user data rendered from template.yaml, a
scratch root made of overlay mounts, recording fakes of the system commands, a systemd unit read
the way systemd reads it, and a loopback HTTPS git server that wants a token."""

from __future__ import annotations

import base64
import json
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from local.deploy import load_template

# the directories the user data writes to; each is an overlay of the real one onto the scratch root
OVERLAID = ("/etc", "/opt", "/var/lib", "/var/log")
_SUB = re.compile(r"\$\{(!?)([A-Za-z0-9:]+(?:\.[A-Za-z0-9]+)?)\}")


def user_data_template() -> str:
    """The launch template's user data as template.yaml has it: the Fn::Sub text under Fn::Base64."""
    tpl = load_template()
    user_data = tpl["Resources"]["RunnerLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    return str(user_data["Fn::Base64"]["Fn::Sub"])


def render(text: str, values: Mapping[str, str]) -> str:
    """Fn::Sub as CloudFormation resolves it: ``${Name}`` from ``values`` (a name missing is an
    error, as in CloudFormation), ``${!Name}`` left as the literal ``${Name}``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return "${" + m.group(2) + "}"
        return values[m.group(2)]

    return _SUB.sub(sub, text)


def base64_round_trip(script: str) -> str:
    """Fn::Base64, and the instance's decoding of it."""
    return base64.b64decode(base64.b64encode(script.encode())).decode()


# -- the scratch root ------------------------------------------------------------------------------
@dataclass
class ScratchRoot:
    """A temp dir that holds everything written under OVERLAID, seen through a private mount
    namespace in which each of them is an overlay (the real one below, the scratch one on top)."""

    base: Path

    def upper(self, path: str) -> Path:
        """Where a path under one of OVERLAID lands in the scratch root."""
        return self.base / "upper" / path.lstrip("/")

    def mounts(self) -> str:
        lines = []
        for i, target in enumerate(OVERLAID):
            upper, work = self.upper(target), self.base / "work" / str(i)
            upper.mkdir(parents=True, exist_ok=True)
            work.mkdir(parents=True, exist_ok=True)
            lines.append(
                f"mount -t overlay overlay -o lowerdir={target},upperdir={upper},workdir={work} {target}"
            )
        return " && ".join(lines)

    def argv(self, *command: str) -> list[str]:
        """``command`` run inside the scratch root's mount namespace."""
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            self.mounts() + ' && exec "$@"',
            "sh",
            *command,
        ]

    def files(self) -> Iterator[Path]:
        for path in (self.base / "upper").rglob("*"):
            if path.is_file() and not path.is_symlink():
                yield path


def can_make_scratch_roots(tmp: Path) -> str | None:
    """None if overlay mounts in a private mount namespace work here, else why not."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = ScratchRoot(tmp / "probe")
    proc = subprocess.run(probe.argv("true"), capture_output=True, text=True, timeout=30)
    shutil.rmtree(probe.base, ignore_errors=True)
    if proc.returncode != 0:
        return f"no overlay mounts in a private mount namespace here (needs root): {proc.stderr.strip()}"
    return None


# -- recording fakes ------------------------------------------------------------------------------
CLOUDWATCH_AGENT = "/opt/aws/amazon-cloudwatch-agent"  # where its package installs it
_RECORDER = "import json, sys; print(json.dumps(sys.argv[1:]), flush=True)"
_RECORD = """#!/bin/bash
# recording fake of `{name}` for the bootstrap test: its arguments go to {log} first
{python} -c '{recorder}' {name} "$@" >> {log}
"""


def write_fakes(
    fakebin: Path, log: Path, *, moto_endpoint: str, dev_python: str, python: str | None = None
) -> None:
    """Small honest fakes of the system commands the user data calls, each recording its arguments.

    dnf, systemctl and cfn-signal only record (the packages are this machine's; the test starts the
    unit itself; the signal's arguments are what CloudFormation would get), but dnf installs
    amazon-cloudwatch-agent's control command as a fake that checks the config it is given is JSON
    (as the real one's fetch-config does) and records it;
    useradd and runuser record and then run the real command, which in the scratch root writes only
    the scratch /etc and /var/lib; aws records and runs the real AWS CLI against moto (an instance
    role's credentials, played by dummies); python3.12 makes the venv with this interpreter, and its
    pip records and installs the wheel offline (no index: its dependencies are this environment's,
    reached through a .pth file).

    ``python``: the interpreter the fakes record with and run the AWS CLI's module with (default this
    one); an interpreter other users can run lets the fakes work for the aipm user too (the boot's
    doctor runs as aipm, and git's credential helper calls ``aws``)."""
    fakebin.mkdir(parents=True, exist_ok=True)
    q = shlex.quote
    interpreter = python or sys.executable
    head = {"log": q(str(log)), "python": q(interpreter), "recorder": _RECORDER}
    # the AWS CLI of this environment, as a module of it: its own script's interpreter may be
    # one the aipm user cannot run
    site = next(p for p in sys.path if p.endswith("site-packages"))
    aws_main = (
        f"import sys; sys.path.insert(0, {site!r}); from awscli.clidriver import main; sys.exit(main())"
    )
    ctl = f"{CLOUDWATCH_AGENT}/bin/amazon-cloudwatch-agent-ctl"
    checks_config = (
        "import json, sys; a = sys.argv[1:]; "
        "path = a[a.index('-c') + 1].removeprefix('file:') if '-c' in a else None; "
        "path and json.load(open(path))"
    )
    bodies = {
        "dnf": (
            'case " $* " in *" amazon-cloudwatch-agent "*)\n'
            f"  install -d {q(str(Path(ctl).parent))}\n"
            f"  cat > {q(ctl)} <<'EOF'\n"
            + _RECORD.format(name="amazon-cloudwatch-agent-ctl", **head)
            + f'exec {q(sys.executable)} -c {q(checks_config)} "$@"\n'
            "EOF\n"
            f"  chmod 0755 {q(ctl)} ;;\n"
            "esac\n"
            "exit 0\n"
        ),
        "systemctl": "exit 0\n",
        # the instance's signal to CloudFormation: recorded, nothing to send it to
        "cfn-signal": "exit 0\n",
        "useradd": 'exec /usr/sbin/useradd "$@"\n',
        "runuser": 'exec /usr/sbin/runuser "$@"\n',
        "aws": (
            f"export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing\n"
            f'exec {q(interpreter)} -c {q(aws_main)} --endpoint-url {q(moto_endpoint)} "$@"\n'
        ),
        "python3.12": (
            '[ "$1 $2" = "-m venv" ] || { echo "fake python3.12: only -m venv" >&2; exit 2; }\n'
            f'{q(dev_python)} -m venv --without-pip "$3"\n'
            f'site=$("$3/bin/python" -c "import sysconfig; print(sysconfig.get_paths()[\'purelib\'])")\n'
            f"{q(sys.executable)} -c 'import site; print(site.getsitepackages()[0])' "
            '> "$site/_dev_deps.pth"\n'
            'cat > "$3/bin/pip" <<EOF\n'
            "#!/bin/bash\n"
            f"{q(sys.executable)} -c '{_RECORDER}' pip \"\\$@\" >> {head['log']}\n"
            f'exec {q(sys.executable)} -m pip --python "$3/bin/python" "\\$@" --no-index --no-deps\n'
            "EOF\n"
            'chmod 0755 "$3/bin/pip"\n'
        ),
    }
    for name, body in bodies.items():
        path = fakebin / name
        path.write_text(_RECORD.format(name=name, **head) + body)
        path.chmod(0o755)


def python_others_can_run() -> str | None:
    """An interpreter of this one's version that a system user can run (this one may live under
    /root, which the aipm user cannot read), or None."""
    import os

    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    for candidate in (base, f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"):
        path = Path(candidate)
        if path.exists() and all(os.stat(d).st_mode & 0o005 == 0o005 for d in path.parents):
            return str(path)
    return None


def recorded(log: Path) -> list[list[str]]:
    """Every call the fakes recorded, in order: [command, arg, ...]."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


# -- the unit, as systemd reads it ----------------------------------------------------------------
@dataclass
class Unit:
    exec_start: list[str]
    working_directory: str
    user: str
    environment: dict[str, str] = field(default_factory=dict)
    environment_files: list[tuple[str, bool]] = field(default_factory=list)  # (path, required)
    service: dict[str, list[str]] = field(default_factory=dict)


def parse_unit(text: str) -> Unit:
    """The [Service] section: Environment= (shell-like words, each KEY=VALUE), EnvironmentFile=
    (a leading '-' makes one optional), ExecStart=, WorkingDirectory=, User=."""
    section = None
    service: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            service.setdefault(key, []).append(value)
    env: dict[str, str] = {}
    for value in service.get("Environment", []):
        for word in shlex.split(value):
            k, _, v = word.partition("=")
            env[k] = v
    files = [(v.lstrip("-"), not v.startswith("-")) for v in service.get("EnvironmentFile", [])]
    (exec_start,) = service["ExecStart"]
    return Unit(
        exec_start=shlex.split(exec_start),
        working_directory=service["WorkingDirectory"][-1],
        user=service["User"][-1],
        environment=env,
        environment_files=files,
        service=service,
    )


def read_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines (comments and blank lines skipped, surrounding quotes removed), as systemd."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def unit_environment(unit: Unit, root: ScratchRoot, home: str) -> dict[str, str]:
    """The environment systemd gives the service: its own few variables for User=, then
    Environment=, then the EnvironmentFile=s in order (which override Environment=)."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
        "HOME": home,
        "USER": unit.user,
        "LOGNAME": unit.user,
        "SHELL": "/sbin/nologin",
        "LANG": "C.UTF-8",
    }
    env.update(unit.environment)
    for path, required in unit.environment_files:
        file = root.upper(path)
        if not file.exists():
            assert not required, f"EnvironmentFile={path} is required by the unit and was not written"
            continue
        env.update(read_env_file(file.read_text()))
    return env


# -- a git server over HTTPS that wants the token -------------------------------------------------
@dataclass
class GitRequest:
    method: str
    path: str
    user: str | None
    authorized: bool
    status: int


class TokenGitServer:
    """git http-backend behind a TLS server on 127.0.0.1 (self-signed certificate) that answers
    401 to any request without Basic credentials ``username:token``; pushes are allowed."""

    def __init__(self, root: Path, certs: Path, username: str, token: str) -> None:
        self.root = root
        self.username = username
        self.token = token
        self.requests: list[GitRequest] = []
        certs.mkdir(parents=True, exist_ok=True)
        self.cert, key = certs / "cert.pem", certs / "key.pem"
        openssl = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        files = ["-keyout", str(key), "-out", str(self.cert)]
        subprocess.run([*openssl, *subject, *files], check=True, capture_output=True, timeout=60)
        server = self
        backend = [shutil.which("git") or "git", "http-backend"]

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                user = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    ok = user == server.username and password == server.token
                else:
                    ok = False
                path, _, query = self.path.partition("?")
                if not ok:
                    server.requests.append(GitRequest(self.command, path, user, False, 401))
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                env = {
                    "PATH": "/usr/bin:/bin",
                    "GIT_PROJECT_ROOT": str(server.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "REMOTE_USER": user or "",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                }
                out = subprocess.run(backend, input=body, env=env, capture_output=True, timeout=60).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                status, headers = 200, []
                for line in head.decode().split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                server.requests.append(GitRequest(self.command, path, user, True, status))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _serve
            do_POST = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> TokenGitServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
