"""Line documents, ids, links, manifests and bulk serialization."""

import json

import pyarrow as pa

from gitlab_es_pipeline.core.bulk import (
    chunk_operations,
    delete_operations,
    describe_operation,
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
    ops = list(index_operations(batch))
    assert [op.doc_id for op in ops] == batch.column("doc_id").to_pylist()
    for op, row in zip(ops, batch.to_pylist(), strict=True):
        action, source, end = op.payload.split(b"\n")
        assert end == b""
        assert json.loads(action) == {"index": {"_id": row["doc_id"]}}
        assert json.loads(source) == {k: v for k, v in row.items() if k != "doc_id"}
    assert describe_operation(ops[1]) == "x.py:2"


def test_json_strings_escape_every_character_json_requires() -> None:
    every_ascii = "".join(chr(c) for c in range(128))
    values = [every_ascii, "", "plain", 'a"b', "back\\slash", "\u2028 é 😀 \x7f"]
    encoded = json_strings(pa.array(values, pa.string())).to_pylist()
    assert [json.loads(e) for e in encoded] == values
    # Only backslash, quote and control characters are escaped; the rest stays as it is.
    assert encoded[2] == '"plain"' and encoded[4] == '"back\\\\slash"' and "😀" in encoded[5]


def test_chunks_are_bounded_by_bytes_and_count() -> None:
    ops = list(delete_operations(f"id-{i}" for i in range(100)))
    size = len(ops[0].payload)
    chunks = list(chunk_operations(ops, max_bytes=size * 7, max_docs=5))
    assert [op for c in chunks for op in c] == ops
    assert all(len(c) <= 5 for c in chunks)
    chunks = list(chunk_operations(ops, max_bytes=size * 3, max_docs=1000))
    assert all(sum(len(o.payload) for o in c) <= size * 3 for c in chunks)
    # One operation larger than the limit still goes, alone.
    assert list(chunk_operations(ops[:2], max_bytes=1, max_docs=10)) == [[ops[0]], [ops[1]]]
