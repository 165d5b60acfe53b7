"""Real git repositories for the tests, made with the git CLI."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": os.environ.get("HOME", "/tmp"),
}


@dataclass(frozen=True)
class Symlink:
    target: str


@dataclass(frozen=True)
class Submodule:
    commit: str


FileSpec = bytes | str | Symlink | Submodule


def run_git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, env=env
    ).stdout.decode()


def init_repo(path: Path, branch: str = "main") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    run_git(path, "init", "-q", "-b", branch)
    run_git(path, "config", "core.autocrlf", "false")
    run_git(path, "config", "core.quotepath", "false")
    return path


def commit_files(
    repo: Path, files: dict[str, FileSpec], message: str = "update", delete: tuple[str, ...] = ()
) -> str:
    """Write (or delete) files and commit them; returns the new commit sha."""
    for rel in delete:
        run_git(repo, "rm", "-q", "-r", "--", rel)
    for rel, spec in files.items():
        target = repo / rel
        if isinstance(spec, Submodule):
            run_git(repo, "update-index", "--add", "--cacheinfo", f"160000,{spec.commit},{rel}")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        if isinstance(spec, Symlink):
            os.symlink(spec.target, target)
        else:
            target.write_bytes(spec.encode() if isinstance(spec, str) else spec)
        run_git(repo, "add", "--", rel)
    run_git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return run_git(repo, "rev-parse", "HEAD").strip()
