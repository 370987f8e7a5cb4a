"""What the instance is told before it goes away: a scale-in (or a rolling update, or a health
replacement) held by the Auto Scaling group's ``EC2_INSTANCE_TERMINATING`` lifecycle hook, or a Spot
interruption notice. Both are read from the instance metadata service (IMDSv2: a session token on
every request); the runner stops warm on either, and completes the lifecycle action once its tasks
are finished or parked on their WIP refs, so the group terminates the instance only then.

``INSTANCE_METADATA_URL`` (the user data writes ``http://169.254.169.254``) turns this on; unset (the
local stack, a laptop) nothing is watched. Paths, as AWS documents them:

- ``latest/meta-data/autoscaling/target-lifecycle-state``: the steady state the instance is heading
  for; ``Terminated`` while the hook holds it in ``Terminating:Wait``.
- ``latest/meta-data/spot/instance-action``: 404 until EC2 is about to reclaim a Spot instance,
  then ``{"action": "terminate", "time": "<UTC, about two minutes ahead>"}``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ValidationError

logger = logging.getLogger(__name__)

TOKEN_PATH = "latest/api/token"
LIFECYCLE_PATH = "latest/meta-data/autoscaling/target-lifecycle-state"
SPOT_PATH = "latest/meta-data/spot/instance-action"
INSTANCE_ID_PATH = "latest/meta-data/instance-id"
TERMINATED = "Terminated"
# a token lives this long (IMDSv2 allows 1 s to 6 h); it is fetched again before it ends
TOKEN_TTL_SECONDS = 21600
# after a Spot notice, this much of the two minutes is kept for parking the tasks (their WIP
# pushes and row writes): the grace running tasks get to finish is what is left, at most
SPOT_PARK_RESERVE_SECONDS = 60.0


class MetadataError(Exception):
    """The instance metadata service could not be read (unreachable, refused, or an answer that
    is not what AWS documents)."""


class InstanceMetadata:
    """A small IMDSv2 client: a session token from ``PUT latest/api/token``, sent on every read."""

    def __init__(self, base_url: str, timeout: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.base_url = base_url.rstrip("/") + "/"
        self.timeout = timeout
        self._clock = clock
        self._token: str | None = None
        self._token_until = 0.0
        self._lock = threading.Lock()
        # the service is link-local: never through an HTTP(S)_PROXY of the environment
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str) -> str | None:
        """The text at ``path``, or None when the service has none there (404)."""
        for attempt in (1, 2):
            request = urllib.request.Request(
                self.base_url + path, headers={"X-aws-ec2-metadata-token": self._session_token()}
            )
            try:
                with self._opener.open(request, timeout=self.timeout) as answer:
                    return str(answer.read().decode("utf-8", "replace"))
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    return None
                if e.code == 401 and attempt == 1:  # the token expired or the service restarted
                    self._forget_token()
                    continue
                raise MetadataError(f"instance metadata {path}: HTTP {e.code}") from None
            except (urllib.error.URLError, OSError) as e:
                raise MetadataError(f"instance metadata {path}: {_reason(e)}") from None
        raise MetadataError(f"instance metadata {path}: the session token was refused twice")

    def _session_token(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._token_until:
                request = urllib.request.Request(
                    self.base_url + TOKEN_PATH,
                    method="PUT",
                    headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)},
                )
                try:
                    with self._opener.open(request, timeout=self.timeout) as answer:
                        token = answer.read().decode().strip()
                except urllib.error.HTTPError as e:
                    raise MetadataError(f"instance metadata token: HTTP {e.code}") from None
                except (urllib.error.URLError, OSError) as e:
                    raise MetadataError(f"instance metadata token: {_reason(e)}") from None
                if not token:
                    raise MetadataError("instance metadata token: the service answered an empty token")
                self._token, self._token_until = token, self._clock() + TOKEN_TTL_SECONDS - 60
            return self._token

    def _forget_token(self) -> None:
        with self._lock:
            self._token = None


def _reason(e: BaseException) -> str:
    return str(getattr(e, "reason", None) or e)


class SpotInstanceAction(BaseModel):
    """The body of ``spot/instance-action``."""

    action: str
    time: dt.datetime


@dataclass(frozen=True)
class StopNotice:
    """Why the instance is going away, and (Spot) when."""

    reason: str  # "scale-in" (the lifecycle hook holds the instance) or "spot interruption"
    lifecycle: bool  # the group waits for CompleteLifecycleAction
    deadline: dt.datetime | None = None  # a Spot instance's termination time

    def grace(self, configured: float, now: dt.datetime | None = None) -> float:
        """How long running tasks may go on finishing: the configured grace, and after a Spot
        notice no more than its two minutes leave once the tasks' parking is kept aside."""
        if self.deadline is None:
            return configured
        left = (self.deadline - (now or dt.datetime.now(dt.UTC))).total_seconds()
        return max(0.0, min(configured, left - SPOT_PARK_RESERVE_SECONDS))


def read_notice(metadata: InstanceMetadata) -> StopNotice | None:
    """The stop notice the metadata service holds now, if any (the lifecycle hook first: it is the
    one the group waits on). MetadataError when the service cannot be read."""
    state = metadata.get(LIFECYCLE_PATH)
    if state is not None and state.strip() == TERMINATED:
        return StopNotice("scale-in", lifecycle=True)
    spot = metadata.get(SPOT_PATH)
    if spot is None:
        return None
    try:
        action = SpotInstanceAction.model_validate_json(spot)
    except ValidationError:
        # a notice whose body we cannot read is still a notice: stop with the configured grace
        logger.warning("unreadable Spot instance-action %r; stopping as for a Spot interruption", spot[:200])
        return StopNotice("spot interruption", lifecycle=False)
    deadline = action.time if action.time.tzinfo else action.time.replace(tzinfo=dt.UTC)
    return StopNotice(f"spot interruption ({action.action} at {deadline:%H:%M:%S}Z)", False, deadline)


class NoticeWatcher:
    """Polls the metadata service every ``interval`` seconds in a daemon thread and calls
    ``on_notice`` once, with the first stop notice it sees (a lifecycle notice seen after a Spot
    one is remembered too: ``lifecycle_seen``, so the action is completed at the end)."""

    def __init__(
        self, metadata: InstanceMetadata, on_notice: Callable[[StopNotice], Any], interval: float = 5.0
    ) -> None:
        self.metadata = metadata
        self.on_notice = on_notice
        self.interval = interval
        self.notice: StopNotice | None = None
        self.lifecycle_seen = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="instance-notices", daemon=True)
        self._failing = False

    def check(self) -> StopNotice | None:
        """One look at the metadata service (also what the thread does each interval)."""
        try:
            notice = read_notice(self.metadata)
        except MetadataError as e:
            if not self._failing:  # said once per outage, not at every poll
                logger.warning("cannot read stop notices (%s); will keep trying", e)
            self._failing = True
            return None
        if self._failing:
            logger.info("instance metadata readable again")
            self._failing = False
        if notice is None:
            return None
        if notice.lifecycle:
            self.lifecycle_seen.set()
        if self.notice is None:
            self.notice = notice
            logger.warning("instance is going away (%s): stopping warm", notice.reason)
            self.on_notice(notice)
        return notice

    def start(self) -> NoticeWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            notice = self.check()
            if notice is not None and notice.lifecycle:
                return  # nothing later changes what happens


@dataclass(frozen=True)
class LifecycleTarget:
    """The group's hook this instance completes: names from the user data, the id from IMDS."""

    group_name: str
    hook_name: str
    instance_id: str


def complete_lifecycle_action(autoscaling: Any, target: LifecycleTarget) -> bool:
    """Tell the group the runner is done (``CONTINUE``: terminate now); False when the call failed
    (the hook's heartbeat timeout then ends the wait all the same)."""
    try:
        autoscaling.complete_lifecycle_action(
            AutoScalingGroupName=target.group_name,
            LifecycleHookName=target.hook_name,
            InstanceId=target.instance_id,
            LifecycleActionResult="CONTINUE",
        )
    except (ClientError, BotoCoreError) as e:
        logger.warning(
            "could not complete the lifecycle action of %s (%s); the group goes on at the hook's timeout",
            target.instance_id,
            e,
        )
        return False
    logger.info(
        "lifecycle action completed: %s may terminate (%s / %s)",
        target.instance_id,
        target.group_name,
        target.hook_name,
    )
    return True
