"""The Elasticsearch stand-in against a real engine: the pipeline's requests, sent to both.

Each test sends the same requests (index creation with the real mapping, aliases, bulk with
item errors, refresh, count, delete by id and by query, settings updates) to the OpenSearch
node and to the stand-in, and compares the status codes and the fields the pipeline reads.
Where Elasticsearch and OpenSearch are documented to differ, the stand-in follows
Elasticsearch, and DIFFERENCES below says which answer OpenSearch gives instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from gitlab_es_pipeline.core.mapping import index_body
from gitlab_es_pipeline.core.search import SearchOptions, search_body
from gitlab_es_pipeline_tests.opensearch_node import OpenSearchNode
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn

pytestmark = pytest.mark.opensearch

# Error types of bulk items that Elasticsearch 8.8+ renamed and OpenSearch kept (a document
# that does not fit its mapping): OpenSearch's name -> Elasticsearch's.
DIFFERENCES = {"mapper_parsing_exception": "document_parsing_exception"}

BULK_FILTER = "errors,items.*.status,items.*.error"


class Cluster:
    """Raw HTTP as the clients send it; answers reduced to what the pipeline reads."""

    def __init__(self, url: str, engine: str) -> None:
        self.url = url
        self.engine = engine

    def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        ndjson: list[dict[str, Any]] | None = None,
        content_type: str | None = None,
        **params: str,
    ) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        data: bytes | None = None
        if ndjson is not None:
            data = b"".join(json.dumps(line).encode() + b"\n" for line in ndjson)
            headers["Content-Type"] = content_type or "application/x-ndjson"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type or "application/json"
        response = requests.request(
            method, f"{self.url}/{path}", data=data, headers=headers, params=params, timeout=60
        )
        answer = response.json() if response.content else None
        if path.endswith("_bulk"):
            answer = self._as_elasticsearch(answer)
        return response.status_code, answer

    def _as_elasticsearch(self, answer: Any) -> Any:
        """A document's parsing error, as Elasticsearch names it."""
        if self.engine != "opensearch":
            return answer
        text = json.dumps(answer)
        for theirs, ours in DIFFERENCES.items():
            text = text.replace(f'"{theirs}"', f'"{ours}"')
        return json.loads(text)


@pytest.fixture
def clusters(opensearch: OpenSearchNode) -> Iterator[list[Cluster]]:
    stand_in = ElasticsearchStandIn().start()
    yield [Cluster(opensearch.url, "opensearch"), Cluster(stand_in.url, "stand-in")]
    stand_in.stop()


def same_on_both(clusters: list[Cluster], scenario: Callable[[Cluster], list[Any]]) -> list[Any]:
    """The scenario's observations on the real engine; the stand-in must make the same."""
    real, stand_in = (scenario(c) for c in clusters)
    for step, (want, got) in enumerate(zip(real, stand_in, strict=True)):
        assert got == want, f"step {step}: the engine answered {want!r}, the stand-in {got!r}"
    return real


def error_type(answer: Any) -> str | None:
    error = (answer or {}).get("error") if isinstance(answer, dict) else None
    return error.get("type") if isinstance(error, dict) else error


def field_types(mapping_answer: dict[str, Any]) -> Any:
    if "error" in mapping_answer:
        return error_type(mapping_answer)
    return {
        index: {
            name: spec.get("type", "object")
            for name, spec in body["mappings"].get("properties", {}).items()
        }
        for index, body in mapping_answer.items()
    }


def load_settings(settings_answer: dict[str, Any]) -> dict[str, Any]:
    return {
        index: {
            key: body["settings"]["index"].get(key)
            for key in ("refresh_interval", "number_of_replicas")
        }
        for index, body in settings_answer.items()
    }


def bulk_items(answer: dict[str, Any]) -> Any:
    """(action, status, error type) per item, as the bulk writer reads them."""
    if "items" not in answer:
        return error_type(answer)
    out = []
    for item in answer["items"]:
        ((action, result),) = item.items()
        out.append((action, result["status"], error_type(result)))
    return out


def document(n: int, **changes: Any) -> dict[str, Any]:
    doc = {
        "project_id": 7,
        "visibility": "private",
        "repository_name": "g/p",
        "branch": "main",
        "commit_sha": "c" * 40,
        "file_path": f"src/f{n % 3}.py",
        "blob_sha": "b" * 40,
        "line_number": n,
        "line_content": f"def parseConfig{n}(path): return load_file(path)",
        "line_truncated": False,
        "web_url": f"https://gitlab.example/g/p/-/blob/c/src/f.py#L{n}",
    }
    doc.update(changes)
    return doc


def test_an_index_is_created_checked_and_its_settings_changed_and_restored(
    clusters: list[Cluster],
) -> None:
    def scenario(c: Cluster) -> list[Any]:
        seen: list[Any] = []
        body = {**index_body(), "aliases": {"lines": {"is_write_index": True}}}
        status, answer = c.send("PUT", "lines-v1", body)
        seen.append((status, answer.get("acknowledged"), answer.get("index")))
        status, answer = c.send("PUT", "lines-v1", body)
        seen.append((status, error_type(answer)))
        seen.append(c.send("HEAD", "lines")[0])
        seen.append(c.send("HEAD", "missing")[0])
        status, answer = c.send("GET", "lines/_mapping")
        seen.append((status, field_types(answer)))
        seen.append(answer["lines-v1"]["mappings"].get("_meta"))
        # A first load's note, then its removal (the whole _meta is replaced).
        note = {"gitlab_es_pipeline_first_load": {"restore": {"refresh_interval": None}}}
        seen.append(c.send("PUT", "lines/_mapping", {"_meta": note})[0])
        seen.append(c.send("GET", "lines/_mapping")[1]["lines-v1"]["mappings"].get("_meta"))
        seen.append(c.send("PUT", "lines/_mapping", {"_meta": {}})[0])
        seen.append(c.send("GET", "lines/_mapping")[1]["lines-v1"]["mappings"].get("_meta"))
        # Fields added by a later version: the same type again is fine, another is refused.
        seen.append(
            c.send("PUT", "lines/_mapping", {"properties": {"visibility": {"type": "keyword"}}})[0]
        )
        status, answer = c.send(
            "PUT", "lines/_mapping", {"properties": {"visibility": {"type": "long"}}}
        )
        seen.append((status, error_type(answer)))
        seen.append(load_settings(c.send("GET", "lines/_settings")[1]))
        load = {"index": {"refresh_interval": "-1", "number_of_replicas": 0}}
        seen.append(c.send("PUT", "lines/_settings", load)[0])
        seen.append(load_settings(c.send("GET", "lines/_settings")[1]))
        restore = {"index": {"refresh_interval": None, "number_of_replicas": None}}
        seen.append(c.send("PUT", "lines-v1/_settings", restore)[0])
        seen.append(load_settings(c.send("GET", "lines/_settings")[1]))
        # Names and mappings the engine refuses.
        status, answer = c.send("PUT", "Upper", {})
        seen.append((status, error_type(answer)))
        status, answer = c.send(
            "PUT", "odd", {"mappings": {"properties": {"x": {"type": "no_such_type"}}}}
        )
        seen.append((status, error_type(answer)))
        status, answer = c.send("GET", "missing/_mapping")
        seen.append((status, error_type(answer)))
        return seen

    seen = same_on_both(clusters, scenario)
    assert seen[0] == (200, True, "lines-v1") and seen[1] == (
        400,
        "resource_already_exists_exception",
    )


def test_bulk_items_succeed_fail_and_count_as_on_the_engine(clusters: list[Cluster]) -> None:
    def scenario(c: Cluster) -> list[Any]:
        seen: list[Any] = []
        c.send("PUT", "lines-v1", {**index_body(), "aliases": {"lines": {}}})
        c.send("PUT", "lines/_settings", {"index": {"refresh_interval": "-1"}})
        operations: list[dict[str, Any]] = []
        for n in range(1, 6):
            operations += [{"index": {"_id": f"d{n}"}}, document(n)]
        operations += [
            {"index": {"_id": "strict"}},
            document(6, surprise="field"),  # dynamic: strict
            {"index": {"_id": "coerced"}},
            document(7, line_number="7"),  # a number in a string: coerced
            {"index": {"_id": "array"}},
            document(8, branch=["main", "develop"]),  # a keyword array
            {"index": {"_id": "not-a-number"}},
            document(9, line_number="nine"),
            {"delete": {"_id": "never-written"}},
            {"index": {"_id": "d1"}},
            document(1),  # the same id again: updated
        ]
        status, answer = c.send("POST", "lines/_bulk", ndjson=operations, filter_path=BULK_FILTER)
        seen.append((status, answer["errors"], bulk_items(answer)))
        # Unrefreshed writes are not counted yet; after a refresh they are.
        seen.append(
            c.send("POST", "lines/_count", {"query": {"term": {"project_id": 7}}})[1]["count"]
        )
        status, answer = c.send("POST", "lines/_refresh")
        seen.append((status, answer["_shards"]["failed"]))
        seen.append(
            c.send("POST", "lines/_count", {"query": {"term": {"project_id": 7}}})[1]["count"]
        )
        seen.append(
            c.send("POST", "lines/_count", {"query": {"term": {"branch": "develop"}}})[1]["count"]
        )
        # Deletes by id: found, then not found; a body sent as plain JSON is accepted too.
        deletes = [{"delete": {"_id": "d2"}}, {"delete": {"_id": "d2"}}]
        status, answer = c.send(
            "POST",
            "lines/_bulk",
            ndjson=deletes,
            content_type="application/json",
            filter_path=BULK_FILTER,
            refresh="true",
        )
        seen.append((status, bulk_items(answer)))
        seen.append(c.send("POST", "lines/_count", {"query": {"match_all": {}}})[1]["count"])
        # An id over 512 bytes refuses the whole request.
        too_long = [{"index": {"_id": "x" * 513}}, document(10)]
        status, answer = c.send("POST", "lines/_bulk", ndjson=too_long)
        seen.append((status, error_type(answer)))
        # Nothing to do is an error, not an empty answer.
        status, answer = c.send("POST", "lines/_bulk", ndjson=[])
        seen.append((status, error_type(answer)))
        return seen

    seen = same_on_both(clusters, scenario)
    assert seen[0][2][5] == ("index", 400, "strict_dynamic_mapping_exception")


def test_delete_by_query_sees_what_was_refreshed_and_reports_it(clusters: list[Cluster]) -> None:
    def scenario(c: Cluster) -> list[Any]:
        seen: list[Any] = []
        c.send("PUT", "lines-v1", {**index_body(), "aliases": {"lines": {}}})
        c.send("PUT", "lines/_settings", {"index": {"refresh_interval": "-1"}})
        first = [x for n in range(1, 5) for x in ({"index": {"_id": f"a{n}"}}, document(n))]
        c.send("POST", "lines/_bulk", ndjson=first, refresh="true")
        later = [
            x for n in range(5, 8) for x in ({"index": {"_id": f"b{n}"}}, document(n, project_id=8))
        ]
        c.send("POST", "lines/_bulk", ndjson=later)  # written, not refreshed
        everything: dict[str, Any] = {"query": {"match_all": {}}}
        status, answer = c.send(
            "POST", "lines/_delete_by_query", everything, conflicts="proceed", slices="auto"
        )
        seen.append((status, answer["deleted"], answer["version_conflicts"], answer["failures"]))
        c.send("POST", "lines/_refresh")
        seen.append(c.send("POST", "lines/_count", everything)[1]["count"])
        query = {"query": {"bool": {"filter": [{"term": {"project_id": 8}}]}}}
        status, answer = c.send(
            "POST",
            "lines/_delete_by_query",
            query,
            conflicts="proceed",
            refresh="true",
            slices="auto",
        )
        seen.append((status, answer["deleted"], answer["version_conflicts"], answer["failures"]))
        seen.append(c.send("POST", "lines/_count", everything)[1]["count"])
        status, answer = c.send("POST", "missing/_delete_by_query", everything)
        seen.append((status, error_type(answer)))
        return seen

    seen = same_on_both(clusters, scenario)
    assert seen[0][1] == 4 and seen[2][1] == 3


def test_a_write_to_a_missing_index_creates_it_and_blocks_the_alias(
    clusters: list[Cluster],
) -> None:
    def scenario(c: Cluster) -> list[Any]:
        seen: list[Any] = []
        # A delete does not create anything.
        status, answer = c.send(
            "POST", "gone/_bulk", ndjson=[{"delete": {"_id": "1"}}], filter_path=BULK_FILTER
        )
        seen.append((status, bulk_items(answer)))
        seen.append(c.send("HEAD", "gone")[0])
        status, answer = c.send(
            "POST",
            "gitlab-lines/_bulk",
            ndjson=[{"index": {"_id": "1"}}, document(1)],
            filter_path=BULK_FILTER,
        )
        seen.append((status, bulk_items(answer)))
        status, answer = c.send("GET", "gitlab-lines/_mapping")
        types = field_types(answer)
        if isinstance(types, dict):
            types = {k: types["gitlab-lines"][k] for k in ("project_id", "line_content", "branch")}
        seen.append(types)
        body = {**index_body(), "aliases": {"gitlab-lines": {"is_write_index": True}}}
        status, answer = c.send("PUT", "gitlab-lines-v1", body)
        seen.append((status, error_type(answer)))
        seen.append(c.send("HEAD", "gitlab-lines-v1")[0])
        return seen

    seen = same_on_both(clusters, scenario)
    assert seen[3] == {"project_id": "long", "line_content": "text", "branch": "text"}


def test_aliases_change_atomically_and_one_by_one(clusters: list[Cluster]) -> None:
    def scenario(c: Cluster) -> list[Any]:
        seen: list[Any] = []
        c.send("PUT", "lines-v1", {**index_body(), "aliases": {"lines": {}}})
        c.send("PUT", "lines-v2", index_body())
        # A failing action (an index that does not exist) applies none of the others.
        actions = {
            "actions": [
                {"remove": {"index": "lines-v1", "alias": "lines"}},
                {"add": {"index": "lines-v3", "alias": "lines"}},
            ]
        }
        status, answer = c.send("POST", "_aliases", actions)
        seen.append((status, error_type(answer)))
        seen.append(c.send("GET", "_alias/lines"))
        swap = {
            "actions": [
                {"remove": {"index": "lines-v1", "alias": "lines"}},
                {"add": {"index": "lines-v2", "alias": "lines", "is_write_index": True}},
            ]
        }
        status, answer = c.send("POST", "_aliases", swap)
        seen.append((status, answer.get("acknowledged")))
        seen.append(c.send("GET", "_alias/lines"))
        # One alias at a time.
        status, answer = c.send("PUT", "lines-v1/_alias/old")
        seen.append((status, answer.get("acknowledged")))
        seen.append(c.send("GET", "_alias/old"))
        status, answer = c.send("DELETE", "lines-v1/_alias/old")
        seen.append((status, answer.get("acknowledged")))
        seen.append(c.send("GET", "_alias/old")[0])
        status, answer = c.send("DELETE", "lines-v1/_alias/old")
        seen.append((status, error_type(answer)))
        return seen

    seen = same_on_both(clusters, scenario)
    assert seen[1] == (200, {"lines-v1": {"aliases": {"lines": {}}}})


def test_searches_find_the_same_lines_of_real_source(clusters: list[Cluster]) -> None:
    """The stand-in's imitation of the code analyzer and of the wildcard field, against
    Lucene's, on lines of Python's standard library."""
    import http.client
    import json.decoder

    operations: list[dict[str, Any]] = []
    for module in (http.client, json.decoder):
        source = Path(str(module.__file__))
        path = source.name
        for number, line in enumerate(source.read_text().splitlines(), 1):
            operations += [
                {"index": {"_id": f"{path}-{number}"}},
                document(number, file_path=path, line_content=line),
            ]
    queries = [
        *(
            SearchOptions(word, limit=10000)
            for word in ("header", "response", "http", "HTTPResponse", "decoder", "_decode")
        ),
        SearchOptions("http response", limit=10000),
        SearchOptions("_send_output", limit=10000),
        *(
            SearchOptions(text, exact=True, ignore_case=case, limit=10000)
            for text in ("self._", "(?", "*values", "HTTP", "\\n", "\\u", "\\\\", "\\'")
            for case in (False, True)
        ),
    ]

    def scenario(c: Cluster) -> list[Any]:
        c.send("PUT", "lines-v1", {**index_body(), "aliases": {"lines": {}}})
        for start in range(0, len(operations), 2000):
            c.send("POST", "lines/_bulk", ndjson=operations[start : start + 2000])
        c.send("POST", "lines/_refresh")
        seen: list[Any] = []
        for options in queries:
            status, answer = c.send("POST", "lines/_search", search_body(options))
            assert "hits" in answer, (c.engine, options, answer)
            seen.append((options.text, status, [hit["_id"] for hit in answer["hits"]["hits"]]))
        # Paging in grep order, as the command line pages: the same pages.
        body = {**search_body(SearchOptions("self", limit=50)), "track_total_hits": False}
        status, answer = c.send("POST", "lines/_search", body)
        after = answer["hits"]["hits"][-1]["sort"]
        status, answer = c.send("POST", "lines/_search", {**body, "search_after": after})
        seen.append((status, after, [hit["_id"] for hit in answer["hits"]["hits"]]))
        return seen

    seen = same_on_both(clusters, scenario)
    assert all(ids for _, _, ids in seen), [text for text, _, ids in seen if not ids]


def test_a_page_beyond_the_result_window_is_refused_and_search_after_is_not(
    clusters: list[Cluster],
) -> None:
    """Issue 28, point 4: `size` above index.max_result_window (10,000) is refused; pages
    joined by search_after are how the command line goes past it."""

    def scenario(c: Cluster) -> list[Any]:
        c.send("PUT", "lines-v1", {**index_body(), "aliases": {"lines": {}}})
        c.send("POST", "lines/_bulk", ndjson=[{"index": {"_id": "a"}}, document(1)], refresh="true")
        seen: list[Any] = []
        for size in (10_000, 10_001):
            status, answer = c.send("POST", "lines/_search", {"size": size})
            causes = answer.get("error", {}).get("root_cause", [{}]) if status != 200 else [{}]
            seen.append((status, error_type(answer), causes[0].get("type")))
        body = {"size": 1, "sort": [{"repository_name": "asc"}, {"line_number": "asc"}]}
        status, answer = c.send("POST", "lines/_search", {**body, "search_after": ["g/p", 0]})
        seen.append((status, [hit["_id"] for hit in answer["hits"]["hits"]]))
        return seen

    seen = same_on_both(clusters, scenario)
    assert seen[1] == (400, "search_phase_execution_exception", "illegal_argument_exception")


def test_a_substring_ending_in_a_backslash_is_asked_so_that_the_engine_answers_it(
    clusters: list[Cluster],
) -> None:
    """OpenSearch's wildcard field loses a literal's trailing escaped backslash: the query
    for such a text must not depend on it (core.search), and asks for more lines, never
    fewer, than hold the text."""
    lines = ["x = '\\n'", "plain", "say '\\' ok", "a\\b", "ends '\\", "two \\\\ x", "\\*"]
    operations: list[dict[str, Any]] = []
    for n, line in enumerate(lines):
        operations += [{"index": {"_id": str(n)}}, document(n, line_content=line)]
    texts = ["'\\", "\\", "\\\\", "a\\", "\\*", "'\\n", "a\\b"]

    def scenario(c: Cluster) -> list[Any]:
        c.send("PUT", "lines-v1", {**index_body(), "aliases": {"lines": {}}})
        c.send("POST", "lines/_bulk", ndjson=operations, refresh="true")
        seen = []
        for text in texts:
            options = SearchOptions(text, exact=True, limit=100)
            answer = c.send("POST", "lines/_search", search_body(options))[1]
            found = {int(hit["_id"]) for hit in answer["hits"]["hits"]}
            seen.append((text, found >= {n for n, line in enumerate(lines) if text in line}))
        return seen

    assert all(ok for _, ok in same_on_both(clusters, scenario))
