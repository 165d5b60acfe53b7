"""Which files are indexed, and why the others are not."""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import Enum
from functools import lru_cache

from gitlab_es_pipeline.core.decoding import is_binary
from gitlab_es_pipeline.core.lfs import is_lfs_pointer

DEFAULT_MAX_FILE_BYTES = 1024 * 1024
DEFAULT_EXCLUDED_PATHS: tuple[str, ...] = (
    "**/node_modules/**",
    "*.min.js",
    "*.min.css",
    "*.map",
)

MODE_SYMLINK = "120000"
MODE_SUBMODULE = "160000"


class Skipped(str, Enum):
    """Why a file of the tree has no line documents. The values are public (metadata, Parquet)."""

    SUBMODULE = "submodule"
    SYMLINK = "symlink"
    EXCLUDED = "excluded"
    TOO_LARGE = "too_large"
    LFS_POINTER = "lfs_pointer"  # the content lives outside the repository
    BINARY = "binary"


def _glob_to_regex(pattern: str) -> str:
    """gitignore-like globs: * and ? stay within a folder, ** crosses folders."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape("["))
                i += 1
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


@lru_cache(maxsize=64)
def compile_globs(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regex for all patterns. A pattern without "/" matches a file name in any folder."""
    parts = []
    for pattern in patterns:
        pattern = pattern.strip()
        if not pattern:
            continue
        anchored = pattern.lstrip("/")
        if "/" not in pattern:
            anchored = "**/" + anchored
        parts.append(_glob_to_regex(anchored))
    if not parts:
        return None
    return re.compile("(?:" + "|".join(parts) + r")\Z", re.DOTALL)


def is_excluded(path: str, patterns: Iterable[str]) -> bool:
    regex = compile_globs(tuple(patterns))
    return bool(regex and regex.match(path))


def tree_skip_reason(
    path: str, item_type: str, mode: str, excluded: re.Pattern[str] | None
) -> Skipped | None:
    """What the tree alone tells: submodules, symlinks and excluded paths need no content."""
    if item_type == "commit" or mode == MODE_SUBMODULE:
        return Skipped.SUBMODULE
    if mode == MODE_SYMLINK:
        return Skipped.SYMLINK
    if excluded is not None and excluded.match(path):
        return Skipped.EXCLUDED
    return None


def content_skip_reason(size: int, data: bytes, max_file_bytes: int) -> Skipped | None:
    """What the blob tells: the size first (no need to read a large file), then whether it is
    a Git LFS pointer, then binary."""
    if size > max_file_bytes:
        return Skipped.TOO_LARGE
    if is_lfs_pointer(data):
        return Skipped.LFS_POINTER
    if is_binary(data):
        return Skipped.BINARY
    return None
