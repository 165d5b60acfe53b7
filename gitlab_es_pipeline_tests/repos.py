"""Real git repositories for the tests, made with the git CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
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
    repo: Path, files: Mapping[str, FileSpec], message: str = "update", delete: tuple[str, ...] = ()
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


def real_source_roots() -> list[tuple[str, Path]]:
    """Real source trees every machine has: Python's standard library and the C headers."""
    import sysconfig

    return [
        (
            f"python{sys.version_info[0]}.{sys.version_info[1]}",
            Path(sysconfig.get_paths()["stdlib"]),
        ),
        ("include", Path("/usr/include")),
    ]


def real_source_files(
    roots: list[tuple[str, Path]], subfolders: tuple[str, ...] = (), max_lines: int | None = None
) -> Iterator[tuple[str, bytes]]:
    """(path in the repository, bytes) of the source files under the roots, in path order,
    until about max_lines lines: text files of at most 1 MiB (no NUL in the first 8,000 bytes,
    git's test); compiled files, libraries and installed packages left out."""
    lines = 0
    for prefix, root in roots:
        tops = [root / sub for sub in subfolders] if subfolders else [root]
        for top in tops:
            candidates = [top] if top.is_file() else sorted(top.rglob("*"))
            for file in candidates:
                if file.is_symlink() or not file.is_file():
                    continue
                relative = file.relative_to(root)
                if {"__pycache__", "site-packages"} & set(relative.parts):
                    continue
                if file.stat().st_size > 1 << 20:
                    continue
                data = file.read_bytes()
                if b"\x00" in data[:8000]:
                    continue
                yield f"{prefix}/{relative.as_posix()}", data
                lines += data.count(b"\n")
                if max_lines is not None and lines >= max_lines:
                    return


def fast_import(repo: Path, files: Iterable[tuple[str, bytes]], message: str = "import") -> str:
    """One commit of many files on the main branch, by `git fast-import` (no work tree)."""
    proc = subprocess.Popen(
        ["git", "-C", str(repo), "fast-import", "--quiet"], stdin=subprocess.PIPE
    )
    assert proc.stdin is not None
    head = f"commit refs/heads/main\ncommitter T <t@example.com> 1700000000 +0000\ndata {len(message)}\n{message}\n"
    proc.stdin.write(head.encode())
    for path, data in files:
        quoted = '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'
        proc.stdin.write(f"M 100644 inline {quoted}\ndata {len(data)}\n".encode() + data + b"\n")
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError("git fast-import failed")
    return run_git(repo, "rev-parse", "refs/heads/main").strip()
