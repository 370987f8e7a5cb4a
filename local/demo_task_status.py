"""``GET /task-status?task=ID`` on the local page's origin: a task's status for the demo page's watch
mode (its ``taskStatus``), so a watch of a task that ended before the page could see its run ends with
the row's word instead of waiting for a run that never comes.

For the local stack only (beside ``/token``). In AWS the frontend's own backend answers for its
tasks; nothing here is deployed. The answer holds the row's ``status``, ``commitSha``, ``error`` and
``errorKind``, never its ``details``; bad input gets 400, an unknown task 404, each with
``{"error": "<sentence>"}``, never a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from local.demo_tokens import TokenAnswer

_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
MAX_QUERY_CHARS = 256
FIELDS = ("status", "commitSha", "error", "errorKind")


def task_status(query: str, read_row: Callable[[str], dict[str, Any] | None]) -> TokenAnswer:
    """The status of the task ``query`` names (``read_row(id)``: the row, or None), or why not."""
    if len(query) > MAX_QUERY_CHARS:
        return TokenAnswer(400, {"error": f"the query is over {MAX_QUERY_CHARS} characters"})
    try:
        fields = parse_qs(query, strict_parsing=bool(query), max_num_fields=2)
    except ValueError:
        return TokenAnswer(400, {"error": "the query is not a well-formed query string"})
    if set(fields) != {"task"} or len(fields["task"]) != 1:
        return TokenAnswer(400, {"error": "give task=ID, once, and nothing else"})
    task_id = fields["task"][0]
    if not _TASK_ID.fullmatch(task_id):
        return TokenAnswer(400, {"error": "task is not a task id (letters, digits and . _ : -, at most 128)"})
    try:
        row = read_row(task_id)
    except Exception as e:  # the local AWS endpoint is down or refuses: say so, briefly
        return TokenAnswer(503, {"error": f"the task table could not be read ({type(e).__name__})"})
    if row is None:
        return TokenAnswer(404, {"error": f"no task {task_id!r} in the queue table"})
    return TokenAnswer(200, {k: row[k] for k in FIELDS if row.get(k) is not None})
