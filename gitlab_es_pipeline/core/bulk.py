"""Line documents -> Elasticsearch bulk operations, serialized once, in chunks bounded by bytes."""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from gitlab_es_pipeline.core.documents import NON_SOURCE_COLUMNS


class BulkOperations(NamedTuple):
    """Bulk operations side by side in Arrow arrays: no Python object per document.

    Element i of `payloads` is operation i's NDJSON lines (action, then source for an index),
    newline-terminated, so that a run of operations is one contiguous slice of the array's
    data buffer: a request body costs one copy, whatever the number of documents.
    """

    doc_ids: pa.Array  # string
    payloads: pa.Array  # binary

    def __len__(self) -> int:
        return len(self.payloads)

    def _offsets(self) -> pa.Array:
        return pa.Array.from_buffers(
            pa.int32(),
            len(self.payloads) + 1,
            [None, self.payloads.buffers()[1]],
            offset=self.payloads.offset,
        )

    def byte_offsets(self) -> list[int]:
        """Where each operation starts in the data buffer, and where the last one ends."""
        return self._offsets().to_pylist()

    def nbytes(self) -> int:
        offsets = self._offsets()
        return offsets[len(offsets) - 1].as_py() - offsets[0].as_py()

    def body(self) -> bytes:
        offsets = self.byte_offsets()
        data = self.payloads.buffers()[2]
        return b"" if data is None else data[offsets[0] : offsets[-1]].to_pybytes()

    def slice(self, start: int, length: int | None = None) -> BulkOperations:
        return BulkOperations(self.doc_ids.slice(start, length), self.payloads.slice(start, length))

    def take(self, positions: list[int]) -> BulkOperations:
        where = pa.array(positions, pa.int64())
        return BulkOperations(self.doc_ids.take(where), self.payloads.take(where))

    def origin(self, position: int) -> Origin:
        """Where an operation's document comes from, for error reports: file path and line
        (from its source; a delete has none)."""
        doc_id = self.doc_ids[position].as_py()
        lines = self.payloads[position].as_py().split(b"\n")
        if len(lines) >= 2 and lines[1]:
            try:
                source = json.loads(lines[1])
                return Origin(doc_id, source.get("file_path"), source.get("line_number"))
            except ValueError:
                pass
        return Origin(doc_id, None, None)


class Origin(NamedTuple):
    doc_id: str
    file_path: str | None
    line_number: int | None

    def __str__(self) -> str:
        if self.file_path is None:
            return f"document {self.doc_id}"
        return f"{self.file_path}:{self.line_number}"


class ItemFailure(NamedTuple):
    """An operation Elasticsearch refused for good: which document, and why."""

    origin: Origin
    status: int
    error: str

    def __str__(self) -> str:
        return f"{self.origin}: HTTP {self.status} {self.error}"


def concat_operations(parts: list[BulkOperations]) -> BulkOperations:
    if len(parts) == 1:
        return parts[0]
    return BulkOperations(
        pa.concat_arrays([p.doc_ids for p in parts]),
        pa.concat_arrays([p.payloads for p in parts]),
    )


# What JSON must escape inside a string: backslash, quote and the control characters. None of
# these bytes occurs inside a multi-byte UTF-8 sequence, so the bytes of a column tell.
_SHORT_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}
_JSON_SPECIAL = frozenset(bytes(range(0x20)) + b'"\\')
_JSON_BOOLEANS = pa.array(["false", "true"], pa.string())
_NOT_JSON_SPECIAL = bytes(b for b in range(256) if b not in _JSON_SPECIAL)


def _special_characters(values: pa.StringArray) -> list[str]:
    """The characters of the column that JSON must escape, backslash first: one C-level pass
    over the column's bytes, however many rows it has."""
    _, offsets, data = values.buffers()
    if data is None or len(values) == 0:
        return []
    ends = memoryview(offsets).cast("i")
    start, end = ends[values.offset], ends[values.offset + len(values)]
    found = set(memoryview(data)[start:end].tobytes().translate(None, _NOT_JSON_SPECIAL))
    return sorted((chr(b) for b in found), key=lambda char: char != "\\")


def json_string_contents(values: pa.StringArray) -> pa.StringArray:
    """A string column escaped for JSON, without the quotes (the caller's template has them).

    Arrow's C++ kernels do the work, one pass for each character that actually occurs:
    usually none (ids, shas, names, URLs) or a few (quote, backslash, tab in source text).
    """
    for char in _special_characters(values):
        escape = _SHORT_ESCAPES.get(char) or f"\\u{ord(char):04x}"
        values = pc.replace_substring(values, char, escape)
    return values


def _json_fields(name: str, column: pa.Array, separator: str) -> list[pa.Array | str]:
    """`"name":value` for every row, as parts of an element-wise join."""
    key = f'{separator}"{name}":'
    if pa.types.is_string(column.type):
        return [key + '"', json_string_contents(column), '"']
    if pa.types.is_boolean(column.type):
        return [key, _JSON_BOOLEANS.take(pc.cast(column, pa.int8()))]
    if pa.types.is_integer(column.type):
        return [key, pc.cast(column, pa.string())]
    raise TypeError(f"no JSON encoding for {column.type}")


def _merge_literals(parts: list[pa.Array | str]) -> list[pa.Array | str]:
    """Adjacent literal parts as one: fewer arguments for the join kernel to walk."""
    merged: list[pa.Array | str] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    return merged


def index_operations(batch: pa.RecordBatch) -> BulkOperations:
    """`index` operations with explicit ids, each document's JSON built column by column.

    No Python work per document or field: Arrow escapes and joins whole columns.
    """
    doc_id = batch.column("doc_id")
    # ids are [0-9a-f-] only (see documents.document_id): no JSON escaping needed.
    parts: list[pa.Array | str] = ['{"index":{"_id":"', doc_id, '"}}\n']
    separator = "{"
    for name in batch.schema.names:
        if name not in NON_SOURCE_COLUMNS:
            parts += _json_fields(name, batch.column(name), separator)
            separator = ","
    parts.append("}\n")
    payloads = pc.binary_join_element_wise(*_merge_literals(parts), "").cast(pa.binary())
    return BulkOperations(doc_id, payloads)


def delete_operations(doc_ids: Iterable[str], per_batch: int = 8192) -> Iterator[BulkOperations]:
    """`delete` operations by id, built a batch of ids at a time."""
    it = iter(doc_ids)
    while ids := list(islice(it, per_batch)):
        column = pa.array(ids, pa.string())
        payloads = pc.binary_join_element_wise('{"delete":{"_id":"', column, '"}}\n', "")
        yield BulkOperations(column, payloads.cast(pa.binary()))


def chunk_operations(
    operations: Iterable[BulkOperations], max_bytes: int, max_docs: int
) -> Iterator[BulkOperations]:
    """Re-cut into chunks of at most max_bytes (a single larger operation goes alone) and
    max_docs; a chunk may span input batches, and memory holds at most one chunk more."""
    carried: list[BulkOperations] = []
    for ops in operations:
        if len(ops) == 0:
            continue
        carried.append(ops)
        if sum(map(len, carried)) < max_docs and sum(c.nbytes() for c in carried) < max_bytes:
            continue
        merged = concat_operations(carried)
        offsets = merged.byte_offsets()
        start = 0
        while True:
            end = min(
                bisect_right(offsets, offsets[start] + max_bytes, start + 1) - 1,
                start + max_docs,
            )
            end = max(end, start + 1)  # an operation over max_bytes goes alone
            if end >= len(merged) and not _full(offsets, start, end, max_bytes, max_docs):
                break  # the rest waits for more operations
            yield merged.slice(start, end - start)
            start = end
            if start == len(merged):
                break
        carried = [merged.slice(start)] if start < len(merged) else []
    if carried:
        yield concat_operations(carried)


def _full(offsets: list[int], start: int, end: int, max_bytes: int, max_docs: int) -> bool:
    return end - start >= max_docs or offsets[end] - offsets[start] >= max_bytes
