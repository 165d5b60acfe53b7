"""Line documents -> Elasticsearch bulk operations, serialized once, in chunks bounded by bytes."""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import NamedTuple

import numpy as np
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

    def body(self) -> bytes:
        return bytes(self.body_view())

    def body_view(self) -> memoryview:
        """The operations' bytes where they lie, not copied."""
        data = self.payloads.buffers()[2]
        if data is None:
            return memoryview(b"")
        offsets = self._offsets()
        start, end = offsets[0].as_py(), offsets[len(offsets) - 1].as_py()
        return memoryview(data)[start:end]

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


class BulkChunk(NamedTuple):
    """The operations of one request: slices of the batches they were built in, side by side.

    Not concatenated: the request body is the one copy of their bytes.
    """

    parts: tuple[BulkOperations, ...]

    def __len__(self) -> int:
        return sum(map(len, self.parts))

    @property
    def doc_ids(self) -> pa.ChunkedArray:
        return pa.chunked_array([part.doc_ids for part in self.parts], pa.string())

    def body(self) -> bytes:
        return b"".join(part.body_view() for part in self.parts)

    def _locate(self, position: int) -> tuple[BulkOperations, int]:
        for part in self.parts:
            if position < len(part):
                return part, position
            position -= len(part)
        raise IndexError(position)

    def origin(self, position: int) -> Origin:
        part, at = self._locate(position)
        return part.origin(at)

    def take(self, positions: list[int]) -> BulkChunk:
        """The operations to send again (items refused for a while), `positions` ascending.

        Consecutive ones of a part stay one slice: a chunk refused whole (429 for every item)
        is sent again as the slices it was, not as thousands of one-operation slices.
        """
        runs: list[tuple[BulkOperations, int, int]] = []  # part, start, length
        for position in positions:
            part, at = self._locate(position)
            if runs and runs[-1][0] is part and runs[-1][1] + runs[-1][2] == at:
                runs[-1] = (part, runs[-1][1], runs[-1][2] + 1)
            else:
                runs.append((part, at, 1))
        return BulkChunk(tuple(part.slice(start, length) for part, start, length in runs))


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
_JSON_BOOLEANS = pa.array(["false", "true"], pa.string())
_QUOTE_AND_BACKSLASH = (ord('"'), ord("\\"))
_FIRST_PRINTABLE = 0x20


def _special_characters(values: pa.StringArray) -> list[str]:
    """The characters of the column that JSON must escape, backslash first.

    A few C-level passes over the column's bytes, however many rows it has: two memchr for
    quote and backslash, and the minimum byte tells whether any control character occurs
    (rarely any but tab).
    """
    _, offsets, data = values.buffers()
    if data is None or len(values) == 0:
        return []
    ends = np.frombuffer(offsets, np.int32)
    start, end = int(ends[values.offset]), int(ends[values.offset + len(values)])
    if end == start:
        return []
    raw = memoryview(data)[start:end].tobytes()  # bytes.find is memchr: faster than a scan
    found = {b for b in _QUOTE_AND_BACKSLASH if raw.find(b) >= 0}
    column = np.frombuffer(raw, np.uint8)
    if column.min() < _FIRST_PRINTABLE:
        found.update(np.unique(column[column < _FIRST_PRINTABLE]).tolist())
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


def _json_values(column: pa.Array) -> pa.Array:
    """Each row's value as JSON text (a string without its quotes)."""
    if pa.types.is_string(column.type):
        return json_string_contents(column)
    if pa.types.is_boolean(column.type):
        return _JSON_BOOLEANS.take(pc.cast(column, pa.int8()))
    if pa.types.is_integer(column.type):
        return pc.cast(column, pa.string())
    raise TypeError(f"no JSON encoding for {column.type}")


def _json_fields(name: str, column: pa.Array, separator: str) -> list[pa.Array | str]:
    """`"name":value` for every row, as parts of an element-wise join.

    A dictionary column (the staged file's per-run and per-file columns) is encoded once per
    distinct value, and a column of one value becomes part of the join's literal text.
    """
    quote = '"' if pa.types.is_string(column.type) or _is_string_dictionary(column) else ""
    key = f'{separator}"{name}":{quote}'
    if isinstance(column, pa.DictionaryArray):
        values = _json_values(column.dictionary)
        if column.null_count == 0 and _single_index(column.indices):
            return [key + values[column.indices[0].as_py()].as_py() + quote]
        return [key, values.take(column.indices), quote]
    return [key, _json_values(column), quote]


def _is_string_dictionary(column: pa.Array) -> bool:
    return pa.types.is_dictionary(column.type) and pa.types.is_string(column.type.value_type)


def _single_index(indices: pa.Array) -> bool:
    extremes = pc.min_max(indices)
    return len(indices) > 0 and extremes["min"].as_py() == extremes["max"].as_py()


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
) -> Iterator[BulkChunk]:
    """Re-cut into chunks of at most max_bytes (a single larger operation goes alone) and
    max_docs; a chunk may span input batches. Nothing is copied: a chunk holds slices of
    the batches, so memory holds the batches a chunk spans, at most one chunk more."""
    carried: list[BulkOperations] = []
    docs = size = 0
    for ops in operations:
        offsets = ops.byte_offsets()
        start = 0
        while start < len(ops):
            # The most operations from `start` that fit beside what is carried.
            end = min(
                bisect_right(offsets, offsets[start] + max_bytes - size, start) - 1,
                start + max_docs - docs,
            )
            if end == start and not carried:
                end = start + 1  # an operation over max_bytes goes alone
            if end > start:
                carried.append(ops.slice(start, end - start))
                docs += end - start
                size += offsets[end] - offsets[start]
                start = end
            if start < len(ops) or docs >= max_docs or size >= max_bytes:
                yield BulkChunk(tuple(carried))
                carried, docs, size = [], 0, 0
    if carried:
        yield BulkChunk(tuple(carried))
