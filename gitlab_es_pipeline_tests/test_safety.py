"""Never delete, degrade or expose by accident (see docs/operations.md, *Faults* and *Security*)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from gitlab_es_pipeline.core.removals import CONFIRM_CONFIG, RemovalGuard
from gitlab_es_pipeline.defs.asset_keys import DEAD_LETTERS
from gitlab_es_pipeline.runs.indexed import last_indexed
from gitlab_es_pipeline_tests.corpus import expected_after_runs, expected_documents
from gitlab_es_pipeline_tests.pipeline import INDEX, Pipeline
from gitlab_es_pipeline_tests.repos import commit_files, init_repo
from gitlab_es_pipeline_tests.run_partition import run_killed
from gitlab_es_pipeline_tests.standins.http import Request, Response


@pytest.mark.parametrize(
    ("partitions", "removing", "allowed"),
    [(30, 3, True), (30, 4, False), (15, 2, True), (15, 3, False), (1000, 100, True)],
)
def test_the_guard_allows_a_share_or_a_small_count(
    partitions: int, removing: int, allowed: bool
) -> None:
    guard = RemovalGuard(max_share=0.10, small_fleet_count=2)
    keys = [f"g/p{i}" for i in range(removing)]
    refusal = guard.refusal(partitions, keys)
    assert (refusal is None) == allowed
    if refusal is not None:
        assert f"remove {removing} of {partitions} repositories" in refusal
        assert CONFIRM_CONFIG in refusal and "g/p0" in refusal


def _documents_of(pipeline: Pipeline, key: str) -> int:
    return sum(1 for d in pipeline.es.documents(INDEX).values() if d["repository_name"] == key)


def test_discovery_refuses_a_mass_removal_until_a_person_confirms_it(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    repo = init_repo(tmp_path / "shared")
    commit_files(repo, {"a.py": "x = 1\ny = 2\n"})
    for i in range(30):
        pipeline.gitlab.add_project(f"team/r{i:02d}", str(repo))
    pipeline.discover()
    assert len(pipeline.partitions()) == 30
    for key in ("team/r00", "team/r29"):
        pipeline.index(key)
    ids = {p.path_with_namespace: pid for pid, p in pipeline.gitlab.projects.items()}

    # A few gone at once: removed, and listed in the metadata.
    for key in ("team/r01", "team/r02", "team/r03"):
        del pipeline.gitlab.projects[ids[key]]
    pipeline.discover()
    meta = pipeline.latest_metadata("repositories")
    assert meta["partitions_removed"] == 3
    assert meta["removed"] == "- team/r01\n- team/r02\n- team/r03"

    # A token that lost access to a group: ten at once is refused, nothing changes.
    for i in range(20, 30):
        del pipeline.gitlab.projects[ids[f"team/r{i:02d}"]]
    result = pipeline.discover(raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert failure is not None
    assert failure.description.startswith("discovery would remove 10 of 27 repositories (37%)")
    assert "team/r29" in str(failure.description) and CONFIRM_CONFIG in str(failure.description)
    assert len(pipeline.partitions()) == 27
    assert _documents_of(pipeline, "team/r29") == 2
    assert last_indexed(pipeline.instance, "team/r29") is not None

    # Confirmed from the launchpad: removed with their documents, listed.
    pipeline.discover(allow_mass_removal=True)
    assert len(pipeline.partitions()) == 17
    assert _documents_of(pipeline, "team/r29") == 0 and _documents_of(pipeline, "team/r00") == 2
    meta = pipeline.latest_metadata("repositories")
    assert meta["partitions_removed"] == 10 and "- team/r29" in meta["removed"]


def _delete_by_query_answers(kind: str, times: int) -> Callable[[Request], Response | None]:
    """The next `times` deletes by query answer without deleting anything: with version
    conflicts (documents changed under it), with a shard failure, or claiming success."""
    answered = [0]

    def fault(request: Request) -> Response | None:
        if not request.raw_path.endswith("/_delete_by_query") or answered[0] >= times:
            return None
        answered[0] += 1
        body: dict = {"took": 1, "timed_out": False, "total": 2, "deleted": 0, "failures": []}
        body["version_conflicts"] = 2 if kind == "conflicts" else 0
        if kind == "failure":
            body["failures"] = [
                {"shard": 0, "status": 500, "cause": {"type": "node_disconnected_exception"}}
            ]
        if kind == "claims_success":
            body["deleted"] = 2
        return Response(200, body, headers={"X-Elastic-Product": "Elasticsearch"})

    return fault


@pytest.mark.parametrize("kind", ["conflicts", "failure", "claims_success"])
def test_a_removal_is_recorded_only_when_no_document_is_left(
    pipeline: Pipeline, tmp_path: Path, kind: str
) -> None:
    repo = init_repo(tmp_path / "shared")
    commit_files(repo, {"a.py": "x = 1\ny = 2\n"})
    for key in ("team/keep", "team/gone"):
        pipeline.gitlab.add_project(key, str(repo))
    pipeline.discover()
    pipeline.index("team/keep")
    pipeline.index("team/gone")
    gone = pipeline.gitlab.project("team/gone")
    del pipeline.gitlab.projects[gone.id]
    pipeline.es_options["bulk_initial_backoff_seconds"] = 0.05  # the wait between sweeps
    pipeline.es.faults.append(_delete_by_query_answers(kind, times=1))
    result = pipeline.discover(raise_on_error=False)
    sweeps = [p for _, p in pipeline.es.requests if p.endswith("/_delete_by_query")]
    if kind == "conflicts":  # swept again after a refresh, then counted: done
        assert result.success and len(sweeps) == 2
        assert pipeline.partitions() == ["team/keep"]
        assert _documents_of(pipeline, "team/gone") == 0
        assert last_indexed(pipeline.instance, "team/gone") is None
        return
    assert not result.success and len(sweeps) == 1
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert failure is not None and failure.description.startswith(
        "team/gone: removing its documents"
    )
    expected = "failed on 1 shards" if kind == "failure" else "2 documents still match"
    assert expected in str(failure.description)
    # Not recorded as removed: the partition and its state stay, to be removed next time.
    assert pipeline.partitions() == ["team/gone", "team/keep"]
    assert last_indexed(pipeline.instance, "team/gone") is not None
    pipeline.discover()
    assert pipeline.partitions() == ["team/keep"] and _documents_of(pipeline, "team/gone") == 0
    assert _documents_of(pipeline, "team/keep") == 2


@pytest.mark.faults
@pytest.mark.parametrize("project_instance", ["sqlite"], indirect=True)
def test_a_first_load_killed_mid_write_has_its_index_settings_restored_by_the_next_run(
    project_pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline = project_pipeline
    repo = init_repo(tmp_path / "app")
    commit_files(repo, {f"f{i}.py": f"line {i}\n" * 30 for i in range(20)})
    project = pipeline.gitlab.add_project("team/app", str(repo))
    pipeline.discover()
    run_killed(pipeline, "team/app", at_item="index")
    index = pipeline.es.indices[f"{INDEX}-v1"]
    assert index.settings["index"]["refresh_interval"] == "-1"  # degraded, as the kill left it
    assert str(index.settings["index"]["number_of_replicas"]) == "0"

    result = pipeline.index("team/app")
    after = index.shown_settings()["index"]
    assert "refresh_interval" not in after and after["number_of_replicas"] == "1"  # as new
    assert "_meta" not in index.mappings or not index.mappings["_meta"]
    logs = pipeline.instance.all_logs(result.run_id)
    assert any("first load was cut short" in (r.user_message or "") for r in logs)
    url = f"{pipeline.gitlab.url}/team/app"
    expected = expected_documents(repo, project.id, "team/app", "main", url)
    assert pipeline.es.documents(INDEX) == expected.documents


def test_the_first_success_after_a_failed_first_load_removes_what_it_left(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """The failed first load wrote gone.py's lines; gone.py is deleted before the next run,
    which is a first load too (nothing was ever indexed) and must not keep them."""
    repo = init_repo(tmp_path / "app")
    commit_files(repo, {"a.py": "x = 1\ny = 2\n", "gone.py": "old = 1\nold = 2\nold = 3\n"})
    project = pipeline.gitlab.add_project("team/app", str(repo))
    pipeline.discover()

    def refuse_one(kind: str, meta: dict, source: dict | None) -> dict | None:
        if source and source["file_path"] == "a.py" and source["line_number"] == 2:
            return {"_id": meta["_id"], "status": 400, "error": {"type": "x", "reason": "no"}}
        return None

    pipeline.es.item_faults.append(refuse_one)
    assert not pipeline.index("team/app", raise_on_error=False).success
    assert any(d["file_path"] == "gone.py" for d in pipeline.es.documents(INDEX).values())
    assert last_indexed(pipeline.instance, "team/app") is None
    pipeline.es.item_faults.clear()
    commit_files(repo, {}, "remove gone.py", delete=("gone.py",))

    assert pipeline.index("team/app").success
    assert pipeline.latest_metadata("file_manifest", "team/app")["mode"] == "full_refresh"
    url = f"{pipeline.gitlab.url}/team/app"
    expected = expected_documents(repo, project.id, "team/app", "main", url)
    assert pipeline.es.documents(INDEX) == expected.documents
    assert pipeline.latest_metadata("es_index", "team/app")["documents_deleted"] == 3


def _files_under(storage: Path) -> list[str]:
    return sorted(str(p.relative_to(storage)) for p in storage.rglob("*"))


def test_a_removed_repository_leaves_nothing_on_disk(pipeline: Pipeline, tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "app")
    commit_files(repo, {"a.py": "x = 1\n"})
    gone = pipeline.gitlab.add_project("solo/app", str(repo))
    pipeline.gitlab.add_project("team/stays", str(repo))
    pipeline.discover()
    pipeline.index("solo/app")
    pipeline.index("team/stays")
    # A dead-letter table, as a run with documents refused for good leaves one.
    store = pipeline.resources()["parquet_io_manager"].create_io_manager(None)
    store.store_partition(DEAD_LETTERS, "solo/app", pa.table({"x": [1]}))
    before = _files_under(pipeline.storage)
    assert sum("solo" in f for f in before) >= 8  # 4 folders and 4 files
    del pipeline.gitlab.projects[gone.id]
    pipeline.discover()
    after = _files_under(pipeline.storage)
    assert [f for f in after if "solo" in f] == []
    assert {f for f in before if "solo" not in f} <= set(after)  # the other one's are kept


def test_line_documents_can_be_dropped_once_written(pipeline: Pipeline, tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "app")
    first = commit_files(repo, {"a.py": "x = 1\n", "b.py": "y = 2\n"})
    project = pipeline.gitlab.add_project("team/app", str(repo))
    pipeline.indexing["keep_line_documents"] = False
    pipeline.discover()
    pipeline.index("team/app")
    stored = _files_under(pipeline.storage)
    assert "line_documents/team/app.parquet" not in stored
    assert {"file_manifest/team/app.parquet", "es_index/team/app.parquet"} <= set(stored)
    second = commit_files(repo, {"a.py": "x = 3\n"})
    assert pipeline.index("team/app").success  # incremental from the kept manifest
    assert pipeline.latest_metadata("file_manifest", "team/app")["mode"] == "incremental"
    url = f"{pipeline.gitlab.url}/team/app"
    expected = expected_after_runs(repo, [first, second], project.id, "team/app", "main", url)
    assert pipeline.es.documents(INDEX) == expected.documents
    assert "line_documents/team/app.parquet" not in _files_under(pipeline.storage)


def test_a_repository_removed_while_its_run_writes_leaves_no_documents(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Discovery sweeps the repository and deletes its partition while an index run is
    writing: the run's later writes would outlive the sweep. The run notices, sweeps again and
    records nothing."""
    from gitlab_es_pipeline.defs.partitions import REPOSITORIES_PARTITION

    repo = init_repo(tmp_path / "app")
    commit_files(repo, {f"f{i}.py": f"line {i}\n" * 5 for i in range(10)})
    pipeline.gitlab.add_project("team/app", str(repo))
    pipeline.discover()
    pipeline.es_options["bulk_max_docs"] = 10  # several bulk requests

    def discovery_finishes_meanwhile(kind: str, meta: dict, source: object) -> None:
        if pipeline.partitions():  # what discovery's removal ends with
            pipeline.instance.delete_dynamic_partition(REPOSITORIES_PARTITION, "team/app")

    pipeline.es.item_faults.append(discovery_finishes_meanwhile)
    result = pipeline.index("team/app", raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert failure is not None and "discovery removed this repository while the run wrote" in (
        failure.description or ""
    )
    assert pipeline.es.documents(INDEX) == {}
    assert last_indexed(pipeline.instance, "team/app") is None
    assert [f for f in _files_under(pipeline.storage) if "team" in f] == []
