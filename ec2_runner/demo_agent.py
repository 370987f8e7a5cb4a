"""DEMO STAND-IN for the Kiro CLI, used by ``make demo`` when ``kiro-cli`` is not installed.

It is not a coding agent. It prints a Kiro-like banner that says so, streams a few lines, and
appends the task's title and details to ``TASKS.md`` in its working directory, so the demo's
pipeline has a real diff to commit and push. Stdlib only; run as
``python demo_agent.py chat --no-interactive "<prompt>"`` (or without ``--no-interactive`` for a
tiny echoing chat used by the Refine terminal).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

PROMPT = "\x1b[38;5;141m> \x1b[0m"
BANNER = (
    "\x1b[1;33m[DEMO] This is the aipm demo agent, a stand-in for kiro-cli.\x1b[0m\n"
    "\x1b[33m[DEMO] It records the task in TASKS.md; install kiro-cli and set AGENT=kiro"
    " for real work.\x1b[0m\n"
)
TARGET = "TASKS.md"


def say(text: str, pause: float = 0.05) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
    time.sleep(pause)


def parse_task(prompt: str) -> tuple[str, str, str]:
    """Title, details and branch from the runner's prompt (``Task: <title>``, details, branch line)."""
    lines = prompt.strip().splitlines()
    title, start = (lines[0].strip() if lines else "untitled task"), 1
    for i, line in enumerate(lines):
        m = re.match(r"\s*(?:Task|Title):\s*(.+)", line)
        if m:
            title, start = m.group(1).strip(), i + 1
            break
    details: list[str] = []
    branch = ""
    for line in lines[start:]:
        m = re.match(r"You are working on git branch '(.*)'", line)
        if m:
            branch = m.group(1)
            break
        details.append(line)
    return title, "\n".join(details).strip(), branch


def headless(prompt: str) -> int:
    started = time.monotonic()
    say(BANNER, 0.1)
    title, details, branch = parse_task(prompt)
    say(f"{PROMPT}Reading the task \u201c{title}\u201d...\n")
    say("Planning the change (demo: no model is called).\n")
    path = Path.cwd() / TARGET
    header = (
        "" if path.exists() else "# Tasks\n\nRecorded by the aipm DEMO agent (a stand-in for kiro-cli).\n"
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    entry = f"\n## {title}\n\n{details or '(no details)'}\n\n_Branch `{branch or '?'}`, recorded {stamp}._\n"
    say(f"\n\U0001f6e0\ufe0f  Using tool: \x1b[1mfs_write\x1b[0m (trusted)\n \u25cf Path: {TARGET}\n")
    with path.open("a") as f:
        f.write(header + entry)
    say(f" - Completed in 0.01s\n{PROMPT}Done: added \u201c{title}\u201d to {TARGET}.\n")
    sys.stderr.write(
        f"\n\x1b[38;5;8m\u25b8 Credits: 0.00 (demo) \u2022 Time: {time.monotonic() - started:.0f}s\x1b[0m\n"
    )
    sys.stderr.flush()
    return 0


def interactive(resume: bool) -> int:
    say(BANNER, 0)
    say("Type a message; /quit to leave.\n", 0)
    if resume:
        say("[DEMO] (there is no real conversation to resume)\n", 0)
    while True:
        say(PROMPT, 0)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/quit", "/exit", "/q"):
            return 0
        if line.strip():
            say(f"\x1b[32mdemo\x1b[0m: I am only a stand-in; you said: {line.strip()}\n", 0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="demo-agent", description="DEMO stand-in for kiro-cli")
    sub = parser.add_subparsers(dest="command", required=True)
    chat = sub.add_parser("chat")
    chat.add_argument("--no-interactive", action="store_true")
    chat.add_argument("--trust-all-tools", action="store_true")
    chat.add_argument("--wrap", default="auto")
    chat.add_argument("--resume", action="store_true")
    chat.add_argument("--agent", default=None)
    chat.add_argument("input", nargs="?", default=None)
    args = parser.parse_args(argv)
    if not args.no_interactive:
        return interactive(args.resume)
    prompt = args.input if args.input is not None else sys.stdin.read()
    return headless(prompt)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
