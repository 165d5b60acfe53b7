"""The file manifest: every path of the tree at one commit, its blob, its fate, and its change.

A manifest is compared with the manifest of the last indexed commit by blob id: that is how an
incremental run knows which files to read and which documents to delete. Trees are compared,
not histories, so force-pushes and rewritten histories need no special case.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from enum import Enum

import pyarrow as pa
import pyarrow.compute as pc

from gitlab_es_pipeline.core.documents import RepositorySnapshot, document_ids

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("blob_sha", pa.string(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),
        pa.field("size", pa.int64()),
        pa.field("line_count", pa.int64()),
        pa.field("encoding", pa.string()),
        pa.field("skip_reason", pa.string()),
        pa.field("change", pa.string()),
        pa.field("previous_path", pa.string()),
        pa.field("previous_line_count", pa.int64()),
    ]
)

_SNAPSHOT_KEYS = (
    "project_id",
    "repository_name",
    "branch",
    "commit_sha",
    "web_url",
    "visibility",
)


class Change(str, Enum):
    """How a path differs from the last indexed commit. The values are public (metadata)."""

    ADDED = "added"
    MODIFIED = "modified"
    DELETED = "deleted"
    RENAMED = "renamed"
    UNCHANGED = "unchanged"


class BuildMode(str, Enum):
    """How a manifest was built: from nothing, against the indexed one, or rebuilt on demand."""

    FULL = "full"
    INCREMENTAL = "incremental"
    FULL_REFRESH = "full_refresh"


@dataclass(slots=True)
class ManifestEntry:
    path: str
    blob_sha: str
    mode: str
    size: int | None = None
    line_count: int | None = None
    encoding: str | None = None
    skip_reason: str | None = None
    change: str | None = None
    previous_path: str | None = None
    previous_line_count: int | None = None

    @property
    def indexed(self) -> bool:
        return self.skip_reason is None and self.change != Change.DELETED.value

    @property
    def indexed_lines(self) -> int:
        return (self.line_count or 0) if self.indexed else 0

    def needs_content(self) -> bool:
        """Added, modified and renamed files that the tree does not already rule out."""
        return self.skip_reason is None and self.change in (
            Change.ADDED.value,
            Change.MODIFIED.value,
            Change.RENAMED.value,
        )


@dataclass(frozen=True)
class ManifestHeader:
    """What a manifest says about itself, kept in the Parquet schema metadata."""

    snapshot: RepositorySnapshot
    mode: BuildMode
    base_commit: str | None
    settings: str
    # The project's count of writes when it was read (any partition's): a write of this
    # manifest is refused if another partition wrote the project since. None: not known.
    writes_seen: int | None = None

    def as_metadata(self) -> dict[str, str]:
        meta = {key: str(getattr(self.snapshot, key)) for key in _SNAPSHOT_KEYS}
        meta.update(
            mode=self.mode.value, base_commit=self.base_commit or "", settings=self.settings
        )
        if self.writes_seen is not None:
            meta["writes_seen"] = str(self.writes_seen)
        return meta

    @classmethod
    def of(cls, table: pa.Table | pa.Schema) -> ManifestHeader:
        schema = table if isinstance(table, pa.Schema) else table.schema
        raw: Mapping[bytes, bytes] = schema.metadata or {}
        meta = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            snapshot=RepositorySnapshot(
                project_id=int(meta["project_id"]),
                repository_name=meta["repository_name"],
                branch=meta["branch"],
                commit_sha=meta["commit_sha"],
                web_url=meta["web_url"],
                # A manifest from before documents carried visibility: unknown.
                visibility=meta.get("visibility", ""),
            ),
            mode=BuildMode(meta.get("mode", BuildMode.FULL.value)),
            base_commit=meta.get("base_commit") or None,
            settings=meta.get("settings", ""),
            writes_seen=int(meta["writes_seen"]) if "writes_seen" in meta else None,
        )


def manifest_table(header: ManifestHeader, entries: Iterable[ManifestEntry]) -> pa.Table:
    """Entries sorted by path (deleted paths included, marked as such)."""
    rows = sorted((asdict(e) for e in entries), key=lambda r: (r["path"], r["change"] or ""))
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    return table.replace_schema_metadata(header.as_metadata())


def snapshot_of(table: pa.Table) -> RepositorySnapshot:
    return ManifestHeader.of(table).snapshot


def entries_of(table: pa.Table) -> Iterator[ManifestEntry]:
    names = [f.name for f in fields(ManifestEntry)]
    for row in table.select(names).to_pylist():
        yield ManifestEntry(**row)


def current_entries(table: pa.Table) -> dict[str, ManifestEntry]:
    """The paths that exist at the manifest's commit (its deleted rows left out)."""
    return {e.path: e for e in entries_of(table) if e.change != Change.DELETED.value}


def classify(
    entries: dict[str, ManifestEntry],
    base: Mapping[str, ManifestEntry] | None,
    learn: bool = True,
) -> list[ManifestEntry]:
    """Set change/previous_* on every entry against the base; returns entries for deleted paths.

    A path that disappears while a new path appears with the same blob is a rename.
    With `learn`, unchanged entries take over what the base learned from their content (size,
    lines, encoding, binary or too large), so their content need not be read again; without,
    (everything is read anew) they keep what this run found.
    """
    if base is None:
        for entry in entries.values():
            entry.change, entry.previous_path, entry.previous_line_count = (
                Change.ADDED.value,
                None,
                0,
            )
        return []
    gone = {path: old for path, old in base.items() if path not in entries}
    gone_by_blob: dict[str, list[str]] = defaultdict(list)
    for path in sorted(gone):
        gone_by_blob[gone[path].blob_sha].append(path)
    for path, entry in entries.items():
        old = base.get(path)
        if old is None:
            candidates = gone_by_blob.get(entry.blob_sha)
            if candidates:
                source = gone.pop(candidates.pop(0))
                entry.change, entry.previous_path = Change.RENAMED.value, source.path
                entry.previous_line_count = source.indexed_lines
            else:
                entry.change, entry.previous_path, entry.previous_line_count = (
                    Change.ADDED.value,
                    None,
                    0,
                )
            continue
        entry.previous_path, entry.previous_line_count = None, old.indexed_lines
        if old.blob_sha == entry.blob_sha and old.mode == entry.mode:
            entry.change = Change.UNCHANGED.value
            if learn and entry.skip_reason is None:
                entry.size, entry.line_count = old.size, old.line_count
                entry.encoding, entry.skip_reason = old.encoding, old.skip_reason
        else:
            entry.change = Change.MODIFIED.value
    deleted = []
    for path in sorted(gone):
        old = gone[path]
        deleted.append(
            ManifestEntry(
                path=path,
                blob_sha=old.blob_sha,
                mode=old.mode,
                change=Change.DELETED.value,
                previous_line_count=old.indexed_lines,
            )
        )
    return deleted


def stale_document_ids(project_id: int, entries: Iterable[ManifestEntry]) -> Iterator[str]:
    """Exactly the documents the base had and the new manifest has not.

    Every line of a deleted file or of a renamed file's old path, and the lines past the new
    end of a file that got shorter (or that is no longer indexed at all).
    """
    for entry in entries:
        before = entry.previous_line_count or 0
        if not before:
            continue
        if entry.change in (Change.DELETED.value, Change.RENAMED.value):
            yield from document_ids(project_id, entry.previous_path or entry.path, 1, before)
        elif entry.indexed_lines < before:
            yield from document_ids(project_id, entry.path, entry.indexed_lines + 1, before)


@dataclass(frozen=True)
class ManifestSummary:
    files: int
    indexed_files: int
    lines: int
    indexed_bytes: int
    skipped: dict[str, int]
    changes: dict[str, int]


def present_rows(table: pa.Table) -> pa.Table:
    """The paths that exist at the manifest's commit: its deleted rows left out."""
    return table.filter(pc.fill_null(pc.not_equal(table["change"], Change.DELETED.value), True))


def summarize(table: pa.Table) -> ManifestSummary:
    change = table.column("change")
    present = present_rows(table)
    indexed = present.filter(pc.is_null(present.column("skip_reason")))
    reasons = present.column("skip_reason").drop_null().to_pylist()
    return ManifestSummary(
        files=present.num_rows,
        indexed_files=indexed.num_rows,
        lines=pc.sum(indexed.column("line_count")).as_py() or 0,
        indexed_bytes=pc.sum(indexed.column("size")).as_py() or 0,
        skipped=dict(sorted(Counter(reasons).items())),
        changes=dict(sorted(Counter(change.drop_null().to_pylist()).items())),
    )


def outcome_in_words(
    commit: str, base_commit: str | None, written: int, deleted: int, changes: dict[str, int]
) -> str:
    """What a write did, for the asset page: a run with nothing to do says it is up to date,
    where its counts alone (all zeros) read as if nothing had been indexed."""
    at = commit[:12]
    if written == 0 and deleted == 0:
        if base_commit == commit:
            return f"up to date at {at}: this commit was indexed already"
        since = f" since {base_commit[:12]}" if base_commit else ""
        return f"up to date at {at}: no indexed file changed{since}"
    changed = {change: n for change, n in changes.items() if n and change != "unchanged"}
    files = ", ".join(f"{n:,} {change}" for change, n in changed.items())
    source = f"from {base_commit[:12]}" if base_commit else "from nothing"
    return f"indexed {at} ({source}): {written:,} documents written, {deleted:,} deleted" + (
        f"; tree entries {files}" if files else ""
    )
