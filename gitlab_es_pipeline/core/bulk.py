"""Line documents -> Elasticsearch bulk operations, serialized once, in chunks bounded by bytes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from gitlab_es_pipeline.core.documents import NON_SOURCE_COLUMNS


class BulkOperation(NamedTuple):
    """One document's action and source lines, ready to be joined into a _bulk body.

    A NamedTuple: one is made per line, and a tuple is the cheapest object Python builds.
    """

    doc_id: str
    payload: bytes


# JSON's escapes for the control characters that have a short form; the others are \u00XX.
_SHORT_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
_RARE_CONTROL = "[\\x00-\\x07\\x0b\\x0e-\\x1f]"
_NEEDS_ESCAPING = '["\\\\\\x00-\\x1f]'


def json_strings(values: pa.Array) -> pa.Array:
    """JSON string literals of a string column, escaped by Arrow's C++ kernels.

    One scan decides whether anything needs escaping (ids, shas, names and URLs usually not);
    then backslash and quote, tab, CR (and the other short escapes) when present; any other
    control character (rare in source text) costs one more pass each.
    """
    if not pc.any(pc.match_substring_regex(values, _NEEDS_ESCAPING)).as_py():
        return pc.binary_join_element_wise('"', values, '"', "")
    out = pc.replace_substring(values, "\\", "\\\\")
    out = pc.replace_substring(out, '"', '\\"')
    for char, escape in _SHORT_ESCAPES.items():
        if pc.any(pc.match_substring(out, char)).as_py():
            out = pc.replace_substring(out, char, escape)
    if pc.any(pc.match_substring_regex(out, _RARE_CONTROL)).as_py():
        for code in [*range(0x00, 0x08), 0x0B, *range(0x0E, 0x20)]:
            out = pc.replace_substring(out, chr(code), f"\\u{code:04x}")
    return pc.binary_join_element_wise('"', out, '"', "")


def _json_values(column: pa.Array) -> pa.Array:
    if pa.types.is_string(column.type):
        return json_strings(column)
    if pa.types.is_boolean(column.type):
        return pc.if_else(column, "true", "false")
    if pa.types.is_integer(column.type):
        return pc.cast(column, pa.string())
    raise TypeError(f"no JSON encoding for {column.type}")


def index_operations(batch: pa.RecordBatch) -> Iterator[BulkOperation]:
    """`index` operations with explicit ids, each document's JSON built column by column.

    No Python work per field: Arrow escapes and joins whole columns, and Python only takes
    the finished bytes of each document (the bulk writer needs them one by one to cut
    chunks and to re-send single items).
    """
    parts: list[pa.Array | str] = []
    separator = "{"
    for name in batch.schema.names:
        if name in NON_SOURCE_COLUMNS:
            continue
        parts += [f'{separator}"{name}":', _json_values(batch.column(name))]
        separator = ","
    doc_id = batch.column("doc_id")
    # ids are [0-9a-f-] only (see documents.document_id): no JSON escaping needed.
    payloads = pc.binary_join_element_wise(
        '{"index":{"_id":"', doc_id, '"}}\n', *parts, "}\n", ""
    ).cast(pa.binary())
    return map(BulkOperation, doc_id.to_pylist(), payloads.to_pylist())


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
