"""Convergence (issue 25): discovery makes the index follow GitLab whatever happened.

Through Dagster against the real stand-ins, as Pipeline runs them. Expectations come from git
(expected_documents) and from the stand-ins' own state, never from the code under test.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
from dagster import AssetMaterialization, AssetRecordsFilter, MetadataValue

from gitlab_es_pipeline.clients.elasticsearch import LineIndex
from gitlab_es_pipeline.clients.engines import Connection, connect
from gitlab_es_pipeline.core.removals import CONFIRM_CONFIG
from gitlab_es_pipeline.defs.asset_keys import ES_INDEX, FILE_MANIFEST
from gitlab_es_pipeline.runs.indexed import WANTED, last_indexed
from gitlab_es_pipeline_tests.corpus import expected_documents
from gitlab_es_pipeline_tests.opensearch_node import OpenSearchNode
from gitlab_es_pipeline_tests.pipeline import INDEX, Pipeline
from gitlab_es_pipeline_tests.repos import commit_files, init_repo, run_git
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn
from gitlab_es_pipeline_tests.standins.http import Request, Response


def _names_in_index(pipeline: Pipeline) -> set[str]:
    return {d["repository_name"] for d in pipeline.es.documents(INDEX).values()}


def _documents_of(pipeline: Pipeline, name: str) -> int:
    return sum(1 for d in pipeline.es.documents(INDEX).values() if d["repository_name"] == name)


# -- defect 5: a failed first load, then the project goes --------------------------------------
@pytest.mark.parametrize("how", ["deleted", "archived"])
def test_a_failed_first_load_leaves_nothing_once_its_project_is_gone(
    pipeline: Pipeline, tmp_path: Path, how: str
) -> None:
    """The first load writes some documents and fails (one refused for good); the project is
    then deleted or archived: discovery must leave no document of it, indexed or not."""
    repo = init_repo(tmp_path / "app")
    commit_files(repo, {"a.py": "x = 1\ny = 2\n", "b.py": "z = 3\n"})
    keep_repo = init_repo(tmp_path / "keep")
    commit_files(keep_repo, {"k.py": "k = 1\n"})
    project = pipeline.gitlab.add_project("team/app", str(repo))
    pipeline.gitlab.add_project("team/keep", str(keep_repo))
    pipeline.discover()
    assert pipeline.index("team/keep").success

    def refuse_one(kind: str, meta: dict, source: dict | None) -> dict | None:
        if source and source["file_path"] == "a.py" and source["line_number"] == 2:
            return {"_id": meta["_id"], "status": 400, "error": {"type": "x", "reason": "no"}}
        return None

    pipeline.es.item_faults.append(refuse_one)
    assert not pipeline.index("team/app", raise_on_error=False).success
    pipeline.es.item_faults.clear()
    assert _documents_of(pipeline, "team/app") == 2  # a.py:1 and b.py:1 were written
    assert last_indexed(pipeline.instance, "team/app") is None  # never recorded indexed

    if how == "deleted":
        del pipeline.gitlab.projects[project.id]
    else:
        project.archived = True
    pipeline.discover()
    assert pipeline.partitions() == ["team/keep"]
    assert _names_in_index(pipeline) == {"team/keep"}
    assert _documents_of(pipeline, "team/keep") == 1
    meta = pipeline.latest_metadata("repositories")
    assert meta["partitions_removed"] == 1 and meta["documents_deleted"] == 2


# -- helpers ----------------------------------------------------------------------------------
def _wants(pipeline: Pipeline, partition: str) -> list[str]:
    """The reasons of every want recorded for a partition (file_manifest observations)."""
    only = AssetRecordsFilter(asset_key=FILE_MANIFEST, asset_partitions=[partition])
    records = pipeline.instance.fetch_observations(only, limit=100).records
    return [
        str(r.asset_observation.metadata[WANTED].value)
        for r in records
        if r.asset_observation is not None and WANTED in r.asset_observation.metadata
    ]


def _expected(
    pipeline: Pipeline, repo: Path, key: str, visibility: str = "private"
) -> dict[str, dict]:
    project = pipeline.gitlab.project(key)
    url = f"{pipeline.gitlab.url}/{key}"
    return expected_documents(
        repo, project.id, key, project.default_branch_name, url, visibility=visibility
    ).documents


def _of(pipeline: Pipeline, key: str) -> dict[str, dict]:
    return {i: d for i, d in pipeline.es.documents(INDEX).items() if d["repository_name"] == key}


def _write_directly(pipeline: Pipeline, documents: dict[str, dict]) -> None:
    """Documents written into the index by no run of the pipeline, through the REST API."""
    lines = []
    for doc_id, doc in documents.items():
        lines.append(json.dumps({"index": {"_index": INDEX, "_id": doc_id}}))
        lines.append(json.dumps(doc))
    response = requests.post(
        f"{pipeline.es.url}/_bulk?refresh=true",
        data="\n".join(lines) + "\n",
        headers={
            "Authorization": f"ApiKey {pipeline.es.api_key}",
            "Content-Type": "application/x-ndjson",
        },
        timeout=30,
    )
    assert response.status_code == 200 and not response.json()["errors"], response.text


def _copies(documents: dict[str, dict], name: str, project_id: int) -> dict[str, dict]:
    """Another repository's documents, as a repository `name` of project `project_id`."""
    return {
        f"{project_id}-{doc_id.split('-', 1)[1]}": {
            **doc,
            "repository_name": name,
            "project_id": project_id,
        }
        for doc_id, doc in documents.items()
    }


def _sensor_ticks(pipeline: Pipeline) -> list[str]:
    """What the daemon launches over two ticks of the HEAD-commit sensor. A want at a commit
    the sensor's own run indexed is asked for under that run's key first (Dagster skips it)
    and again under a new key the tick after: see test_a_want_is_launched_by_the_next_tick."""
    return pipeline.run_sensor_requests() + pipeline.run_sensor_requests()


@pytest.fixture
def every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every indexed repository is due at every discovery (a period of one second)."""
    monkeypatch.setenv("RECONCILE_PERIOD_SECONDS", "1")


# -- identity -----------------------------------------------------------------------------------
def test_a_visibility_change_is_wanted_once_and_the_sensor_rewrites_every_document(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    repo = init_repo(tmp_path / "vis")
    commit_files(repo, {"a.py": "x = 1\ny = 2\n", "docs/b.md": "# b\n"})
    pipeline.gitlab.add_project("g/vis", str(repo), visibility="public")
    pipeline.discover()
    assert pipeline.run_sensor_requests() == ["g/vis"]
    assert _of(pipeline, "g/vis") == _expected(pipeline, repo, "g/vis", visibility="public")

    pipeline.gitlab.project("g/vis").visibility = "private"  # no commit: only the setting
    pipeline.discover()
    meta = pipeline.latest_metadata("repositories")
    assert meta["identity_changed"] == 1 and meta["wants_recorded"] == 1
    assert _wants(pipeline, "g/vis") == ["identity changed: visibility public -> private"]
    # Asked for once: the next discovery sees the want still waiting.
    pipeline.discover()
    meta = pipeline.latest_metadata("repositories")
    assert meta["wants_recorded"] == 0 and meta["wants_already_waiting"] == 1
    assert len(_wants(pipeline, "g/vis")) == 1

    assert _sensor_ticks(pipeline) == ["g/vis"]
    assert _of(pipeline, "g/vis") == _expected(pipeline, repo, "g/vis", visibility="private")
    assert pipeline.latest_metadata("es_index", "g/vis")["visibility"] == "private"
    pipeline.discover()
    assert pipeline.latest_metadata("repositories")["identity_changed"] == 0
    assert len(_wants(pipeline, "g/vis")) == 1


def test_a_default_branch_change_is_wanted_naming_the_field(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    repo = init_repo(tmp_path / "br")
    commit_files(repo, {"a.py": "on main\n"})
    run_git(repo, "checkout", "-q", "-b", "develop")
    commit_files(repo, {"a.py": "on develop\n", "d.py": "d\n"})
    pipeline.gitlab.add_project("g/br", str(repo))
    pipeline.discover()
    assert pipeline.run_sensor_requests() == ["g/br"]
    pipeline.gitlab.project("g/br").default_branch_name = "develop"
    pipeline.discover()
    assert _wants(pipeline, "g/br") == ["identity changed: branch main -> develop"]
    assert _sensor_ticks(pipeline) == ["g/br"]
    assert _of(pipeline, "g/br") == _expected(pipeline, repo, "g/br")
    assert {d["branch"] for d in _of(pipeline, "g/br").values()} == {"develop"}


def test_a_path_that_names_another_project_starts_over(pipeline: Pipeline, tmp_path: Path) -> None:
    """Deleted and made again at the same path: the old project's documents and indexed state
    go, and the new project is indexed in full (its HEAD may even be the same commit)."""
    repo = init_repo(tmp_path / "app")
    commit_files(repo, {"a.py": "x = 1\ny = 2\n", "b.py": "z\n"})
    old = pipeline.gitlab.add_project("g/app", str(repo))
    pipeline.discover()
    assert pipeline.run_sensor_requests() == ["g/app"]
    del pipeline.gitlab.projects[old.id]
    new = pipeline.gitlab.add_project("g/app", str(repo))  # an import of the same repository
    assert new.id != old.id
    pipeline.discover()
    meta = pipeline.latest_metadata("repositories")
    assert meta["partitions_replaced"] == "- g/app" and meta["documents_deleted"] == 3
    assert pipeline.partitions() == ["g/app"] and _of(pipeline, "g/app") == {}
    assert last_indexed(pipeline.instance, "g/app") is None
    assert pipeline.run_sensor_requests() == ["g/app"]
    assert _of(pipeline, "g/app") == _expected(pipeline, repo, "g/app")
    assert {d["project_id"] for d in _of(pipeline, "g/app").values()} == {new.id}


# -- reconciliation -----------------------------------------------------------------------------
def test_a_push_the_sensor_never_listed_is_found_by_reconciliation(
    pipeline: Pipeline, tmp_path: Path, every_time: None
) -> None:
    repo = init_repo(tmp_path / "quiet")
    commit_files(repo, {"a.py": "x = 1\n", "old.py": "old\n"})
    other = init_repo(tmp_path / "other")
    commit_files(other, {"o.py": "o\n"})
    pipeline.gitlab.add_project("g/quiet", str(repo))
    pipeline.gitlab.add_project("g/other", str(other))
    pipeline.discover()
    assert sorted(pipeline.run_sensor_requests()) == ["g/other", "g/quiet"]

    # A push whose activity GitLab did not record in the sensor's window (it updates
    # last_activity_at at most once an hour, and updates get lost).
    head = commit_files(repo, {"a.py": "x = 2\ny = 3\n"}, delete=("old.py",))
    project = pipeline.gitlab.project("g/quiet")
    project.last_activity_at = (datetime.now(timezone.utc) - timedelta(hours=3)).strftime(
        "%Y-%m-%dT%H:%M:%S.000Z"
    )
    pipeline.gitlab.project("g/other").last_activity_at = project.last_activity_at
    assert pipeline.run_sensor_requests() == []  # the sensor does not see it
    assert any(d["file_path"] == "old.py" for d in _of(pipeline, "g/quiet").values())

    branch_requests = len(pipeline.gitlab.requests_of_kind("branch"))
    pipeline.discover()
    meta = pipeline.latest_metadata("repositories")
    assert meta["reconciled"] == 2 and meta["reconcile_lookups"] == 2
    assert len(pipeline.gitlab.requests_of_kind("branch")) - branch_requests == 2
    assert meta["reconcile_wanted"] == 1 and meta["reconcile_failed"] == 0
    (reason,) = _wants(pipeline, "g/quiet")
    assert reason.startswith(f"reconciliation: HEAD {head[:12]} is not the indexed commit")
    assert _wants(pipeline, "g/other") == []

    assert _sensor_ticks(pipeline) == ["g/quiet"]
    assert _of(pipeline, "g/quiet") == _expected(pipeline, repo, "g/quiet")
    assert pipeline.latest_metadata("es_index", "g/quiet")["commit_sha"] == head
    pipeline.discover()
    assert pipeline.latest_metadata("repositories")["reconcile_wanted"] == 0


def test_the_round_moves_on_and_a_failed_lookup_is_tried_again(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One repository a discovery, in key order, wrapping; a lookup that fails comes first next
    time. An hour's period: the slice is ceil(3 * elapsed / 1 h), 1 for discoveries seconds
    apart (3 if the previous discovery's time were not read back)."""
    monkeypatch.setenv("RECONCILE_PERIOD_SECONDS", "3600")
    repo = init_repo(tmp_path / "r")
    commit_files(repo, {"a.py": "a\n"})
    for key in ("g/a", "g/b", "g/c"):
        pipeline.gitlab.add_project(key, str(repo))
    pipeline.discover()
    assert len(pipeline.run_sensor_requests()) == 3
    positions = []
    for _ in range(4):
        pipeline.discover()
        meta = pipeline.latest_metadata("repositories")
        assert (meta["reconcile_slice"], meta["reconciled"]) == (1, 1)
        positions.append(meta["reconcile_after"])
    assert positions == ["g/a", "g/b", "g/c", "g/a"]
    assert time.time() - 60 < meta["reconciled_at"] <= time.time()
    b_id = pipeline.gitlab.project("g/b").id

    def branch_gone(request: Request, path: str) -> Response | None:
        if f"/projects/{b_id}/repository/branches/" in path:
            return Response(404, {"message": "404 Branch Not Found"})
        return None

    pipeline.gitlab.faults.append(branch_gone)
    pipeline.discover()
    meta = pipeline.latest_metadata("repositories")
    assert meta["reconcile_failed"] == 1 and meta["reconcile_retry"] == ["g/b"]
    assert meta["reconciled"] == 0 and meta["reconcile_after"] == "g/b"
    pipeline.gitlab.faults.clear()
    commit_files(repo, {"a.py": "a moved\n"})  # every project serves this repository
    pipeline.discover()
    meta = pipeline.latest_metadata("repositories")
    # g/b first (tried again), then the round's next one, g/c.
    assert meta["reconcile_retry"] == [] and meta["reconciled"] == 2
    assert meta["reconcile_after"] == "g/c" and meta["reconcile_wanted"] == 2
    assert _wants(pipeline, "g/b") and _wants(pipeline, "g/c") and not _wants(pipeline, "g/a")


def test_a_record_from_before_visibility_was_recorded_is_wanted_once_by_the_round(
    pipeline: Pipeline, tmp_path: Path, every_time: None
) -> None:
    """Its identity is unknown: no lookup, a want; its run records the visibility."""
    repo = init_repo(tmp_path / "old")
    commit_files(repo, {"a.py": "x = 1\n"})
    pipeline.gitlab.add_project("g/old", str(repo), visibility="internal")
    pipeline.discover()
    assert pipeline.run_sensor_requests() == ["g/old"]
    older = {
        k: v
        for k, v in pipeline.latest_metadata("es_index", "g/old").items()
        if k in ("commit_sha", "project_id", "branch")
    }
    older["project"] = MetadataValue.url(f"{pipeline.gitlab.url}/g/old")
    pipeline.instance.report_runless_asset_event(
        AssetMaterialization(ES_INDEX, partition="g/old", metadata=older)
    )
    branch_requests = len(pipeline.gitlab.requests_of_kind("branch"))
    pipeline.discover()
    meta = pipeline.latest_metadata("repositories")
    assert (meta["identity_changed"], meta["reconciled"], meta["reconcile_lookups"]) == (0, 1, 0)
    assert len(pipeline.gitlab.requests_of_kind("branch")) == branch_requests
    assert _wants(pipeline, "g/old") == [
        "identity unknown: indexed before its visibility was recorded (reconciliation)"
    ]
    assert _sensor_ticks(pipeline) == ["g/old"]
    assert pipeline.latest_metadata("es_index", "g/old")["visibility"] == "internal"
    assert _of(pipeline, "g/old") == _expected(pipeline, repo, "g/old", visibility="internal")
    pipeline.discover()
    meta = pipeline.latest_metadata("repositories")
    assert (meta["reconcile_wanted"], meta["reconcile_lookups"]) == (0, 1)


# -- orphans ------------------------------------------------------------------------------------
def test_documents_of_repositories_that_are_no_partition_are_removed(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    repo = init_repo(tmp_path / "a")
    commit_files(repo, {"a.py": "x = 1\ny = 2\n"})
    pipeline.gitlab.add_project("g/a", str(repo))
    pipeline.gitlab.add_project("g/b", str(repo))
    pipeline.discover()
    pipeline.index_all()
    expected = {**_expected(pipeline, repo, "g/a"), **_expected(pipeline, repo, "g/b")}
    assert pipeline.es.documents(INDEX) == expected
    a_id = pipeline.gitlab.project("g/a").id
    # Left by a repository that is no partition, and by another project under g/a's path.
    _write_directly(pipeline, _copies(_of(pipeline, "g/a"), "old/gone", 990))
    _write_directly(pipeline, _copies(_of(pipeline, "g/a"), "g/a", a_id + 900))
    assert len(pipeline.es.documents(INDEX)) == len(expected) + 4

    pipeline.discover()
    meta = pipeline.latest_metadata("repositories")
    assert meta["orphans_removed"] == 2 and meta["orphan_documents_deleted"] == 4
    assert "old/gone (project 990" in meta["orphans"]
    assert f"g/a (project {a_id + 900}" in meta["orphans"]
    assert meta["partitions_removed"] == 0 and pipeline.partitions() == ["g/a", "g/b"]
    assert pipeline.es.documents(INDEX) == expected
    pipeline.discover()
    assert pipeline.latest_metadata("repositories")["orphans_removed"] == 0


def test_a_mass_of_orphans_is_refused_until_a_person_confirms(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """The guard counts orphans with the partitions being removed: an index shared with
    another deployment, or a partial listing, looks like this."""
    repo = init_repo(tmp_path / "a")
    commit_files(repo, {"a.py": "x = 1\n"})
    for i in range(3):
        pipeline.gitlab.add_project(f"g/r{i}", str(repo))
    pipeline.discover()
    pipeline.index_all()
    expected = pipeline.es.documents(INDEX)
    for i in range(3):  # the guard allows max(10 % of 3, 2) = 2
        _write_directly(pipeline, _copies(_of(pipeline, "g/r0"), f"elsewhere/x{i}", 800 + i))
    result = pipeline.discover(raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert failure is not None
    assert failure.description.startswith("discovery would remove 3 of 3 repositories")
    assert "elsewhere/x0 (project 800" in str(failure.description)
    assert CONFIRM_CONFIG in str(failure.description)
    assert len(pipeline.es.documents(INDEX)) == len(expected) + 3

    pipeline.discover(allow_mass_removal=True)
    assert pipeline.latest_metadata("repositories")["orphans_removed"] == 3
    assert pipeline.es.documents(INDEX) == expected


def test_a_want_is_launched_by_the_next_tick(pipeline: Pipeline, tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "vis")
    commit_files(repo, {"a.py": "x = 1\n"})
    pipeline.gitlab.add_project("g/vis", str(repo), visibility="public")
    pipeline.discover()
    assert pipeline.run_sensor_requests() == ["g/vis"]
    pipeline.gitlab.project("g/vis").visibility = "private"
    pipeline.discover()
    assert pipeline.run_sensor_requests() == ["g/vis"]


# -- the index's repositories, against a real node ------------------------------------------------
def _line(name: str, project_id: int, path: str, number: int) -> dict:
    return {
        "project_id": project_id,
        "visibility": "private",
        "repository_name": name,
        "branch": "main",
        "commit_sha": "c" * 40,
        "file_path": path,
        "blob_sha": "b" * 40,
        "line_number": number,
        "line_content": f"line {number} of {path}",
        "line_truncated": False,
        "web_url": f"https://gitlab.example/{name}/-/blob/main/{path}#L{number}",
    }


# Upper case sorts before lower case, "g/a" before "g/a-b" before "g/ab", numbers as numbers.
_PAIRS = [("g/a", 7), ("g/a", 12), ("g/a-b", 3), ("g/ab", 100), ("G/z", 5), ("h/é", 2), ("z", 1)]


def _fill(url: str, headers: dict[str, str], name: str) -> dict[tuple[str, int], int]:
    """The same documents into a fresh index behind `name`; their count per pair."""
    lines, counts = [], {}
    for i, (repository, project_id) in enumerate(_PAIRS):
        counts[(repository, project_id)] = i + 1
        for n in range(1, i + 2):
            doc_id = f"{project_id}-{repository}-{n}"
            lines.append(json.dumps({"index": {"_index": name, "_id": doc_id}}))
            lines.append(json.dumps(_line(repository, project_id, "a.py", n)))
    response = requests.post(
        f"{url}/_bulk?refresh=true",
        data="\n".join(lines) + "\n",
        headers={**headers, "Content-Type": "application/x-ndjson"},
        timeout=60,
    )
    assert response.status_code == 200 and not response.json()["errors"], response.text
    return counts


def _search(url: str, headers: dict[str, str], name: str, body: dict) -> tuple[int, dict]:
    response = requests.post(
        f"{url}/{name}/_search",
        json=body,
        headers={**headers, "Content-Type": "application/json"},
        timeout=60,
    )
    return response.status_code, response.json()


@pytest.mark.opensearch
def test_the_stand_ins_composite_aggregation_answers_as_a_real_node(
    opensearch: OpenSearchNode, es_server: ElasticsearchStandIn
) -> None:
    """Same documents, same requests: the stand-in's aggregations are OpenSearch's, page by
    page (`after_key`, the empty page after the last), orders and refusals included; and
    LineIndex lists the same pairs from both."""
    clusters = {
        "opensearch": (opensearch.url, {}),
        "stand-in": (es_server.url, {"Authorization": f"ApiKey {es_server.api_key}"}),
    }
    engines = {
        "opensearch": connect(Connection(opensearch.url)),
        "stand-in": connect(Connection(es_server.url, api_key=es_server.api_key)),
    }
    expected: dict[tuple[str, int], int] = {}
    for engine, (url, headers) in zip(engines.values(), clusters.values(), strict=True):
        assert LineIndex(engine, "agg-lines").ensure() == "created"
        expected = _fill(url, headers, "agg-lines")

    def composite(size: int, after: dict | None = None, order: str = "asc") -> dict:
        sources = [
            {"repository_name": {"terms": {"field": "repository_name"}}},
            {"project_id": {"terms": {"field": "project_id", "order": order}}},
        ]
        body: dict = {"size": size, "sources": sources}
        if after is not None:
            body["after"] = after
        return {"size": 0, "aggs": {"pairs": {"composite": body}}}

    for order in ("asc", "desc"):
        answers: dict[str, list[dict]] = {}
        for cluster, (url, headers) in clusters.items():
            pages, after = [], None
            while True:
                status, answer = _search(url, headers, "agg-lines", composite(3, after, order))
                assert status == 200, answer
                assert answer["hits"]["hits"] == []
                pages.append(answer["aggregations"])
                after = answer["aggregations"]["pairs"].get("after_key")
                if not answer["aggregations"]["pairs"]["buckets"]:
                    break
            answers[cluster] = pages
        assert answers["stand-in"] == answers["opensearch"], order
        assert len(answers["opensearch"]) == 4  # 7 pairs, 3 a page, then the empty page
    walked = [
        (b["key"]["repository_name"], b["key"]["project_id"], b["doc_count"])
        for page in answers["opensearch"]
        for b in page["pairs"]["buckets"]
    ]
    assert sorted(walked) == sorted((n, p, c) for (n, p), c in expected.items())

    # Fields without doc values are refused alike (line_content is text, web_url not indexed).
    for field in ("line_content", "web_url"):
        body = {
            "size": 0,
            "aggs": {"x": {"composite": {"sources": [{"f": {"terms": {"field": field}}}]}}},
        }
        statuses = {c: _search(url, h, "agg-lines", body)[0] for c, (url, h) in clusters.items()}
        assert statuses == {"opensearch": 400, "stand-in": 400}, field

    for engine in engines.values():
        for page_size in (1, 3, 7, 1000):
            listed = LineIndex(engine, "agg-lines").repositories_in_index(page_size=page_size)
            assert listed == sorted(
                ((n, p, c) for (n, p), c in expected.items()), key=lambda t: (t[0].encode(), t[1])
            )
        assert LineIndex(engine, "no-such-index").repositories_in_index() is None
