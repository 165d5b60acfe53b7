"""Line documents: one per line of an indexed file, with an id that makes re-runs idempotent."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from gitlab_es_pipeline.core.lines import cap_lines, split_lines

LINE_DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("project_id", pa.int64(), nullable=False),
        pa.field("repository_name", pa.string(), nullable=False),
        pa.field("branch", pa.string(), nullable=False),
        pa.field("commit_sha", pa.string(), nullable=False),
        pa.field("file_path", pa.string(), nullable=False),
        pa.field("blob_sha", pa.string(), nullable=False),
        pa.field("line_number", pa.int32(), nullable=False),
        pa.field("line_content", pa.string(), nullable=False),
        pa.field("line_truncated", pa.bool_(), nullable=False),
        pa.field("web_url", pa.string(), nullable=False),
    ]
)

# Columns that are not part of the Elasticsearch _source.
NON_SOURCE_COLUMNS = ("doc_id",)

# Columns with one value per run or per file: what a Parquet dictionary compresses well.
REPEATED_COLUMNS = (
    "project_id",
    "repository_name",
    "branch",
    "commit_sha",
    "file_path",
    "blob_sha",
    "line_truncated",
)


@dataclass(frozen=True)
class RepositorySnapshot:
    """A repository at one commit of its default branch: what every document of a run shares."""

    project_id: int
    repository_name: str
    branch: str
    commit_sha: str
    web_url: str


def path_digest(path: str) -> str:
    """128 bits of the path: ids stay short (Elasticsearch allows 512 bytes) for any path length."""
    return hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


def document_id_prefix(project_id: int, path: str) -> str:
    return f"{project_id}-{path_digest(path)}-"


def document_id(project_id: int, path: str, line_number: int) -> str:
    """Deterministic from (project, path, line): the same line is overwritten, never duplicated."""
    return f"{document_id_prefix(project_id, path)}{line_number}"


def document_ids(project_id: int, path: str, first_line: int, last_line: int) -> Iterator[str]:
    """The ids of lines first_line..last_line of a file: what exact deletes need."""
    prefix = document_id_prefix(project_id, path)
    return (f"{prefix}{n}" for n in range(first_line, last_line + 1))


def line_url_prefix(snapshot: RepositorySnapshot, path: str) -> str:
    """GitLab's permalink to a file at a commit; the line number follows "#L"."""
    return f"{snapshot.web_url}/-/blob/{snapshot.commit_sha}/{quote(path, safe='/')}#L"


def _constant(value: object, length: int, type_: pa.DataType) -> pa.Array:
    return pa.repeat(pa.scalar(value, type_), length)


def file_documents(
    snapshot: RepositorySnapshot,
    path: str,
    blob_sha: str,
    text: str,
    max_line_chars: int,
) -> pa.RecordBatch | None:
    """All documents of one file as one Arrow batch; None for a file with no lines."""
    lines = split_lines(text)
    n = len(lines)
    if n == 0:
        return None
    content, truncated = cap_lines(lines, max_line_chars)
    numbers = pa.array(range(1, n + 1), type=pa.int32())
    number_text = pc.cast(numbers, pa.string())
    doc_id = pc.binary_join_element_wise(
        document_id_prefix(snapshot.project_id, path), number_text, ""
    )
    web_url = pc.binary_join_element_wise(line_url_prefix(snapshot, path), number_text, "")
    return pa.RecordBatch.from_arrays(
        [
            doc_id,
            _constant(snapshot.project_id, n, pa.int64()),
            _constant(snapshot.repository_name, n, pa.string()),
            _constant(snapshot.branch, n, pa.string()),
            _constant(snapshot.commit_sha, n, pa.string()),
            _constant(path, n, pa.string()),
            _constant(blob_sha, n, pa.string()),
            numbers,
            content,
            truncated,
            web_url,
        ],
        schema=LINE_DOCUMENT_SCHEMA,
    )


def coalesce_batches(
    batches: Iterable[pa.RecordBatch], target_rows: int, schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    """Many small per-file batches -> row groups of about target_rows, memory bounded by that."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        pending.append(batch)
        rows += batch.num_rows
        if rows >= target_rows:
            yield pa.Table.from_batches(pending, schema=schema).combine_chunks().to_batches()[0]
            pending, rows = [], 0
    if pending:
        yield pa.Table.from_batches(pending, schema=schema).combine_chunks().to_batches()[0]
