"""What the local gateway serves beside the terminal page: its module and the vendored xterm.js from
the page's own origin, nothing else; and, for the demo only, ``GET /token``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from shared import tokens
from tests.integration.refine_support import TOKEN_SECRET, running_gateway

pytestmark = pytest.mark.integration


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def test_the_page_its_module_and_xterm_come_from_the_gateways_origin(moto_endpoint: str, table: str) -> None:
    with running_gateway(moto_endpoint, table) as gw:
        status, kind, page = get(gw.page_url)
        assert status == 200 and kind.startswith("text/html")
        assert b"https://" not in page and b"http://" not in page  # no URL outside the page's origin
        for path, expected in [
            ("aipm-terminal.js", "text/javascript"),
            ("vendor/xterm.mjs", "text/javascript"),
            ("vendor/addon-fit.mjs", "text/javascript"),
            ("vendor/xterm.css", "text/css"),
        ]:
            for base in (gw.page_url, f"{gw.page_url}{gw.stage}/"):  # beside / and /{stage}/ alike
                status, kind, body = get(base + path)
                assert status == 200 and kind.startswith(expected) and body, path
        assert b"export{Dl as Terminal}" in get(gw.page_url + "vendor/xterm.mjs")[2]


@pytest.mark.parametrize(
    "path", ["vendor/../package.json", "web/package.json", "node_modules/@xterm/xterm/package.json"]
)
def test_nothing_else_is_served(moto_endpoint: str, table: str, path: str) -> None:
    with running_gateway(moto_endpoint, table) as gw:
        assert get(gw.page_url + path)[0] == 404


def test_token_is_served_only_for_the_demo(moto_endpoint: str, table: str) -> None:
    with running_gateway(moto_endpoint, table) as gw:
        assert get(gw.page_url + "token?branch=feature/x")[0] == 404


def test_the_demo_token_grants_what_was_asked(moto_endpoint: str, table: str) -> None:
    with running_gateway(moto_endpoint, table) as gw:
        gw.demo_tokens = True
        status, kind, body = get(gw.page_url + "token?task=T-9&ro=1&ttl=60")
        assert status == 200 and kind == "application/json"
        claims = tokens.verify(json.loads(body)["token"], TOKEN_SECRET, role="browser")
        assert (claims.task, claims.branch, claims.ro) == ("T-9", None, True)
        assert claims.exp - claims.iat == 60


@pytest.mark.parametrize(
    ("query", "status", "says"),
    [
        ("", 400, "exactly one of task or branch"),
        ("task=T-1&branch=b", 400, "exactly one of task or branch"),
        ("branch=feature/x&ttl=soon", 400, "ttl is a whole number"),
        ("branch=feature/x&ttl=0", 400, "ttl is between 1 and"),
        ("branch=main", 403, "is protected"),
        ("branch=-x", 400, "must not start with '-'"),
    ],
)
def test_a_bad_token_request_gets_a_sentence(
    moto_endpoint: str, table: str, query: str, status: int, says: str
) -> None:
    with running_gateway(moto_endpoint, table) as gw:
        gw.demo_tokens = True
        got, kind, body = get(gw.page_url + "token?" + query)
        assert got == status and kind == "application/json"
        assert says in json.loads(body)["error"]


def test_a_protected_branch_gets_a_read_only_token(moto_endpoint: str, table: str) -> None:
    with running_gateway(moto_endpoint, table) as gw:
        gw.demo_tokens = True
        status, _, body = get(gw.page_url + "token?branch=main&ro=1")
        assert status == 200
        assert tokens.verify(json.loads(body)["token"], TOKEN_SECRET, role="browser").ro is True
