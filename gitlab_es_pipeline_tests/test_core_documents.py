"""Line documents, ids, links, manifests and bulk serialization."""

import itertools
import json

import pyarrow as pa
import pytest

from gitlab_es_pipeline.core.bulk import (
    BulkOperations,
    chunk_operations,
    delete_operations,
    index_operations,
    json_strings,
)
from gitlab_es_pipeline.core.documents import (
    LINE_DOCUMENT_SCHEMA,
    RepositorySnapshot,
    coalesce_batches,
    document_id,
    document_ids,
    file_documents,
)

SNAPSHOT = RepositorySnapshot(
    7, "acme/backend", "main", "c" * 40, "https://gitlab.example.com/acme/backend"
)


def test_document_ids_are_deterministic_short_and_distinct() -> None:
    long_path = "deep/" * 2000 + "file.txt"
    assert document_id(7, "a.py", 1) == document_id(7, "a.py", 1)
    assert len(document_id(7, long_path, 123456).encode()) < 512
    ids = {
        document_id(p, path, n)
        for p in (7, 8)
        for path in ("a.py", "b.py", long_path)
        for n in (1, 2, 12)
    }
    assert len(ids) == 2 * 3 * 3
    # "1" + "2" must not collide with "12": the line number is a separate field of the id.
    assert document_id(7, "a.py1", 2) != document_id(7, "a.py", 12)
    assert list(document_ids(7, "a.py", 2, 4)) == [document_id(7, "a.py", n) for n in (2, 3, 4)]


def test_file_documents_fields() -> None:
    batch = file_documents(SNAPSHOT, "dir with space/ü#x.py", "b" * 40, "a\r\n\nlong line\n", 4)
    assert batch is not None and batch.schema == LINE_DOCUMENT_SCHEMA
    rows = batch.to_pylist()
    assert [r["line_number"] for r in rows] == [1, 2, 3]
    assert [r["line_content"] for r in rows] == ["a", "", "long"]
    assert [r["line_truncated"] for r in rows] == [False, False, True]
    assert rows[0]["doc_id"] == document_id(7, "dir with space/ü#x.py", 1)
    assert rows[2]["web_url"] == (
        "https://gitlab.example.com/acme/backend/-/blob/"
        + "c" * 40
        + "/dir%20with%20space/%C3%BC%23x.py#L3"
    )
    assert {r["file_path"] for r in rows} == {"dir with space/ü#x.py"}
    assert {r["commit_sha"] for r in rows} == {"c" * 40}
    assert file_documents(SNAPSHOT, "empty", "e" * 40, "", 4) is None


def test_coalesce_batches_keeps_every_row_in_order() -> None:
    batches = [
        file_documents(SNAPSHOT, f"f{i}.txt", "b" * 40, "x\n" * (i + 1), 10) for i in range(10)
    ]
    out = list(coalesce_batches(batches, 12, LINE_DOCUMENT_SCHEMA))
    assert sum(b.num_rows for b in out) == sum(range(1, 11))
    assert all(b.num_rows >= 12 for b in out[:-1])
    assert pa.Table.from_batches(out).column("doc_id").to_pylist() == [
        r["doc_id"] for b in batches for r in b.to_pylist()
    ]


def test_index_operations_are_valid_ndjson_with_ids() -> None:
    text = 'quote " backslash \\ tab \t ctrl \x01 emoji 😀\nsecond\n'
    batch = file_documents(SNAPSHOT, "x.py", "b" * 40, text, 4096)
    ops = index_operations(batch)
    assert ops.doc_ids.to_pylist() == batch.column("doc_id").to_pylist()
    lines = ops.body().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 2 * batch.num_rows + 1
    for i, row in enumerate(batch.to_pylist()):
        assert json.loads(lines[2 * i]) == {"index": {"_id": row["doc_id"]}}
        assert json.loads(lines[2 * i + 1]) == {k: v for k, v in row.items() if k != "doc_id"}
    assert ops.describe(1) == "x.py:2"
    assert ops.slice(1).body() == b"\n".join(lines[2:])


def test_json_strings_escape_every_character_json_requires() -> None:
    every_ascii = "".join(chr(c) for c in range(128))
    values = [every_ascii, "", "plain", 'a"b', "back\\slash", "\u2028 é 😀 \x7f"]
    encoded = json_strings(pa.array(values, pa.string())).to_pylist()
    assert [json.loads(e) for e in encoded] == values
    # Only backslash, quote and control characters are escaped; the rest stays as it is.
    assert encoded[2] == '"plain"' and encoded[4] == '"back\\\\slash"' and "😀" in encoded[5]


def _ids(chunks: list[BulkOperations]) -> list[str]:
    return [i for c in chunks for i in c.doc_ids.to_pylist()]


@pytest.mark.parametrize("per_batch", [1, 7, 30, 1000])
def test_chunks_are_bounded_by_bytes_and_count_across_input_batches(per_batch: int) -> None:
    ids = [f"id-{i}" for i in range(100)]
    payload = {i: b'{"delete":{"_id":"%s"}}\n' % i.encode() for i in ids}
    ops = list(delete_operations(ids, per_batch=per_batch))
    chunks = list(chunk_operations(ops, max_bytes=1000, max_docs=5))
    assert _ids(chunks) == ids
    assert [len(c) for c in chunks] == [5] * 20  # full chunks, wherever the batches end
    limit = 80  # three operations of 26 bytes fit, three of 27 do not
    chunks = list(chunk_operations(ops, max_bytes=limit, max_docs=1000))
    assert _ids(chunks) == ids
    assert {len(c) for c in chunks} == {2, 3}
    for chunk, after in itertools.pairwise(chunks):  # each as full as the limit allows
        next_id = after.doc_ids[0].as_py()
        assert len(chunk.body()) <= limit < len(chunk.body()) + len(payload[next_id])
    assert b"".join(c.body() for c in chunks) == b"".join(payload.values())
    # One operation larger than the limit still goes, alone.
    single = list(chunk_operations(ops, max_bytes=1, max_docs=10))
    assert [len(c) for c in single] == [1] * 100 and _ids(single) == ids


def test_retried_operations_are_taken_out_of_a_chunk() -> None:
    ops = next(delete_operations(["a", "b", "c", "d"]))
    assert ops.take([1, 3]).body() == b'{"delete":{"_id":"b"}}\n{"delete":{"_id":"d"}}\n'
    assert ops.describe(2) == "document c"
