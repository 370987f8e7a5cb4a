"""The relay itself (shared.relay, with its store, rate limiter and poster) over the real connections
table and the local gateway's management API: who gets cleaned on a GoneException, and how
open/resume budgets are counted."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect

from shared import aws
from shared import frames as fr
from shared.connections import ConnectionStore
from shared.identity import Identity
from shared.management_api import Poster
from shared.ratelimit import RateLimiter
from shared.relay import CONTROL_RATE, Relay
from shared.tokens import mint_runner_token
from tests.fixtures import wait_until
from tests.integration.refine_support import RUNNER_SECRET, Browser, browser_token, running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def make_relay(moto_endpoint: str, table: str, clock: Any = None) -> Relay:
    ddb = aws.client("dynamodb", region="us-east-1", endpoint_url=moto_endpoint)
    store = ConnectionStore(ddb, table, clock=clock) if clock else ConnectionStore(ddb, table)
    limiter = RateLimiter(ddb, table, clock=clock) if clock else RateLimiter(ddb, table)
    poster = Poster(
        lambda endpoint: aws.client("apigatewaymanagementapi", region="us-east-1", endpoint_url=endpoint)
    )
    return Relay(store, poster, limiter)


def item(relay: Relay, connection_id: str) -> dict[str, Any] | None:
    resp = relay.store._ddb.get_item(
        TableName=relay.store.table, Key={"connectionId": {"S": connection_id}}, ConsistentRead=True
    )
    return resp.get("Item")


async def runner_socket(gw: Any, relay: Relay) -> tuple[Any, str]:
    """A runner connection through the gateway (its $connect registers it); returns it and its id."""
    before = set(relay.store.runners())
    ws = await connect(f"{gw.ws_url}?token={mint_runner_token(RUNNER_SECRET, 'relay-test')}")
    new = await asyncio.to_thread(wait_until, lambda: set(relay.store.runners()) - before, 5)
    return ws, next(iter(new))


def test_gone_on_a_browser_removes_that_browser_not_the_runner_that_sent(
    moto_endpoint: str, table: str
) -> None:
    """A runner's frame names a live browser and one API Gateway no longer knows: the post to the gone
    one answers 410, and exactly that connection is cleaned; the sending runner stays, and hears a
    ``detach`` for it."""
    relay = make_relay(moto_endpoint, table)
    with running_gateway(moto_endpoint, table) as gw:

        async def scenario() -> None:
            runner_ws, runner_id = await runner_socket(gw, relay)
            live = await Browser.connect(gw.ws_url, browser_token(branch="feature/gone"))
            sid = fr.session_id_for(branch="feature/gone")
            live_id = next(c for c in await asyncio.to_thread(relay.store.browsers, sid))
            gone_id = "R29uZUNvbm5JZA="  # its $disconnect was lost: the table still lists it
            relay.store.add_browser(Identity(gone_id, "browser", "u", session_id=sid))
            frame = fr.OutputFrame(session_id=sid, seq=1, data="to both", to=[live_id, gone_id])
            # when
            await asyncio.to_thread(
                relay.message,
                Identity(runner_id, "runner", "relay-test"),
                fr.encode(frame),
                gw.management_url,
            )
            # then
            assert fr.decode(await asyncio.wait_for(live.ws.recv(), 5)).data == "to both"
            detach = fr.decode(await asyncio.wait_for(runner_ws.recv(), 5), role="to_runner")
            assert (detach.action, detach.connection_id) == ("detach", gone_id)
            assert item(relay, gone_id) is None
            assert item(relay, runner_id) is not None and item(relay, live_id) is not None
            await live.close()
            await runner_ws.close()

        asyncio.run(scenario())


def test_gone_on_the_runner_removes_that_runner_not_the_browser_that_sent(
    moto_endpoint: str, table: str
) -> None:
    """A browser's keystroke goes to a runner connection that is gone: that runner's item and route are
    cleaned, the browser stays and is told no runner holds its session right now (``no_runner``, which
    it resumes from; never ``exit``, which would end a session the runner may still hold)."""
    relay = make_relay(moto_endpoint, table)
    with running_gateway(moto_endpoint, table) as gw:

        async def scenario() -> None:
            b = await Browser.connect(gw.ws_url, browser_token(branch="feature/dead-runner"))
            sid = fr.session_id_for(branch="feature/dead-runner")
            b_id = next(c for c in await asyncio.to_thread(relay.store.browsers, sid))
            dead = "RGVhZFJ1bm5lcg="
            relay.store.add_runner(Identity(dead, "runner", "gone-runner"))
            relay.store.set_route(sid, dead)
            ident = Identity(b_id, "browser", "tester", session_id=sid, branch="feature/dead-runner")
            # when
            typed = fr.encode(fr.InputFrame(session_id=sid, data="x"))
            await asyncio.to_thread(relay.message, ident, typed, gw.management_url)
            # then
            refusal = await b.wait_frame(fr.ErrorFrame, 5, code="no_runner")
            assert refusal.session_id == sid and b.exited is None
            assert item(relay, dead) is None and relay.store.route(sid) is None
            assert item(relay, b_id) is not None
            await b.close()

        asyncio.run(scenario())


def test_open_and_resume_share_one_budget_per_window(moto_endpoint: str, table: str) -> None:
    """Exactly CONTROL_RATE opens/resumes per window reach the runner; the rest are refused as
    throttled, and the next window has a fresh budget (the clock is the limiter's, here a fixed one)."""
    now = [1_000_000.0]
    relay = make_relay(moto_endpoint, table, clock=lambda: now[0])
    with running_gateway(moto_endpoint, table) as gw:

        async def scenario() -> None:
            runner_ws, runner_id = await runner_socket(gw, relay)
            b = await Browser.connect(gw.ws_url, browser_token(branch="feature/budget"))
            sid = fr.session_id_for(branch="feature/budget")
            b_id = next(c for c in await asyncio.to_thread(relay.store.browsers, sid))
            relay.store.set_route(sid, runner_id)
            ident = Identity(b_id, "browser", "tester", session_id=sid, branch="feature/budget")
            resume = fr.encode(fr.ResumeFrame(session_id=sid, last_seq=0))

            answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

            async def read(ws: Any) -> None:
                async for raw in ws:
                    await answers.put(json.loads(raw))

            readers = [asyncio.ensure_future(read(ws)) for ws in (runner_ws, b.ws)]

            async def burst(n: int) -> tuple[int, int]:
                """Send ``n`` resumes; (how many reached the runner, how many were throttled)."""
                for _ in range(n):
                    await asyncio.to_thread(relay.message, ident, resume, gw.management_url)
                got = [await asyncio.wait_for(answers.get(), 5) for _ in range(n)]
                assert answers.empty()
                return (
                    sum(f["action"] == "resume" for f in got),
                    sum(f.get("code") == "throttled" for f in got),
                )

            # when / then
            assert await burst(CONTROL_RATE + 3) == (CONTROL_RATE, 3)
            now[0] += relay.control_window
            assert await burst(1) == (1, 0)
            for reader in readers:
                reader.cancel()
            await b.close()
            await runner_ws.close()

        asyncio.run(scenario())
