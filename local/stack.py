"""The embedded default: the whole system on one machine, from the same template as AWS.

moto (DynamoDB, Streams, SQS) over HTTP, template.yaml deployed into it, the real Lambda handlers
fed by local event sources, a bare git remote, and real runner processes.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from local.gitremote import ensure_bare_remote
from local.lambdas import ROOT, LocalFunction
from local.motoserver import LOCAL_CREDENTIALS, MotoServer, served_here
from local.poller import Schedule, SqsPoller, StreamPoller, TableWriteWatch
from shared import aws

logger = logging.getLogger(__name__)

DEFAULT_AWS_PORT = 4566


class LocalStackConfig(BaseModel):
    """What ``aipm local up`` writes to ``.aipm/local.json``. ``endpoint_url`` stays the first key."""

    endpoint_url: str
    region: str
    table_name: str
    task_queue_url: str
    dlq_url: str  # the dead letters operators inspect (aipm dlq)
    dlq_intake_url: str | None = None  # what the task queue redrives to (the dead-letter function's)
    git_remote: str
    stack_name: str
    connections_table: str | None = None
    branch_locks_table: str | None = None
    runners_table: str | None = None
    ws_url: str | None = None
    management_url: str | None = None
    page_url: str | None = None
    env: dict[str, str]


class LocalStack:
    """Starts and stops every part of the local system; usable as a context manager."""

    # what starts a runner process: ``subprocess.Popen``'s signature and a Popen-like result (the test
    # suite forks runners from an interpreter that has imported them already: tests/prefork.py)
    process_launcher: Callable[..., Any] = subprocess.Popen

    def __init__(
        self,
        workdir: Path,
        *,
        runners: int = 1,
        aws_port: int = 0,
        stack_name: str = "aipm-local",
        region: str = "us-east-1",
        runner_env: dict[str, str] | None = None,
        function_env: dict[str, str] | None = None,
        reconcile_seconds: float = 30.0,
        gateway_port: int | None = None,
        endpoint_url: str | None = None,
        parameters: dict[str, Any] | None = None,
        log_dir: Path | None = None,
        stream_poll_seconds: float = 0.05,
        gateway_limits: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.log_dir = log_dir  # runners log to runner-N.log there instead of this process's stderr
        self.state = self.workdir / ".aipm"
        self.runners_wanted = runners
        self.aws_port = aws_port
        self.stack_name = stack_name
        self.region = region
        self.extra_runner_env = runner_env or {}
        self.extra_function_env = function_env or {}
        self.reconcile_seconds = reconcile_seconds
        # how often the table's stream is read when it brought nothing (each read is an HTTP call)
        self.stream_poll_seconds = stream_poll_seconds
        self.gateway_port = gateway_port
        # API Gateway's limits, shortened for tests: LocalGateway's idle_timeout, max_connection_seconds,
        # max_frame_bytes, max_message_bytes (the runners' own settings are WS_* in runner_env)
        self.gateway_limits = dict(gateway_limits or {})
        self.gateway: Any = None  # the LocalGateway, once started with a gateway_port
        self._external_endpoint = endpoint_url
        self.parameters = parameters or {}  # template parameters (MaxReceiveCount, ...)
        self.moto: MotoServer | None = None
        self.config: LocalStackConfig | None = None
        self.runners: list[subprocess.Popen] = []
        self._parts: list[Any] = []
        self.stream: StreamPoller | None = None
        self.functions: dict[str, LocalFunction] = {}
        self._next_runner = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> LocalStackConfig:
        from local.deploy import deploy  # the template is the one definition of the resources

        self.state.mkdir(parents=True, exist_ok=True)
        if self._external_endpoint:
            endpoint = self._external_endpoint
        else:
            self.moto = MotoServer(port=self.aws_port)
            try:
                endpoint = self.moto.start()
            except OSError:
                logger.warning("port %s is busy; the local AWS endpoint takes a free port", self.aws_port)
                self.moto = MotoServer(port=0)
                endpoint = self.moto.start()
        logger.info("local AWS endpoint (moto) at %s", endpoint)
        # the seed's table name for the one local stack; unique names when several share a server
        table = (
            "aipm-amazon-q-queue" if self.stack_name == "aipm-local" else f"{self.stack_name}-amazon-q-queue"
        )
        params = {"TableName": table, **self.parameters}
        res = deploy(endpoint, self.region, stack_name=self.stack_name, parameters=params)
        remote = ensure_bare_remote(self.state / "remote.git")

        base_env = {
            "AWS_ENDPOINT_URL": endpoint,
            # the local AWS takes any credentials; these dummies keep clients from looking for real ones
            **LOCAL_CREDENTIALS,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "TABLE_NAME": res.table_name,
            "TASK_QUEUE_URL": res.task_queue_url,
            "DLQ_URL": res.dlq_url,
            # one task per branch: the runners' strongly consistent branch locks
            **({"BRANCH_LOCKS_TABLE": res.branch_locks_table} if res.branch_locks_table else {}),
            **({"CONNECTIONS_TABLE": res.connections_table} if res.connections_table else {}),
            # the runners' heartbeat records (`aipm runners`)
            **({"RUNNERS_TABLE": res.runners_table} if res.runners_table else {}),
            "POWERTOOLS_METRICS_NAMESPACE": "aipm-local",
            "POWERTOOLS_TRACE_DISABLED": "true",
        }
        function_env = {**base_env, **self.extra_function_env}
        self.functions = {
            name: LocalFunction(
                name,
                "app.lambda_handler",
                Path("functions") / name,
                {**res.function_env(name), **function_env},
            )
            for name in ("dispatch", "dead_letter", "reconciler")
        }
        ddb_streams = aws.client("dynamodbstreams", region=self.region, endpoint_url=endpoint)
        ddb = aws.client("dynamodb", region=self.region, endpoint_url=endpoint)
        sqs = aws.client("sqs", region=self.region, endpoint_url=endpoint, read_timeout=40)
        stream_arn = ddb.describe_table(TableName=res.table_name)["Table"]["LatestStreamArn"]
        self.stream = StreamPoller(
            ddb_streams,
            stream_arn,
            self.functions["dispatch"].invoke,
            region=self.region,
            filters=res.dispatch_filters,
            batch_size=res.dispatch_batch_size,
            max_retries=res.dispatch_max_retries,
            poll_interval=self.stream_poll_seconds,
            writes=TableWriteWatch(res.table_name) if served_here(endpoint) else None,
        )
        self.stream.start(from_start=True)
        # the dead-letter function's event source mapping, as the template gives it (the intake)
        (intake,) = [e.queue_url for e in res.function("dead_letter").events if e.type == "SQS"]
        assert intake, "the dead-letter function's SQS event names no queue"
        dlq = SqsPoller(sqs, intake, self.functions["dead_letter"].invoke, region=self.region)
        dlq.start()
        reconciler = Schedule(self.functions["reconciler"].invoke, self.reconcile_seconds, self.region)
        reconciler.start()
        self._parts += [self.stream, dlq, reconciler]

        gateway_urls, gateway_env = self._start_gateway(function_env, res.websocket)

        runner_env = {
            **base_env,
            "GIT_REMOTE": str(remote),
            # runners started by hand (`aipm runner` in this folder) share one clone here, never the
            # user's ~/.aipm/repo, which may be a clone of a real repository
            "REPO_PATH": str(self.state / "runners" / "by-hand" / "repo"),
            "AGENT": os.environ.get("AGENT", "auto"),
            **gateway_env,
            **self.extra_runner_env,
        }
        self.config = LocalStackConfig(
            endpoint_url=endpoint,
            region=self.region,
            table_name=res.table_name,
            task_queue_url=res.task_queue_url,
            dlq_url=res.dlq_url,
            dlq_intake_url=res.dlq_intake_url,
            git_remote=str(remote),
            stack_name=self.stack_name,
            connections_table=res.connections_table,
            branch_locks_table=res.branch_locks_table,
            runners_table=res.runners_table,
            env=runner_env,
            **gateway_urls,
        )
        # it holds the local secrets: readable by this user only
        fd = os.open(self.state / "local.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.config.model_dump_json(indent=2))
        os.chmod(self.state / "local.json", 0o600)
        for _ in range(self.runners_wanted):
            self.start_runner()
        return self.config

    def _start_gateway(
        self, function_env: dict[str, str], websocket: Any
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The API Gateway WebSocket stand-in; its URLs, and the env runners need to connect."""
        if self.gateway_port is None:
            return {}, {}
        from local.gateway import start_local_gateway

        try:
            gw = start_local_gateway(self, function_env, self.gateway_port, websocket, self.gateway_limits)
        except OSError:
            logger.warning(
                "port %s is busy; the local WebSocket gateway takes a free port", self.gateway_port
            )
            gw = start_local_gateway(self, function_env, 0, websocket, self.gateway_limits)
        self._parts.append(gw)
        self.gateway = gw
        urls = {"ws_url": gw.ws_url, "management_url": gw.management_url, "page_url": gw.page_url}
        env = {"WS_URL": gw.ws_url, "RUNNER_SECRET": gw.runner_secret, "TOKEN_SECRET": gw.token_secret}
        return urls, {k: v for k, v in env.items() if v}

    def stop(self) -> None:
        for proc in self.runners:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.runners:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for part in reversed(self._parts):
            part.stop()
        self._parts.clear()
        if self.moto:
            self.moto.stop()
            self.moto = None

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- runners ----------------------------------------------------------------------------
    def runner_env(self, index: int) -> dict[str, str]:
        assert self.config, "start the stack first"
        home = self.state / "runners" / f"runner-{index}"
        return {
            **os.environ,
            **self.config.env,
            "REPO_PATH": str(home / "repo"),
            "WORKTREES_DIR": str(home / "worktrees"),
        }

    def start_runner(
        self,
        extra_env: dict[str, str] | None = None,
        log_path: Path | None = None,
        index: int | None = None,
    ) -> subprocess.Popen:
        """Start one more runner process (``python -m ec2_runner``) against this stack; its log
        lines go to ``log_path`` (appended) when given, else to this process's stderr. ``index``
        reuses an earlier runner's home (clone and worktrees), as a restarted machine would."""
        if index is None:
            index = self._next_runner
            self._next_runner += 1
        env = {**self.runner_env(index), **(extra_env or {})}
        if log_path is None and self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"runner-{index}.log"
        argv = [sys.executable, "-m", "ec2_runner"]
        if log_path is None:
            proc = self.process_launcher(argv, env=env, cwd=str(self.workdir))
        else:
            with open(log_path, "ab") as log:
                proc = self.process_launcher(
                    argv, env=env, cwd=str(self.workdir), stdout=log, stderr=subprocess.STDOUT
                )
        self.runners.append(proc)
        logger.info("runner %d started (pid %d)", index, proc.pid)
        return proc


__all__ = ["ROOT", "LocalStack", "LocalStackConfig"]
