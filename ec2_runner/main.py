"""Wiring: settings -> clients -> store, git, agent -> pipeline -> runner."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ec2_runner import logs
from ec2_runner.agent_settings import AgentSettings
from ec2_runner.agents import make_agent
from ec2_runner.config import RunnerSettings
from ec2_runner.daemon import Runner
from ec2_runner.gitops import GitWorkspace
from ec2_runner.instance_notices import (
    INSTANCE_ID_PATH,
    InstanceMetadata,
    LifecycleTarget,
    MetadataError,
    NoticeWatcher,
    StopNotice,
    complete_lifecycle_action,
)
from ec2_runner.live import RelayWatchers
from ec2_runner.login_gate import LoginGate
from ec2_runner.pipeline import PipelineOptions, TaskPipeline
from ec2_runner.presence import Presence, Snapshot, terminal_count
from ec2_runner.sandbox import Sandbox, SandboxSettings, SandboxUnavailable, make_sandbox
from shared import aws
from shared.config import load_settings, local_stack_in_use
from shared.dispatch import Dispatcher
from shared.runners import RunnerRegistry, RunnerState
from shared.store import TaskStore

if TYPE_CHECKING:
    from ec2_runner.terminal import SessionManager, TaskTarget, TerminalSettings
    from ec2_runner.ws_client import TerminalService

logger = logging.getLogger(__name__)

# the runner stopped because its instance is going away (a scale-in held by the lifecycle hook, a
# Spot notice): the unit's RestartPreventExitStatus, so systemd does not start it again to find the
# same notice, take no task and complete the action a second time
EXIT_INSTANCE_LEAVING = 75


def runner_sandbox(settings: RunnerSettings, sandbox_settings: SandboxSettings) -> Sandbox:
    """The agents' sandbox, checked and started, with the runner's own clone, worktrees and state
    hidden from it. SandboxUnavailable (its message says what to do) when it cannot run here."""
    hidden = [settings.repo_path, settings.worktrees, Path.home() / ".aipm"]
    return make_sandbox(sandbox_settings, hidden=hidden)


def build_runner(
    settings: RunnerSettings,
    agent_settings: AgentSettings | None = None,
    sandbox: Sandbox | None = None,
) -> Runner:
    """A runner wired to its queue, table, git remote and agent, from validated settings; with a
    ``sandbox``, every agent run happens inside it."""
    logs.set_runner_id(settings.runner_id)
    ddb = aws.client(
        "dynamodb", region=settings.aws_region, endpoint_url=settings.aws_endpoint_url, keys=settings.aws_keys
    )
    sqs = aws.client(
        "sqs",
        region=settings.aws_region,
        endpoint_url=settings.aws_endpoint_url,
        keys=settings.aws_keys,
        read_timeout=settings.wait_time_seconds + 10,
    )
    store = TaskStore(ddb, settings.table_name, branch_locks_table=settings.branch_locks_table)
    workspace = GitWorkspace(
        settings.repo_path,
        settings.git_remote,
        settings.worktrees,
        default_branch=settings.default_branch,
        author_name=settings.git_author_name,
        author_email=settings.git_author_email,
        network_timeout=settings.git_timeout_seconds,
        credential_helper=settings.git_credential_helper,
    )
    if not settings.keep_failed_worktrees:  # those are kept for a person to look at
        workspace.remove_leftovers()
    agent = make_agent(agent_settings or AgentSettings(), sandbox)
    options = PipelineOptions(
        protected_branches=tuple(settings.protected_branches),
        lease_seconds=settings.lease_seconds,
        max_details_bytes=settings.max_details_bytes,
        fail_on_no_changes=settings.fail_on_no_changes,
        no_changes_error=settings.no_changes_error,
        keep_failed_worktrees=settings.keep_failed_worktrees,
        rate_limit_backoff=settings.rate_limit_backoff,
        log_tail_seconds=settings.log_tail_seconds,
    )
    pipeline = TaskPipeline(
        store,
        workspace,
        agent,
        settings.runner_id,
        options,
        dispatcher=Dispatcher(sqs, settings.task_queue_url),
    )
    return Runner(
        sqs,
        settings.task_queue_url,
        pipeline,
        slots=settings.slots,
        wait_time_seconds=settings.wait_time_seconds,
        lease_seconds=settings.lease_seconds,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        visibility_margin_seconds=settings.visibility_margin_seconds,
        login_gate=LoginGate(agent, settings.agent_login_recheck_seconds),
    )


def task_target(row: dict[str, Any]) -> TaskTarget:
    """A task's terminal target from its row: its branch and its agent's conversation id."""
    from ec2_runner.terminal import TaskTarget

    conversation = row.get("agentSessionId")
    return TaskTarget(row["branch"], conversation if isinstance(conversation, str) else None)


def start_terminals(
    settings: RunnerSettings,
    runner: Runner,
    terminal_settings: TerminalSettings | None = None,
    sandbox: Sandbox | None = None,
) -> TerminalService | None:
    """The Refine terminal service on the runner's outbound WebSocket, when one is configured; with
    a ``sandbox``, every terminal's agent runs inside it."""
    if not settings.ws_url:
        return None
    # the terminal's modules (asyncio, websockets, pexpect, JWT: ~0.25 CPU-s) load only when a
    # relay is configured, so a runner without one starts taking tasks that much sooner
    from ec2_runner.terminal import SessionManager, TerminalSettings
    from ec2_runner.terminal_worktrees import GitCallables
    from ec2_runner.ws_client import RelayLinkSettings, TerminalService
    from shared.tokens import SecretSource

    secret = SecretSource(
        settings.runner_secret.get_secret_value() if settings.runner_secret else None,
        settings.runner_secret_arn,
        region=settings.aws_region,
        endpoint_url=settings.aws_endpoint_url,
        keys=settings.aws_keys,
    )
    if not secret.get():
        logger.warning("WS_URL is set but no RUNNER_SECRET / RUNNER_SECRET_ARN: terminals are off")
        return None
    pipeline = runner.pipeline
    agent = pipeline.agent
    knobs = terminal_settings or TerminalSettings()

    def make_sessions() -> SessionManager:
        return SessionManager(
            knobs,
            argv_for=agent.interactive_argv,
            git=GitCallables.from_workspace(pipeline.workspace),
            resolve_task=lambda task_id: task_target(pipeline.store.get_row(task_id)),
            protected=tuple(settings.protected_branches),
            env=agent.child_env() if hasattr(agent, "child_env") else None,
            sandbox=sandbox,
            runner_id=settings.runner_id,
        )

    logger.info("terminal service connecting to %s", settings.ws_url)
    link = load_settings(RelayLinkSettings)
    service = TerminalService(settings.ws_url, secret.get, settings.runner_id, make_sessions, link).start()
    pipeline.watchers = RelayWatchers(service)  # running tasks stream to read-only watchers
    return service


def watch_notices(settings: RunnerSettings, runner: Runner) -> NoticeWatcher | None:
    """On EC2 (INSTANCE_METADATA_URL set): a watcher of the instance's stop notices that asks
    ``runner`` for a warm stop, looked at once now (an instance already going away takes no task)."""
    if not settings.instance_metadata_url:
        return None

    def stop(notice: StopNotice) -> None:
        runner.request_stop(grace_seconds=notice.grace(settings.shutdown_grace_seconds))

    metadata = InstanceMetadata(settings.instance_metadata_url)
    watcher = NoticeWatcher(metadata, stop, interval=settings.instance_notice_poll_seconds)
    watcher.check()
    return watcher.start()


def finish_lifecycle(settings: RunnerSettings, watcher: NoticeWatcher) -> None:
    """The runner has stopped: if the group's lifecycle hook holds the instance (seen now or
    earlier), tell the group to go on, so the instance terminates with nothing left running."""
    watcher.stop()
    watcher.check()  # a Spot stop may be followed by the group's own termination
    if not watcher.lifecycle_seen.is_set():
        return
    if not (settings.autoscaling_group_name and settings.lifecycle_hook_name):
        logger.warning(
            "the lifecycle hook holds this instance, but AUTOSCALING_GROUP_NAME or LIFECYCLE_HOOK_NAME"
            " is not set: the group goes on at the hook's timeout"
        )
        return
    try:
        instance_id = (watcher.metadata.get(INSTANCE_ID_PATH) or "").strip()
    except MetadataError as e:
        logger.warning("cannot complete the lifecycle action: %s", e)
        return
    if not instance_id:
        logger.warning("cannot complete the lifecycle action: the metadata service has no instance-id")
        return
    autoscaling = aws.client(
        "autoscaling",
        region=settings.aws_region,
        endpoint_url=settings.autoscaling_endpoint_url or settings.aws_endpoint_url,
        keys=settings.aws_keys,
    )
    target = LifecycleTarget(settings.autoscaling_group_name, settings.lifecycle_hook_name, instance_id)
    complete_lifecycle_action(autoscaling, target)


def snapshot(runner: Runner, terminals: TerminalService | None = None) -> Snapshot:
    """What ``runner`` is doing now, for its heartbeat record."""
    status = runner.login_gate.status if runner.login_gate else None
    if runner.stopping:
        state = RunnerState.STOPPING
    elif status is not None and not status.ready:
        state = RunnerState.WAITING_FOR_LOGIN
    else:
        state = RunnerState.RUNNING
    return Snapshot(
        state=state,
        slots_busy=runner.busy,
        slots_total=runner.slots,
        tasks=sorted(runner.holding),
        terminal_sessions=terminal_count(terminals),
        agent_logged_in=status.logged_in if status else None,
        agent_login=status.detail if status else "not checked yet",
    )


def start_presence(
    settings: RunnerSettings, runner: Runner, terminals: TerminalService | None = None
) -> Presence:
    """The runner's heartbeat record, written a few times a lease from here on."""
    ddb = aws.client(
        "dynamodb", region=settings.aws_region, endpoint_url=settings.aws_endpoint_url, keys=settings.aws_keys
    )
    presence = Presence(
        RunnerRegistry(ddb, settings.runners_table),
        settings.runner_id,
        getattr(runner.pipeline.agent, "name", "agent"),
        lambda: snapshot(runner, terminals),
        interval=settings.heartbeat_interval,
        ttl_seconds=settings.runner_record_ttl_seconds,
    )
    runner.on_change = presence.poke
    return presence.start()


def _terminal_settings() -> TerminalSettings:
    from ec2_runner.terminal import TerminalSettings

    return load_settings(TerminalSettings)


def main(max_tasks: int | None = None, stop_when_idle: bool = False) -> int:
    """``aipm runner`` / ``python -m ec2_runner``: run until SIGTERM or SIGINT, or until the
    instance is told it goes away (scale-in, Spot interruption)."""
    logs.configure()
    if local_stack_in_use():
        logger.info("using the local stack from .aipm/local.json")
    settings = load_settings(RunnerSettings)
    if settings.log_file:
        logs.configure(also_to=settings.log_file)
    try:
        sandbox = runner_sandbox(settings, load_settings(SandboxSettings))
    except SandboxUnavailable as e:
        logger.error("the runner cannot start: %s", e)
        raise SystemExit(f"aipm runner: {e}") from None
    try:
        runner = build_runner(settings, load_settings(AgentSettings), sandbox)
        runner.install_signal_handlers()
        knobs = _terminal_settings() if settings.ws_url else None
        watcher = watch_notices(settings, runner)
        terminals = start_terminals(settings, runner, knobs, sandbox)
        presence = start_presence(settings, runner, terminals)
        try:
            runner.run(max_tasks=max_tasks, stop_when_idle=stop_when_idle)
        finally:
            if terminals:
                terminals.stop()
            presence.stop()
        if watcher:
            finish_lifecycle(settings, watcher)
            if watcher.notice is not None:
                return EXIT_INSTANCE_LEAVING
    finally:
        sandbox.close()
    return 0
