"""Synthetic repositories of realistic source text, written with `git fast-import` (fast)."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

WORDS = [
    "user",
    "account",
    "request",
    "response",
    "handler",
    "client",
    "server",
    "config",
    "value",
    "result",
    "error",
    "index",
    "document",
    "line",
    "file",
    "path",
    "commit",
    "branch",
    "project",
    "repository",
    "token",
    "cache",
    "buffer",
    "stream",
    "parse",
    "build",
    "write",
    "read",
    "load",
    "store",
    "update",
    "delete",
    "create",
    "query",
    "filter",
    "batch",
    "chunk",
]
TEMPLATES = (
    "    {a}_{b} = self.{c}_{d}({e}, {f}={n})",
    "def {a}_{b}({c}: str, {d}: int = {n}) -> dict[str, int]:",
    "    if {a}_{b} is None or len({c}) > {n}:",
    '        raise ValueError(f"invalid {a} {{{b}!r}} for {c}")',
    "    for {a} in self.{b}_{c}.values():",
    "        {a}.{b}_{c}({d}, timeout={n})",
    '    return {{"{a}": {b}, "{c}": {d}_{e}}}',
    "# {A} the {b} when the {c} {d} changes ({n} max)",
    "class {A}{B}{C}(Base{D}):",
    "",
    '    """{A} {b} {c} of the {d}."""',
    "import {a}.{b}_{c} as {d}",
)


def source_file(rng: random.Random, lines: int) -> bytes:
    out = []
    for _ in range(lines):
        w = [rng.choice(WORDS) for _ in range(6)]
        out.append(
            rng.choice(TEMPLATES).format(
                a=w[0],
                b=w[1],
                c=w[2],
                d=w[3],
                e=w[4],
                f=w[5],
                n=rng.randint(0, 9999),
                A=w[0].title(),
                B=w[1].title(),
                C=w[2].title(),
                D=w[3].title(),
            )
        )
    return ("\n".join(out) + "\n").encode()


def make_repo(path: Path, files: int, lines_per_file: int, seed: int = 7) -> str:
    """A repository with `files` files of `lines_per_file` lines each; returns the commit."""
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    proc = subprocess.Popen(
        ["git", "-C", str(path), "fast-import", "--quiet"], stdin=subprocess.PIPE
    )
    assert proc.stdin is not None
    write = proc.stdin.write
    write(b"commit refs/heads/main\ncommitter Bench <bench@example.com> 1700000000 +0000\n")
    write(b"data 5\nbench\n")
    for i in range(files):
        data = source_file(rng, lines_per_file)
        folder = f"pkg{i % 50:02d}/mod{i % 7}"
        write(f"M 100644 inline {folder}/file_{i:05d}.py\ndata {len(data)}\n".encode())
        write(data + b"\n")
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError("git fast-import failed")
    return subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def change_one_file(path: Path, seed: int = 11) -> str:
    rng = random.Random(seed)
    target = path / "pkg00" / "mod0" / "file_00000.py"
    subprocess.run(["git", "-C", str(path), "checkout", "-q", "main", "--", "."], check=True)
    target.write_bytes(source_file(rng, 120))
    subprocess.run(
        [
            "git",
            "-C",
            str(path),
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "commit",
            "-q",
            "-am",
            "one change",
        ],
        check=True,
    )
    return subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def make_real_source_repo(path: Path, min_lines: int) -> tuple[int, int, float]:
    """A repository of real source files (Python's standard library, then the C headers) of at
    least min_lines lines; returns files, lines, and the CPU seconds that checking every file
    against its blob id (SHA-1 of the bytes) takes."""
    import time

    from gitlab_es_pipeline.core.blobs import blob_id
    from gitlab_es_pipeline_tests.repos import (
        fast_import,
        init_repo,
        real_source_files,
        real_source_roots,
    )

    files = list(real_source_files(real_source_roots(), max_lines=min_lines))
    init_repo(path)
    fast_import(path, files, "real source")
    started = time.process_time()
    for _, data in files:
        blob_id(data)
    hashing = time.process_time() - started
    return len(files), sum(data.count(b"\n") for _, data in files), hashing
