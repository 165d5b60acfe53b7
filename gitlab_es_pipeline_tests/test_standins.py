"""The stand-ins behave as the real services do for the unmodified clients."""

from pathlib import Path

import gitlab
import pyarrow as pa
import pytest
import requests
from elasticsearch import ApiError, Elasticsearch

from gitlab_es_pipeline.clients.elasticsearch import LineIndex
from gitlab_es_pipeline.clients.engines import Connection, ElasticsearchEngine
from gitlab_es_pipeline.core.bulk import BulkOperations, delete_operations
from gitlab_es_pipeline_tests.repos import commit_files, init_repo
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn
from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn


@pytest.fixture
def one_repo(tmp_path: Path) -> Path:
    repo = init_repo(tmp_path / "r")
    commit_files(repo, {f"d/f{i}.txt": f"{i}\n" for i in range(45)})
    return repo


def test_gitlab_requires_a_valid_token(gitlab_server: GitLabStandIn, one_repo: Path) -> None:
    gitlab_server.add_project("g/p", str(one_repo))
    bad = gitlab.Gitlab(gitlab_server.url, private_token="wrong", retry_transient_errors=False)
    with pytest.raises(gitlab.GitlabAuthenticationError):
        bad.projects.get("g/p")
    response = requests.get(f"{gitlab_server.url}/api/v4/projects/1", timeout=5)
    assert response.status_code == 401 and response.json() == {"message": "401 Unauthorized"}


def test_gitlab_offset_pagination_headers(gitlab_server: GitLabStandIn, one_repo: Path) -> None:
    gitlab_server.add_project("g/p", str(one_repo))
    response = requests.get(
        f"{gitlab_server.url}/api/v4/projects/1/repository/tree",
        params={"recursive": "true", "per_page": "20", "page": "2"},
        headers={"PRIVATE-TOKEN": gitlab_server.token},
        timeout=5,
    )
    assert response.status_code == 200 and len(response.json()) == 20
    h = response.headers
    assert (h["X-Page"], h["X-Per-Page"], h["X-Next-Page"], h["X-Prev-Page"]) == (
        "2",
        "20",
        "3",
        "1",
    )
    assert (h["X-Total"], h["X-Total-Pages"]) == ("46", "3")  # 45 files and the folder d
    assert 'rel="next"' in h["Link"] and 'rel="last"' in h["Link"]
    assert int(h["RateLimit-Remaining"]) == int(h["RateLimit-Limit"]) - int(h["RateLimit-Observed"])


def test_gitlab_keyset_tree_through_python_gitlab(
    gitlab_server: GitLabStandIn, one_repo: Path
) -> None:
    gitlab_server.add_project("g/p", str(one_repo))
    gl = gitlab.Gitlab(gitlab_server.url, private_token=gitlab_server.token)
    items = list(
        gl.projects.get(1, lazy=True).repository_tree(
            recursive=True, pagination="keyset", per_page=10, iterator=True
        )
    )
    assert len(items) == 46 and len({i["path"] for i in items}) == 46
    assert len(gitlab_server.requests_of_kind("tree")) == 5


def test_gitlab_404_bodies(gitlab_server: GitLabStandIn, one_repo: Path) -> None:
    gitlab_server.add_project("g/p", str(one_repo))
    gl = gitlab.Gitlab(gitlab_server.url, private_token=gitlab_server.token)
    with pytest.raises(gitlab.GitlabGetError) as missing:
        gl.projects.get("g/nope")
    assert missing.value.response_code == 404 and "Project Not Found" in str(missing.value)
    with pytest.raises(gitlab.GitlabGetError) as branch:
        gl.projects.get(1, lazy=True).branches.get("nope")
    assert "Branch Not Found" in str(branch.value)


def test_gitlab_rate_limit_answers_429_with_retry_after(
    gitlab_server: GitLabStandIn, one_repo: Path
) -> None:
    gitlab_server.add_project("g/p", str(one_repo))
    gitlab_server.rate_limit = 2
    statuses = []
    for _ in range(3):
        r = requests.get(
            f"{gitlab_server.url}/api/v4/projects/1",
            headers={"PRIVATE-TOKEN": gitlab_server.token},
            timeout=5,
        )
        statuses.append(r.status_code)
    assert statuses == [200, 200, 429]
    assert int(r.headers["Retry-After"]) >= 1 and r.headers["RateLimit-Remaining"] == "0"


def test_elasticsearch_client_accepts_the_stand_in(es_server: ElasticsearchStandIn) -> None:
    client = Elasticsearch(es_server.url, api_key=es_server.api_key)
    assert client.info()["version"]["number"].startswith("9.")
    raw = requests.get(
        es_server.url, headers={"Authorization": f"ApiKey {es_server.api_key}"}, timeout=5
    )
    assert raw.headers["X-Elastic-Product"] == "Elasticsearch"
    with pytest.raises(ApiError) as denied:
        Elasticsearch(es_server.url, api_key="wrong").info()
    assert denied.value.meta.status == 401


def test_elasticsearch_bulk_item_errors(es_server: ElasticsearchStandIn) -> None:
    client = Elasticsearch(es_server.url, api_key=es_server.api_key)
    client.indices.create(
        index="i",
        mappings={"dynamic": "strict", "properties": {"n": {"type": "integer"}}},
        settings={"refresh_interval": "-1"},  # no periodic refresh: only the explicit one
    )
    result = client.bulk(
        index="i",
        operations=[
            {"index": {"_id": "ok"}},
            {"n": 1},
            {"index": {"_id": "strict"}},
            {"other": 3},
            {"index": {"_id": "type"}},
            {"n": "not a number"},
            {"delete": {"_id": "missing"}},
        ],
    ).body
    assert result["errors"] is True
    statuses = [next(iter(item.values()))["status"] for item in result["items"]]
    assert statuses == [201, 400, 400, 404]
    types = [next(iter(item.values())).get("error", {}).get("type") for item in result["items"]]
    assert types[1] == "strict_dynamic_mapping_exception"
    # An id over 512 bytes refuses the whole request, as Elasticsearch validates it first.
    with pytest.raises(ApiError) as refused:
        client.bulk(index="i", operations=[{"index": {"_id": "x" * 513}}, {"n": 2}])
    assert refused.value.meta.status == 400
    assert refused.value.error == "action_request_validation_exception"
    assert client.count(index="i")["count"] == 0  # near-real-time: visible after a refresh
    client.indices.refresh(index="i")
    assert client.count(index="i")["count"] == 1


def test_elasticsearch_filter_path_keeps_only_the_named_fields(
    es_server: ElasticsearchStandIn,
) -> None:
    client = Elasticsearch(es_server.url, api_key=es_server.api_key)
    client.indices.create(
        index="i",
        mappings={"dynamic": "strict", "properties": {"n": {"type": "integer"}}},
        settings={"refresh_interval": "-1"},  # no periodic refresh: only the explicit one
    )
    result = client.bulk(
        index="i",
        operations=[{"index": {"_id": "a"}}, {"n": 1}, {"index": {"_id": "b"}}, {"n": "x"}],
        filter_path="errors,items.*.status,items.*.error.type",
    ).body
    assert result == {
        "errors": True,
        "items": [
            {"index": {"status": 201}},
            {"index": {"status": 400, "error": {"type": "document_parsing_exception"}}},
        ],
    }
    # A path that matches nothing leaves an empty object, as Elasticsearch answers.
    assert client.count(index="i", filter_path="nothing").body == {}


def test_elasticsearch_count_mode_acknowledges_every_operation_as_filtered() -> None:
    """The benchmark's accept-and-count mode: one item per operation, nothing stored."""
    server = ElasticsearchStandIn(count_only=True).start()
    try:
        engine = ElasticsearchEngine(Connection(server.url))
        client = engine.client
        index = LineIndex(engine, "bench", max_chunk_docs=7)
        ids = [f"id-{i}" for i in range(30)]
        report = index.write(
            BulkOperations(
                pa.array(ids),
                pa.array([b'{"index":{"_id":"%s"}}\n{"n":1}\n' % i.encode() for i in ids]),
            )
            for _ in [0]
        )
        assert report.succeeded == 30 and report.requests == 5 and report.failed == 0
        assert report.results == {"created": 30}
        deleted = index.write(delete_operations(ids[:12]))
        assert deleted.results == {"deleted": 12}
        assert server.bulk_actions == {"index": 30, "delete": 12}
        raw = client.bulk(operations=[{"delete": {"_id": "a"}}], index="bench").body
        assert raw["items"] == [{"delete": {"status": 200, "result": "deleted"}}]
    finally:
        server.stop()
