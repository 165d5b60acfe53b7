"""Line documents: one per line of an indexed file, with an id that makes re-runs idempotent."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gitlab_es_pipeline.core.lines import cap_lines, count_lines, split_texts

LINE_DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("project_id", pa.int64(), nullable=False),
        # private, internal or public: with project_id, what a search filters on per user.
        pa.field("visibility", pa.string(), nullable=False),
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
    "visibility",
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
    visibility: str = "private"


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


@dataclass(frozen=True)
class FileText:
    """One file's decoded text at the snapshot's commit: what its line documents come from."""

    path: str
    blob_sha: str
    text: str

    @cached_property
    def line_count(self) -> int:
        """Counted once: the manifest records it, and the batching needs it."""
        return count_lines(self.text)


def line_document_batches(
    snapshot: RepositorySnapshot,
    files: Iterable[FileText],
    max_line_chars: int,
    rows: int,
) -> Iterator[pa.RecordBatch]:
    """The files' line documents, in order, in batches of about `rows` lines (a row group).

    Memory holds one batch's files. The Arrow work is done once per batch, for all of its
    files: done per file, its fixed cost would outweigh the lines in a repository of small
    files.
    """
    pending: list[FileText] = []
    lines = 0
    for file in files:
        if file.line_count == 0:
            continue
        pending.append(file)
        lines += file.line_count
        if lines >= rows:
            yield _line_documents(snapshot, pending, max_line_chars)
            pending, lines = [], 0
    if pending:
        yield _line_documents(snapshot, pending, max_line_chars)


def _line_documents(
    snapshot: RepositorySnapshot, files: list[FileText], max_line_chars: int
) -> pa.RecordBatch:
    lines = split_texts([file.text for file in files])
    content, truncated = cap_lines(lines.flatten(), max_line_chars)
    n = len(content)
    # Which file each line is of, and its number in that file.
    starts = lines.offsets.to_numpy() - lines.offsets[0].as_py()
    file_of_line = pc.list_parent_indices(lines)
    numbers = pa.array(
        np.arange(1, n + 1, dtype=np.int32) - np.repeat(starts[:-1], np.diff(starts))
    )
    number_text = pc.cast(numbers, pa.string())

    def per_line(per_file: list[str]) -> pa.Array:
        return pa.array(per_file, pa.string()).take(file_of_line)

    doc_id_prefixes = [document_id_prefix(snapshot.project_id, f.path) for f in files]
    url_prefixes = [line_url_prefix(snapshot, f.path) for f in files]
    return pa.RecordBatch.from_arrays(
        [
            pc.binary_join_element_wise(per_line(doc_id_prefixes), number_text, ""),
            _constant(snapshot.project_id, n, pa.int64()),
            _constant(snapshot.visibility, n, pa.string()),
            _constant(snapshot.repository_name, n, pa.string()),
            _constant(snapshot.branch, n, pa.string()),
            _constant(snapshot.commit_sha, n, pa.string()),
            per_line([f.path for f in files]),
            per_line([f.blob_sha for f in files]),
            numbers,
            content,
            truncated,
            pc.binary_join_element_wise(per_line(url_prefixes), number_text, ""),
        ],
        schema=LINE_DOCUMENT_SCHEMA,
    )
