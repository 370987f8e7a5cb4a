"""The local API Gateway WebSocket stand-in: routes and stage from template.yaml, the management API."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from types import SimpleNamespace

import pytest
from botocore.exceptions import ClientError
from websockets.exceptions import ConnectionClosed

from local.deploy import LocalStackResources, deploy
from local.gateway import LocalGateway, start_local_gateway
from shared import aws
from shared import frames as fr
from shared.connections import ConnectionStore
from tests.fixtures import wait_until
from tests.integration.refine_support import Browser, browser_token, gateway_env, running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


@pytest.fixture(scope="module")
def stack(moto_endpoint: str) -> LocalStackResources:
    return deploy(moto_endpoint, "us-east-1", stack_name=f"g{uuid.uuid4().hex[:10]}")


def test_gateway_takes_routes_and_stage_from_the_template(
    moto_endpoint: str, stack: LocalStackResources
) -> None:
    """Made from what local.deploy parses out of template.yaml, the gateway serves the template's stage
    and routes; a message whose action names no route goes to ``$default`` (there is no authorizer
    route: the authorizer only ever runs at ``$connect``)."""
    spec = stack.websocket
    assert spec is not None and stack.connections_table
    env = gateway_env(moto_endpoint, stack.connections_table)
    gw = start_local_gateway(SimpleNamespace(), env, 0, spec)
    try:
        assert gw.stage == spec.stage == "prod"
        assert gw.ws_url.endswith("/prod")
        assert (
            gw.routes
            == spec.routes
            == {
                "$connect": "ws_connect",
                "$disconnect": "ws_disconnect",
                "$default": "ws_relay",
            }
        )
        assert gw.authorizer == spec.authorizer == "ws_authorizer"
        with urllib.request.urlopen(gw.page_url, timeout=5) as page:
            assert '<meta name="aipm-ws-stage" content="prod">' in page.read().decode()

        async def scenario() -> list[dict]:
            b = await Browser.connect(gw.ws_url, browser_token(branch="feature/route"))
            replies = []
            for action in ("authorizer", "$connect", "no-such-route"):
                await b.ws.send(json.dumps({"action": action}))
                # the first reply makes the relay (clients, settings): ~0.15 s alone, more on 4 busy workers
                replies.append(json.loads(await asyncio.wait_for(b.ws.recv(), 20)))
            await b.close()
            return replies

        # then: the relay ($default) answered each with its own error frame
        for reply in asyncio.run(scenario()):
            assert reply["action"] == "error" and reply["code"] == "malformed", reply
            assert "unknown action" in reply["message"]
    finally:
        gw.stop()


def test_gateway_needs_connect_and_default_routes(moto_endpoint: str) -> None:
    with pytest.raises(ValueError, match="routes"):
        LocalGateway(gateway_env(moto_endpoint, "t"), port=0, routes={"$disconnect": "ws_disconnect"})


def test_management_api_gets_and_deletes_connections_through_boto3(moto_endpoint: str, table: str) -> None:
    """boto3's ``apigatewaymanagementapi`` works unchanged against the stand-in: GET describes a live
    connection, DELETE closes it (its ``$disconnect`` runs), and both answer GoneException after."""
    with running_gateway(moto_endpoint, table) as gw:
        api = aws.client("apigatewaymanagementapi", region="us-east-1", endpoint_url=gw.management_url)
        store = ConnectionStore(aws.client("dynamodb", region="us-east-1", endpoint_url=moto_endpoint), table)
        sid = fr.session_id_for(branch="feature/mgmt")

        async def scenario() -> None:
            b = await Browser.connect(gw.ws_url, browser_token(branch="feature/mgmt"))
            conn_id = next(iter(await asyncio.to_thread(store.browsers, sid)))
            # GET
            info = await asyncio.to_thread(api.get_connection, ConnectionId=conn_id)
            assert info["Identity"]["SourceIp"] == "127.0.0.1"
            assert info["Identity"]["UserAgent"].startswith("Python/")
            assert abs(info["ConnectedAt"].timestamp() - time.time()) < 60
            assert info["LastActiveAt"] >= info["ConnectedAt"]
            # DELETE
            await asyncio.to_thread(api.delete_connection, ConnectionId=conn_id)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(b.ws.recv(), 5)
            await asyncio.to_thread(wait_until, lambda: store.browsers(sid) == [], 5, 0.05, "$disconnect")
            for call in (api.get_connection, api.delete_connection):
                with pytest.raises(ClientError) as gone:
                    await asyncio.to_thread(call, ConnectionId=conn_id)
                assert gone.value.response["Error"]["Code"] == "GoneException"

        asyncio.run(scenario())
