"""Branch-name safety: the rules of ``git check-ref-format --branch`` plus the project's own.

A task's branch comes from a row anyone with table access can write, and it ends up on a git
command line and in a filesystem path, so it is checked before it touches either.
"""

from __future__ import annotations

import fnmatch
import re
import unicodedata

DEFAULT_PROTECTED = ("main", "master", "develop", "release/*")
# the runner keeps stopped tasks' work under this prefix; a task may not name it (or the bare name,
# which would block every ref under it) as its branch
WIP_PREFIX = "kiro-wip/"
WIP_NAME = WIP_PREFIX.rstrip("/")
MAX_BRANCH_BYTES = 200
# the runner's clone names its one remote ``origin``; ``origin/x`` would shadow its tracking branch
REMOTE_NAME = "origin"

_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# scripts whose letters pass for Latin ones: a name mixing them with Latin is a look-alike
_LOOKALIKE_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE")


def folded(name: str) -> str:
    """``name`` as the comparisons see it: NFKC-normalised and case-folded (``ｍａｉｎ``, ``Main``
    and ``MAIN`` all become ``main``)."""
    return unicodedata.normalize("NFKC", name).casefold()


def _scripts(part: str) -> set[str]:
    found = set()
    for ch in part:
        if ch.isalpha():
            script = unicodedata.name(ch, "").split(" ")[0]
            if script in _LOOKALIKE_SCRIPTS:
                found.add(script)
    return found


def _hidden_character_rule(branch: str) -> str | None:
    """The rule a character of ``branch`` breaks that git itself does not check, or None."""
    for ch in branch:
        if ch in _BIDI_CONTROLS:
            return f"branch contains a bidirectional control character (U+{ord(ch):04X})"
        category = unicodedata.category(ch)
        if category == "Cc":
            return f"branch contains a control character (U+{ord(ch):04X})"
        if category in ("Cf", "Zs", "Zl", "Zp"):  # zero-width, soft hyphen, odd spaces
            return f"branch contains an invisible or space character (U+{ord(ch):04X})"
    for part in branch.split("/"):
        if len(_scripts(part)) > 1:
            return (
                f"branch mixes scripts in {part!r} ({', '.join(sorted(_scripts(part)))}): a look-alike name"
            )
    return None


class UnsafeBranchError(ValueError):
    """The branch name breaks a rule; ``rule`` names it."""

    def __init__(self, branch: str, rule: str) -> None:
        self.branch = branch
        self.rule = rule
        super().__init__(f"unsafe branch {branch[:80]!r}: {rule}")


def check_branch(branch: object, protected: tuple[str, ...] | list[str] = DEFAULT_PROTECTED) -> str:
    """Return ``branch`` if it is safe to check out, commit to and push; raise UnsafeBranchError if not."""
    if not isinstance(branch, str):
        raise UnsafeBranchError(repr(branch), "branch must be a string")
    if not branch:
        raise UnsafeBranchError(branch, "branch is empty")
    if len(branch.encode()) > MAX_BRANCH_BYTES:
        raise UnsafeBranchError(branch, f"branch is longer than {MAX_BRANCH_BYTES} bytes")
    if branch.startswith("-"):
        raise UnsafeBranchError(branch, "branch must not start with '-'")
    if m := _FORBIDDEN_CHARS.search(branch):
        raise UnsafeBranchError(
            branch, f"branch contains a forbidden character {m.group()!r} (git check-ref-format)"
        )
    if ".." in branch:
        raise UnsafeBranchError(branch, "branch contains '..' (git check-ref-format)")
    if branch == "HEAD":
        raise UnsafeBranchError(branch, "branch is 'HEAD' (git check-ref-format)")
    if "@{" in branch or branch == "@":
        raise UnsafeBranchError(branch, "branch contains '@{' or is '@' (git check-ref-format)")
    if branch.startswith("/") or branch.endswith("/") or "//" in branch:
        raise UnsafeBranchError(branch, "branch has an empty path component (git check-ref-format)")
    if branch.endswith("."):
        raise UnsafeBranchError(branch, "branch ends with '.' (git check-ref-format)")
    for part in branch.split("/"):
        if part.startswith("."):
            raise UnsafeBranchError(branch, "a path component starts with '.' (git check-ref-format)")
        if part.endswith(".lock"):
            raise UnsafeBranchError(branch, "a path component ends with '.lock' (git check-ref-format)")
    if rule := _hidden_character_rule(branch):
        raise UnsafeBranchError(branch, rule)
    if branch.startswith("refs/"):
        raise UnsafeBranchError(
            branch, "branch is a full ref name (starts with 'refs/'); give the branch name alone"
        )
    if branch.startswith((f"{REMOTE_NAME}/", "remotes/")):
        raise UnsafeBranchError(
            branch,
            f"branch names a remote-tracking branch (starts with '{REMOTE_NAME}/' or 'remotes/'); "
            "give the branch name alone",
        )
    name = folded(branch)
    if name == WIP_NAME or name.startswith(WIP_PREFIX):
        raise UnsafeBranchError(
            branch, f"branch is reserved ({WIP_NAME} and {WIP_PREFIX}*) for the runner's saved work"
        )
    for pattern in protected:
        if fnmatch.fnmatchcase(name, folded(pattern)):
            seen = "" if name == branch else f" (read as {name!r}: case and width are ignored)"
            raise UnsafeBranchError(
                branch, f"branch{seen} is protected ({pattern}); the runner never writes to it"
            )
    return branch
