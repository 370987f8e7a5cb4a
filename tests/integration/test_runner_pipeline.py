"""The task pipeline's own bookkeeping against the moto server, real git and the fake agent:
worktrees never leak, whatever write fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ec2_runner.agents import AgentSettings, make_agent
from ec2_runner.gitops import GitWorkspace
from ec2_runner.pipeline import PipelineOptions, TaskPipeline
from local.gitremote import ensure_bare_remote
from shared.branches import DEFAULT_PROTECTED
from shared.store import TaskStore
from tests.fixtures import FAKE_AGENT_COMMAND, unique

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class ThrottledRecords(TaskStore):
    """A store whose informational writes are throttled past botocore's retries, as DynamoDB can be."""

    def record(self, task_id: str, runner_id: str, attempt: int, **fields: Any) -> None:
        self.recorded = fields
        raise ClientError(
            {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
            "UpdateItem",
        )


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return ensure_bare_remote(tmp_path / "remote.git")


def make_pipeline(store: TaskStore, tmp_path: Path, remote: Path) -> TaskPipeline:
    workspace = GitWorkspace(tmp_path / "repo", str(remote), tmp_path / "wt")
    agent = make_agent(AgentSettings(agent="kiro", command=FAKE_AGENT_COMMAND, timeout=30, kill_grace=0.3))
    return TaskPipeline(store, workspace, agent, "r1", PipelineOptions(protected_branches=DEFAULT_PROTECTED))


def test_worktree_is_removed_when_recording_the_base_fails(
    ddb: Any, deployed: Any, remote: Path, tmp_path: Path
) -> None:
    # given: a store that cannot record the branch head once the task's worktree is made
    store = ThrottledRecords(ddb, deployed.table_name)
    task_id = unique("rec")
    store.put_new(
        {"id": task_id, "title": "T", "details": "[fake:sleep=0.1]", "branch": f"feature/{task_id}"}
    )
    pipeline = make_pipeline(store, tmp_path, remote)
    # when
    with pytest.raises(ClientError):
        pipeline.process(task_id)
    # then: the worktree made for it is gone (the row stays processing: its lease runs out)
    assert "baseSha" in store.recorded
    assert not list((tmp_path / "wt").iterdir())
