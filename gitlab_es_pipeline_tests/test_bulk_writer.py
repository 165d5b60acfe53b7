"""The bulk writer against the Elasticsearch stand-in: concurrent senders, exact retries."""

from typing import Any

import pytest
from elasticsearch import Elasticsearch

from gitlab_es_pipeline.clients.elasticsearch import LineIndex
from gitlab_es_pipeline.clients.engines import (
    AcceptedBulk,
    Connection,
    ElasticsearchEngine,
    accepted_bulk,
)
from gitlab_es_pipeline.core.bulk import delete_operations, index_operations
from gitlab_es_pipeline.core.documents import (
    FileText,
    RepositorySnapshot,
    document_ids,
    line_document_batches,
)
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn

SNAPSHOT = RepositorySnapshot(7, "g/p", "main", "c" * 40, "https://gl.example/g/p")


def _operations(files: int, lines: int) -> Any:
    text = "".join(f"line {n}\n" for n in range(1, lines + 1))
    for i in range(files):  # a batch per file: operations arrive in many small arrays
        texts = [FileText(f"src/f{i}.py", "b" * 40, text)]
        for batch in line_document_batches(SNAPSHOT, texts, 1000, rows=lines):
            yield index_operations(batch)


@pytest.mark.parametrize("serializers", ["default", "ours"])
def test_concurrent_workers_write_every_document_once_and_retry_only_rejected_items(
    es_server: ElasticsearchStandIn, serializers: str
) -> None:
    busy: dict[str, int] = {}

    def overloaded_then_one_broken(kind: str, meta: dict[str, Any], source: Any) -> Any:
        doc_id = meta["_id"]
        if doc_id.endswith("-3"):  # line 3 of every file: rejected twice, then accepted
            busy[doc_id] = busy.get(doc_id, 0) + 1
            if busy[doc_id] <= 2:
                return {"_id": doc_id, "status": 429, "error": {"type": "es_rejected_execution"}}
        if source is not None and source["file_path"] == "src/f5.py" and doc_id.endswith("-7"):
            return {"_id": doc_id, "status": 400, "error": {"type": "x", "reason": "bad"}}
        return None

    es_server.item_faults.append(overloaded_then_one_broken)
    engine = ElasticsearchEngine(Connection(es_server.url, api_key=es_server.api_key))
    if serializers == "default":  # every bulk response decoded in full
        engine.client = Elasticsearch(es_server.url, api_key=es_server.api_key)
    index = LineIndex(engine, "lines", max_chunk_docs=40, workers=3, sleep=lambda _: None)
    index.ensure()
    report = index.write(_operations(files=20, lines=30))

    assert report.failed == 1 and str(report.failures[0]) == "src/f5.py:7: HTTP 400 x: bad"
    assert report.succeeded == 20 * 30 - 1
    assert report.retried_items == 2 * 20 and set(busy.values()) == {3}
    assert report.requests == 15 * 3  # 600 documents / 40 a chunk; each chunk retried twice
    stored = es_server.documents("lines")
    assert len(stored) == 599
    assert {doc["line_number"] for doc in stored.values()} == set(range(1, 31))
    assert report.results == {"created": 599}

    # Deleting is exact and idempotent, whichever worker sends which chunk.
    es_server.item_faults.clear()
    gone = [*document_ids(7, "src/f0.py", 1, 30), *document_ids(7, "src/f5.py", 7, 7)]
    deleted = index.write(delete_operations(gone))
    assert deleted.failed == 0 and deleted.results == {"deleted": 30, "not_found": 1}
    assert len(es_server.documents("lines")) == 599 - 30


def test_an_accepted_bulk_response_is_counted_and_anything_else_decoded() -> None:
    raw = b'{"errors":false,"items":[{"index":{"status":201}},{"index":{"status":200}},' + (
        b'{"delete":{"status":404}}]}'
    )
    accepted = accepted_bulk(raw)
    assert isinstance(accepted, AcceptedBulk) and accepted["errors"] is False
    assert accepted.status_counts() == {("index", 201): 1, ("index", 200): 1, ("delete", 404): 1}
    assert accepted["items"][2] == {"delete": {"status": 404}}  # decoded when asked for
    # Not the compact form (pretty-printed, or more fields): counted as unknown, then decoded.
    pretty = accepted_bulk(b'{"errors":false,"items":[{"index":{"status": 201}}]}')
    assert isinstance(pretty, AcceptedBulk) and pretty.status_counts() is None
    assert pretty["items"] == [{"index": {"status": 201}}]
    assert accepted_bulk(b'{"errors":true,"items":[{"index":{"status":429}}]}') is None
