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

    def describe(self, position: int) -> str:
        """Where a failed document comes from, for error messages: file path and line."""
        lines = self.payloads[position].as_py().split(b"\n")
        if len(lines) >= 2 and lines[1]:
            try:
                source = json.loads(lines[1])
                return f"{source.get('file_path')}:{source.get('line_number')}"
            except ValueError:
                pass
        return f"document {self.doc_ids[position].as_py()}"


def concat_operations(parts: list[BulkOperations]) -> BulkOperations:
    if len(parts) == 1:
        return parts[0]
    return BulkOperations(
        pa.concat_arrays([p.doc_ids for p in parts]),
        pa.concat_arrays([p.payloads for p in parts]),
    )


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


def index_operations(batch: pa.RecordBatch) -> BulkOperations:
    """`index` operations with explicit ids, each document's JSON built column by column.

    No Python work per document or field: Arrow escapes and joins whole columns.
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
