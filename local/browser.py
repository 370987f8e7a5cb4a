"""Headless Chromium for the terminal page: Debian's ``chromium`` (``make browser``), driven by
Playwright's Python package with ``executable_path`` set (Playwright's own browser download cannot
work offline). The flags keep it from reaching for the network on its own."""

from __future__ import annotations

import shutil
from typing import Any

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# the terminal's text as xterm holds it (wrapped rows joined back into their lines)
BUFFER_TEXT_JS = """() => {
  if (!window.aipmTerminal) return "";
  const buf = window.aipmTerminal.terminal.buffer.active;
  const lines = [];
  for (let i = 0; i < buf.length; i++) {
    const line = buf.getLine(i);
    const text = line.translateToString(true);
    if (line.isWrapped && lines.length) lines[lines.length - 1] += text; else lines.push(text);
  }
  return lines.join("\\n");
}"""


def chromium_path() -> str | None:
    """Where Debian's chromium is, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def launch(playwright: Any) -> Any:
    """A headless Chromium browser (``playwright.chromium.launch``) with the flags above and a fresh
    profile of its own (Playwright makes one per launch)."""
    path = chromium_path()
    if path is None:
        raise RuntimeError("chromium is not installed: `make browser` (apt-get install chromium)")
    return playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_FLAGS)
