"""A Node backend's token: the README's jsonwebtoken snippet, run by Node, mints what verify() and the
$connect authorizer accept; and jsonwebtoken verifies ours (tests/node, installed by `make test`)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from shared import tokens
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

NODE_MODULES = ROOT / "tests" / "node" / "node_modules"
SECRET = "node-token-secret-for-tests-0123456789abc"


def node(script: str, **env: str) -> str:
    assert (NODE_MODULES / "jsonwebtoken").is_dir(), "run `make node-deps` (make test does)"
    done = subprocess.run(
        ["node", "-e", script],
        env={"PATH": os.environ["PATH"], "NODE_PATH": str(NODE_MODULES), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


def readme_js() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("```js\n", text.index("Node (`npm install jsonwebtoken`)")) + len("```js\n")
    return text[start : text.index("```", start)]


def test_the_readmes_node_snippet_mints_a_token_verify_accepts() -> None:
    token = node(readme_js() + "\nprocess.stdout.write(token);", TOKEN_SECRET=SECRET)
    claims = tokens.verify(token, SECRET, role="browser")
    assert (claims.sub, claims.task, claims.read_only) == ("alice", "T-42", False)
    assert claims.exp - claims.iat == 15 * 60


def test_jsonwebtoken_verifies_our_token_with_its_audience() -> None:
    ours = tokens.mint(SECRET, sub="bob", branch="feature/n", read_only=True, ttl=60)
    script = (
        "const jwt = require('jsonwebtoken');"
        "const c = jwt.verify(process.env.T, process.env.TOKEN_SECRET,"
        " { algorithms: ['HS256'], audience: 'aipm-terminal' });"
        "process.stdout.write(JSON.stringify(c));"
    )
    claims = json.loads(node(script, T=ours, TOKEN_SECRET=SECRET))
    assert claims["sub"] == "bob" and claims["branch"] == "feature/n" and claims["ro"] is True
