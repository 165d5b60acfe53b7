"""Git's object ids: the proof that the bytes indexed are the bytes committed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

# A blob id's length tells the repository's object format (SHA-1 or SHA-256 repositories).
ALGORITHMS = {40: "sha1", 64: "sha256"}  # git's hash, by the length of an object id


def object_id(
    kind: str, data: bytes | memoryview, algorithm: str = "sha1", size: int | None = None
) -> str:
    """git hash-object: the hash of `<kind> <size>\\0` followed by the bytes."""
    return _object_id(kind, [data], algorithm, len(data) if size is None else size)


def _object_id(kind: str, chunks: Iterable[bytes | memoryview], algorithm: str, size: int) -> str:
    digest = hashlib.new(algorithm, b"%s %d\x00" % (kind.encode(), size))
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def blob_id(data: bytes | memoryview, algorithm: str = "sha1") -> str:
    return object_id("blob", data, algorithm)


def is_blob(data: bytes | memoryview, blob_sha: str) -> bool:
    """Whether data is exactly the blob `blob_sha`: the archive did not rewrite it, and GitLab
    served what the tree names."""
    return streams_blob(blob_sha, len(data), [data])


def streams_blob(blob_sha: str, size: int, chunks: Iterable[bytes | memoryview]) -> bool:
    """is_blob for content that arrives in chunks (a file too large to hold): `size` bytes in
    all; the chunks are hashed as they come and never kept."""
    algorithm = ALGORITHMS.get(len(blob_sha))
    return algorithm is not None and _object_id("blob", chunks, algorithm, size) == blob_sha.lower()
