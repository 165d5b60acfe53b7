"""Git LFS pointer files: a blob that stands for content kept outside the repository.

The spec (git-lfs docs/spec.md): UTF-8 text under 1,024 bytes, one `key value\\n` a line,
`version` first, the other keys in ascending order, `oid sha256:<64 hex>` and `size <bytes>`
required.
"""

from __future__ import annotations

import re

MAX_POINTER_BYTES = 1024
# The current spec's URL, and the one of git-lfs's first releases (still accepted by git-lfs).
_VERSIONS = frozenset({"https://git-lfs.github.com/spec/v1", "https://hawser.github.com/spec/v1"})
_LINE = re.compile(r"([a-z0-9.-]+) ([^\r\n]*)")
_OID = re.compile(r"sha256:[0-9a-f]{64}")
_SIZE = re.compile(r"[0-9]+")


def is_lfs_pointer(data: bytes) -> bool:
    """A pointer by the spec's letter; any other file, however similar, is indexed as text."""
    if not data.endswith(b"\n") or len(data) >= MAX_POINTER_BYTES:
        return False
    if not data.startswith(b"version "):
        return False
    try:
        lines = data.decode("utf-8")[:-1].split("\n")
    except UnicodeDecodeError:
        return False
    pairs = []
    for line in lines:
        match = _LINE.fullmatch(line)
        if match is None:
            return False
        pairs.append((match.group(1), match.group(2)))
    keys = [key for key, _ in pairs]
    values = dict(pairs)
    return (
        keys[0] == "version"
        and values["version"] in _VERSIONS
        and "version" not in keys[1:]
        and keys[1:] == sorted(set(keys[1:]))
        and _OID.fullmatch(values.get("oid", "")) is not None
        and _SIZE.fullmatch(values.get("size", "")) is not None
    )
