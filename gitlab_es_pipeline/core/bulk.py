"""Line documents -> Elasticsearch bulk operations, serialized once, in chunks bounded by bytes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import pyarrow as pa

from gitlab_es_pipeline.core.documents import NON_SOURCE_COLUMNS


class BulkOperation(NamedTuple):
    """One document's action and source lines, ready to be joined into a _bulk body.

    A NamedTuple: one is made per line, and a tuple is the cheapest object Python builds.
    """

    doc_id: str
    payload: bytes


def index_operations(batch: pa.RecordBatch) -> Iterator[BulkOperation]:
    """`index` operations with explicit ids; the JSON is written by pandas' C encoder."""
    ids = batch.column("doc_id").to_pylist()
    source = batch.drop_columns(list(NON_SOURCE_COLUMNS)).to_pandas()
    sources = source.to_json(orient="records", lines=True, force_ascii=False).split("\n")
    # JSON strings escape newlines, so each line is one document; the text ends with "\n".
    # ids are [0-9a-f-] only (see documents.document_id): no JSON escaping needed.
    return (
        BulkOperation(doc_id, f'{{"index":{{"_id":"{doc_id}"}}}}\n{doc}\n'.encode())
        for doc_id, doc in zip(ids, sources[: len(ids)], strict=True)
    )


def delete_operations(doc_ids: Iterable[str]) -> Iterator[BulkOperation]:
    for doc_id in doc_ids:
        yield BulkOperation(doc_id, f'{{"delete":{{"_id":"{doc_id}"}}}}\n'.encode())


def chunk_operations(
    operations: Iterable[BulkOperation], max_bytes: int, max_docs: int
) -> Iterator[list[BulkOperation]]:
    """Chunks of at most max_bytes (a single larger operation goes alone) and max_docs."""
    chunk: list[BulkOperation] = []
    size = 0
    for op in operations:
        if chunk and (size + len(op.payload) > max_bytes or len(chunk) >= max_docs):
            yield chunk
            chunk, size = [], 0
        chunk.append(op)
        size += len(op.payload)
    if chunk:
        yield chunk


def describe_operation(op: BulkOperation) -> str:
    """Where a failed document comes from, for error messages: file path and line."""
    lines = op.payload.split(b"\n")
    if len(lines) >= 2 and lines[1]:
        try:
            source = json.loads(lines[1])
            return f"{source.get('file_path')}:{source.get('line_number')}"
        except ValueError:
            pass
    return f"document {op.doc_id}"
