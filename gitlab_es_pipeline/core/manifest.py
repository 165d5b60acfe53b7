"""The file manifest: every path of the tree at one commit, with its blob and fate."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc

from gitlab_es_pipeline.core.documents import RepositorySnapshot

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("blob_sha", pa.string(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),
        pa.field("size", pa.int64()),
        pa.field("line_count", pa.int64()),
        pa.field("encoding", pa.string()),
        pa.field("skip_reason", pa.string()),
    ]
)

_SNAPSHOT_KEYS = ("project_id", "repository_name", "branch", "commit_sha", "web_url")


@dataclass
class ManifestEntry:
    path: str
    blob_sha: str
    mode: str
    size: int | None = None
    line_count: int | None = None
    encoding: str | None = None
    skip_reason: str | None = None

    @property
    def indexed(self) -> bool:
        return self.skip_reason is None


def manifest_table(snapshot: RepositorySnapshot, entries: Iterable[ManifestEntry]) -> pa.Table:
    """Entries sorted by path; the snapshot rides along as Parquet schema metadata."""
    rows = sorted((asdict(e) for e in entries), key=lambda r: r["path"])
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    meta = {key: str(getattr(snapshot, key)) for key in _SNAPSHOT_KEYS}
    return table.replace_schema_metadata(meta)


def snapshot_of(table: pa.Table) -> RepositorySnapshot:
    meta: Mapping[bytes, bytes] = table.schema.metadata or {}
    values = {key: meta[key.encode()].decode() for key in _SNAPSHOT_KEYS}
    return RepositorySnapshot(
        project_id=int(values["project_id"]),
        repository_name=values["repository_name"],
        branch=values["branch"],
        commit_sha=values["commit_sha"],
        web_url=values["web_url"],
    )


@dataclass(frozen=True)
class ManifestSummary:
    files: int
    indexed_files: int
    lines: int
    indexed_bytes: int
    skipped: dict[str, int]


def summarize(table: pa.Table) -> ManifestSummary:
    indexed = table.filter(pc.is_null(table.column("skip_reason")))
    reasons = table.column("skip_reason").drop_null().to_pylist()
    return ManifestSummary(
        files=table.num_rows,
        indexed_files=indexed.num_rows,
        lines=pc.sum(indexed.column("line_count")).as_py() or 0,
        indexed_bytes=pc.sum(indexed.column("size")).as_py() or 0,
        skipped=dict(sorted(Counter(reasons).items())),
    )
