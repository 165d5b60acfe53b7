"""Line documents, ids, links, manifests and bulk serialization."""

import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from upath import UPath

from gitlab_es_pipeline.core.bulk import (
    BulkChunk,
    chunk_operations,
    delete_operations,
    index_operations,
    json_string_contents,
)
from gitlab_es_pipeline.core.documents import (
    LINE_DOCUMENT_SCHEMA,
    REPEATED_COLUMNS,
    FileText,
    RepositorySnapshot,
    document_id,
    document_ids,
    line_document_batches,
)
from gitlab_es_pipeline.defs.io_managers import ParquetFile, stage_parquet

SNAPSHOT = RepositorySnapshot(
    7, "acme/backend", "main", "c" * 40, "https://gitlab.example.com/acme/backend"
)


def test_document_ids_are_deterministic_short_and_distinct() -> None:
    long_path = "deep/" * 2000 + "file.txt"
    # The documented form, computed here, and the same in another interpreter (no per-process
    # salt, as Python's own hash() has).
    digest = hashlib.blake2b(b"a.py", digest_size=16).hexdigest()
    assert document_id(7, "a.py", 1) == f"7-{digest}-1"
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "from gitlab_es_pipeline.core.documents import document_id as d; print(d(7, 'a.py', 1))",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    ).stdout.strip()
    assert other == f"7-{digest}-1"
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


def _documents(files: list[tuple[str, str]], max_line_chars: int = 4096) -> pa.RecordBatch:
    """The documents of (path, text) files as one batch."""
    texts = [FileText(path, "b" * 40, text) for path, text in files]
    return (
        pa.Table.from_batches(
            list(line_document_batches(SNAPSHOT, texts, max_line_chars, rows=10**6)),
            schema=LINE_DOCUMENT_SCHEMA,
        )
        .combine_chunks()
        .to_batches()[0]
    )


def test_line_documents_fields() -> None:
    batch = _documents([("dir with space/ü#x.py", "a\r\n\nlong line\n")], max_line_chars=4)
    assert batch.schema == LINE_DOCUMENT_SCHEMA
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
    empty = [FileText("empty", "e" * 40, "")]
    assert list(line_document_batches(SNAPSHOT, empty, 4, rows=10)) == []


def test_line_document_batches_are_row_groups_of_the_files_in_order() -> None:
    files = [FileText(f"f{i}.txt", f"{i:040d}", "x\n" * i) for i in range(11)]  # f0 is empty
    batches = list(line_document_batches(SNAPSHOT, files, 10, rows=12))
    assert all(b.num_rows >= 12 for b in batches[:-1]) and len(batches) > 3
    rows = [row for b in batches for row in b.to_pylist()]
    expected = [(f.path, f.blob_sha, n) for i, f in enumerate(files) for n in range(1, i + 1)]
    assert [(r["file_path"], r["blob_sha"], r["line_number"]) for r in rows] == expected
    assert [r["doc_id"] for r in rows] == [document_id(7, p, n) for p, _, n in expected]
    assert all(r["web_url"].endswith(f"/{r['file_path']}#L{r['line_number']}") for r in rows)


def test_index_operations_are_valid_ndjson_with_ids() -> None:
    text = 'quote " backslash \\ tab \t ctrl \x01 emoji 😀\nsecond\n'
    batch = _documents([("x.py", text)])
    ops = index_operations(batch)
    assert ops.doc_ids.to_pylist() == batch.column("doc_id").to_pylist()
    lines = ops.body().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 2 * batch.num_rows + 1
    for i, row in enumerate(batch.to_pylist()):
        assert json.loads(lines[2 * i]) == {"index": {"_id": row["doc_id"]}}
        assert json.loads(lines[2 * i + 1]) == {k: v for k, v in row.items() if k != "doc_id"}
    assert str(ops.origin(1)) == "x.py:2" and ops.origin(1).line_number == 2
    assert ops.slice(1).body() == b"\n".join(lines[2:])


def test_json_string_contents_escape_every_character_json_requires() -> None:
    every_ascii = "".join(chr(c) for c in range(128))
    values = [every_ascii, "", "plain", 'a"b', "back\\slash", "\u2028 é 😀 \x7f", "\x00\x1f"]
    array = pa.array(["padding", *values, "more"], pa.string()).slice(1, len(values))
    encoded = json_string_contents(array).to_pylist()
    assert [json.loads(f'"{e}"') for e in encoded] == values
    # Only backslash, quote and control characters are escaped; the rest stays as it is. The
    # last value ends where the slice ends: its control characters are found all the same.
    assert (
        encoded[-1] == "\\u0000\\u001f"
        and encoded[2] == "plain"
        and encoded[4] == "back\\\\slash"
        and "😀" in encoded[5]
    )


def test_index_operations_of_awkward_paths_and_cut_lines_read_back_as_the_rows() -> None:
    text = 'a "quoted" line that is long\n\tshort\n'
    paths = ("x.py", 'we"ird\\path\t.py', "é/😀\x01.py")
    rows = _documents([(path, text) for path in paths], max_line_chars=10).slice(1)
    sources = index_operations(rows).body().split(b"\n")[1::2]
    expected = [{k: v for k, v in row.items() if k != "doc_id"} for row in rows.to_pylist()]
    assert [json.loads(line) for line in sources] == expected
    assert [row["line_truncated"] for row in expected] == [False, True, False, True, False]


def test_index_operations_of_the_staged_file_read_with_dictionaries_are_the_same_bytes(
    tmp_path: Path,
) -> None:
    """The write step reads the per-run and per-file columns as Parquet stores them, as
    dictionaries: a column of one value in a batch becomes literal text, others are encoded
    per distinct value. The bytes must not change, quotes and control characters included."""
    snapshot = RepositorySnapshot(7, 'acme/"odd"', "tab\tbranch", "c" * 40, "https://x/acme")
    texts = [
        FileText(path, blob * 40, f'line "{path}"\n\tsecond\n')
        for path, blob in (("a.py", "a"), ('q"uote\\s.py', "b"), ("\x01ctl.txt", "c"))
    ]
    batches = list(line_document_batches(snapshot, texts, 4096, rows=10**6))
    staged = stage_parquet(
        str(tmp_path / "docs.parquet"), LINE_DOCUMENT_SCHEMA, batches, REPEATED_COLUMNS
    )
    plain = b"".join(index_operations(b).body() for b in batches)
    read_back = list(ParquetFile(UPath(staged.path)).iter_batches(3, REPEATED_COLUMNS))
    assert pa.types.is_dictionary(read_back[0].schema.field("file_path").type)
    assert [b.num_rows for b in read_back] == [3, 3]  # a file across the batches' end
    assert b"".join(index_operations(b).body() for b in read_back) == plain
    sources = [json.loads(line) for line in plain.split(b"\n")[1::2]]
    assert sources[0]["repository_name"] == 'acme/"odd"' and sources[0]["branch"] == "tab\tbranch"
    assert [s["file_path"] for s in sources] == [t.path for t in texts for _ in range(2)]


def test_a_chunk_across_batches_gives_each_operation_its_origin_and_takes_retries() -> None:
    batches = [_documents([("a.py", "1\n2\n3\n")]), _documents([("b.py", "4\n5\n")])]
    (chunk,) = chunk_operations(map(index_operations, batches), max_bytes=10**6, max_docs=10)
    assert len(chunk) == 5 and len(chunk.parts) == 2
    assert [str(chunk.origin(i)) for i in range(5)] == [
        "a.py:1",
        "a.py:2",
        "a.py:3",
        "b.py:1",
        "b.py:2",
    ]
    retry = chunk.take([1, 4])
    body = b"".join(index_operations(b).body() for b in batches).split(b"\n")
    assert retry.body().split(b"\n") == body[2:4] + body[8:10] + [b""]
    assert [str(retry.origin(i)) for i in range(2)] == ["a.py:2", "b.py:2"]
    # Refused whole: sent again as the two slices it was, not one slice per operation.
    again = chunk.take(list(range(5)))
    assert len(again.parts) == 2 and again.body() == chunk.body()
    some = chunk.take([0, 1, 3, 4])
    assert [len(part) for part in some.parts] == [2, 2]
    assert some.body().split(b"\n") == body[0:4] + body[6:10] + [b""]
    assert [str(some.origin(i)) for i in range(4)] == ["a.py:1", "a.py:2", "b.py:1", "b.py:2"]


def _ids(chunks: list[BulkChunk]) -> list[str]:
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
    assert str(ops.origin(2)) == "document c" and ops.origin(2).file_path is None
