"""A bare git repository on disk, standing in for GitHub as the runners' remote."""

from __future__ import annotations

import tempfile
from pathlib import Path

import git


def ensure_bare_remote(path: Path, default_branch: str = "main") -> Path:
    """Create ``path`` as a bare repo whose ``default_branch`` has one seed commit (idempotent)."""
    path = Path(path)
    if (path / "HEAD").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    git.Repo.init(path, bare=True, initial_branch=default_branch)
    with tempfile.TemporaryDirectory() as tmp:
        seed = git.Repo.init(tmp, initial_branch=default_branch)
        with seed.config_writer() as cw:
            cw.set_value("user", "name", "aipm local stack")
            cw.set_value("user", "email", "local@aipm.invalid")
        (Path(tmp) / "README.md").write_text(
            "# Demo project\n\nThe local stack's stand-in for your GitHub repository.\n"
        )
        seed.git.add("README.md")
        seed.git.commit("-m", "Initial commit")
        seed.git.push(str(path), f"HEAD:refs/heads/{default_branch}")
    return path
