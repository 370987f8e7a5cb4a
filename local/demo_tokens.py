"""``GET /token?task=ID|branch=B[&ro=1][&ttl=S]`` on the local page's origin: fresh browser tokens
for the demo page (its ``tokenUrl``), so a page reconnecting after its token expired gets back in.

For the local stack only. In AWS the frontend's own backend mints tokens for its signed-in users
(README, "Minting a browser token"); nothing here is deployed. The answer is what the page module
expects: ``{"token": "..."}``; bad input gets 400 (or 403 for a read-write grant on a protected
branch) with ``{"error": "<sentence>"}``, never a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from shared import tokens
from shared.branches import DEFAULT_PROTECTED, UnsafeBranchError, check_branch

DEMO_USER = "demo"
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_ALLOWED = frozenset({"task", "branch", "ro", "ttl"})
MAX_QUERY_CHARS = 1024


@dataclass(frozen=True)
class TokenAnswer:
    """The HTTP status and JSON body of one ``/token`` request."""

    status: int
    body: dict[str, Any]


def _refuse(message: str, status: int = 400) -> TokenAnswer:
    return TokenAnswer(status, {"error": message})


def demo_token(query: str, secret: str | None, protected: Sequence[str] = DEFAULT_PROTECTED) -> TokenAnswer:
    """Mint the token ``query`` asks for, or say why not."""
    if not secret:
        return _refuse("this gateway has no browser-token secret", 503)
    if len(query) > MAX_QUERY_CHARS:
        return _refuse(f"the query is over {MAX_QUERY_CHARS} characters")
    try:
        fields = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=8)
    except ValueError:
        return _refuse("the query is not a well-formed query string")
    unknown = sorted(set(fields) - _ALLOWED)
    if unknown:
        return _refuse(f"unknown parameter {unknown[0][:32]!r}; use task or branch, ro and ttl")
    if any(len(v) > 1 for v in fields.values()):
        return _refuse("each parameter may be given once")
    one = {k: v[0] for k, v in fields.items()}
    task, branch = one.get("task"), one.get("branch")
    if (task is None) == (branch is None):
        return _refuse("give exactly one of task or branch")
    ro = one.get("ro", "0")
    if ro not in ("0", "1"):
        return _refuse("ro is 0 or 1")
    read_only = ro == "1"
    try:
        ttl = int(one.get("ttl", tokens.DEFAULT_TTL))
    except ValueError:
        return _refuse("ttl is a whole number of seconds")
    if not 1 <= ttl <= tokens.DEFAULT_TTL:
        return _refuse(f"ttl is between 1 and {tokens.DEFAULT_TTL} seconds")
    if task is not None and not _TASK_ID.fullmatch(task):
        return _refuse("task is not a task id (letters, digits and . _ : -, at most 128)")
    if branch is not None:
        try:
            check_branch(branch, ())
        except UnsafeBranchError as e:
            return _refuse(str(e))
        try:
            check_branch(branch, tuple(protected))
        except UnsafeBranchError as e:
            # watching a protected branch is fine; typing and pushing there is not
            if not read_only:
                return _refuse(f"{e}; a read-only token (ro=1) can still watch it", 403)
    token = tokens.mint(secret, sub=DEMO_USER, task=task, branch=branch, read_only=read_only, ttl=ttl)
    return TokenAnswer(200, {"token": token})
