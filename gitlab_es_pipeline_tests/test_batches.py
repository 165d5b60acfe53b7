"""Batches of small repositories: each keeps its own state, outcome and exclusive run.

Expectations come from git (`expected_documents` reads the trees with git ls-tree and git
cat-file), from the documents in the Elasticsearch stand-in, and from Dagster's own event log.
"""

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterRun,
    DagsterRunStatus,
    RunsFilter,
)
from elasticsearch import Elasticsearch

from gitlab_es_pipeline.cli.status import repository_status
from gitlab_es_pipeline.core.sensor_cursor import SensorCursor
from gitlab_es_pipeline.defs.asset_keys import ES_INDEX, FILE_MANIFEST, LINE_DOCUMENTS
from gitlab_es_pipeline.defs.partitions import RANGE_END_TAG, RANGE_START_TAG
from gitlab_es_pipeline.defs.sensors import SensorLimits, evaluate_tick
from gitlab_es_pipeline.runs.claims import BATCH_TAG, BATCH_TAG_VALUE, leases_of
from gitlab_es_pipeline.runs.indexed import failing_partitions, last_indexed
from gitlab_es_pipeline.runs.leases import lease_seconds, repository_name
from gitlab_es_pipeline.runs.many import OUTCOME, TAKEN
from gitlab_es_pipeline_tests.corpus import expected_after_runs
from gitlab_es_pipeline_tests.pipeline import INDEX, Pipeline
from gitlab_es_pipeline_tests.repos import commit_files, init_repo, run_git
from gitlab_es_pipeline_tests.run_partition import start_batch

KEYS = ("fleet/a", "fleet/b", "fleet/c")


def _fleet(pipeline: Pipeline, root: Path, keys: tuple[str, ...] = KEYS) -> dict[str, Path]:
    repos = {}
    for key in keys:
        repo = init_repo(root / key.replace("/", "_"))
        commit_files(
            repo,
            {
                "README.md": f"# {key}\n\nsmall repository\n",
                "src/main.py": f"NAME = {key!r}\n\n\ndef main():\n    return NAME\n",
                "old.txt": "to be deleted\n",
            },
        )
        pipeline.gitlab.add_project(key, str(repo))
        repos[key] = repo
    pipeline.discover()
    return repos


def _expected(
    pipeline: Pipeline, repos: dict[str, Path], history: dict[str, list[str]] | None = None
) -> dict[str, dict]:
    """From git: the documents of each repository after runs at the commits of its history
    (incremental runs leave unchanged files' lines at the commit that wrote them)."""
    ids = {p.path_with_namespace: p.id for p in pipeline.gitlab.projects.values()}
    expected: dict[str, dict] = {}
    for key, repo in repos.items():
        url = f"{pipeline.gitlab.url}/{key}"
        commits = (history or {}).get(key) or [_head(repo)]
        expected.update(expected_after_runs(repo, commits, ids[key], key, "main", url).documents)
    return expected


def _head(repo: Path) -> str:
    return run_git(repo, "rev-parse", "HEAD").strip()


def _said(pipeline: Pipeline, run_id: str, key: str) -> list[str]:
    """What a run's log said about one repository, message by message."""
    return [
        m
        for r in pipeline.instance.get_records_for_run(run_id).records
        if (m := r.event_log_entry.user_message or "").startswith(f"{key}:")
        and not r.event_log_entry.is_dagster_event
    ]


def _materializations(pipeline: Pipeline, asset: AssetKey, key: str) -> list:
    only = AssetRecordsFilter(asset_key=asset, asset_partitions=[key])
    return list(pipeline.instance.fetch_materializations(only, limit=100).records)


def _outcomes(pipeline: Pipeline, key: str) -> list:
    """What batches said of a repository they did not index."""
    only = AssetRecordsFilter(asset_key=FILE_MANIFEST, asset_partitions=[key])
    records = pipeline.instance.fetch_observations(only, limit=10).records
    return [r.asset_observation.metadata for r in records]


def test_a_batch_indexes_each_repository_as_its_own_run_would(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    repos = _fleet(pipeline, tmp_path)
    result = pipeline.index_batch({k: _head(r) for k, r in repos.items()})
    assert result.success
    assert pipeline.es.documents(INDEX) == _expected(pipeline, repos)
    for key, repo in repos.items():
        # Each partition has its own materializations, with the commit as data version.
        for asset in (FILE_MANIFEST, AssetKey("line_documents"), ES_INDEX):
            (record,) = _materializations(pipeline, asset, key)
            assert record.run_id == result.run_id
            assert record.asset_materialization.tags["dagster/data_version"] == _head(repo)
        state = last_indexed(pipeline.instance, key)
        assert state is not None and state.commit_sha == _head(repo)
        assert state.lines == 9 and state.files == 3  # 3 + 5 + 1 lines in 3 files
        # Its own checks, for its own partition.
        checks = pipeline.instance.get_records_for_run(
            result.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
        ).records
        mine = [
            c.event_log_entry.dagster_event.event_specific_data
            for c in checks
            if c.event_log_entry.dagster_event.event_specific_data.partition == key
        ]
        assert sorted((e.check_name, e.passed) for e in mine) == [
            ("document_count_matches_manifest", True),
            ("manifest_accounts_for_tree", True),
        ]
        # What its own run would log, gathered in one line: taken, the read plan, the read
        # and the write (each log line is an event write).
        said = _said(pipeline, result.run_id, key)
        assert len(said) == 1 and TAKEN in said[0], said
        assert [line.split(":")[1].split()[0] for line in said[0].splitlines()] == [
            "indexing",
            "main",
            "read",
            "write",
        ], said[0]

    # A repository that takes longer than progress_seconds is said as it goes instead (here
    # at once: 0 s), so that the log shows what a long batch is busy with.
    pipeline.indexing = {"progress_seconds": 0}
    result = pipeline.index_batch(list(repos), full_refresh=True)
    assert result.success
    said = _said(pipeline, result.run_id, "fleet/a")
    assert len(said) > 2 and TAKEN in said[0] and "write" in said[-1], said
    pipeline.indexing = {}

    # A push to one repository: a run of its own after the batch is incremental.
    history = {k: [_head(r)] for k, r in repos.items()}
    commit_files(repos["fleet/b"], {"src/main.py": "NAME = 'b2'\n"}, delete=("old.txt",))
    pipeline.index("fleet/b")
    history["fleet/b"].append(_head(repos["fleet/b"]))
    assert pipeline.latest_metadata("file_manifest", "fleet/b")["mode"] == "incremental"
    assert pipeline.latest_metadata("file_manifest", "fleet/b")["files_read"] == 1
    assert pipeline.es.documents(INDEX) == _expected(pipeline, repos, history)

    # And a batch after a run of its own, and after a batch: incremental too.
    commit_files(repos["fleet/a"], {"new.txt": "new\n"})
    again = pipeline.index_batch(list(repos))
    assert again.success
    for key, repo in repos.items():
        history[key].append(_head(repo))
    assert pipeline.es.documents(INDEX) == _expected(pipeline, repos, history)
    for key in repos:
        metadata = _materializations(pipeline, FILE_MANIFEST, key)[0].asset_materialization
        assert metadata.metadata["mode"].value == "incremental"
        assert metadata.metadata["files_read"].value == (1 if key == "fleet/a" else 0)
        assert last_indexed(pipeline.instance, key).commit_sha == _head(repos[key])


def test_one_failing_repository_does_not_fail_the_others_of_its_batch(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    repos = _fleet(pipeline, tmp_path)
    broken = pipeline.gitlab.project("fleet/b")
    broken.default_branch_name = "gone"  # GitLab answers 404 for the branch
    heads = {k: _head(r) for k, r in repos.items()}
    result = pipeline.index_batch(heads)
    assert not result.success  # the run says a repository failed...
    error = result.failure_data_for_node("index_batch").error.message
    assert "fleet/b" in error and "'gone'" in error and "fleet/a" not in error
    # ... and the others are indexed, exactly.
    healthy = {k: r for k, r in repos.items() if k != "fleet/b"}
    assert pipeline.es.documents(INDEX) == _expected(pipeline, healthy)
    assert {k for k in repos if last_indexed(pipeline.instance, k)} == set(healthy)
    # The failure is the repository's own: a failed materialization the UI shows.
    (outcome,) = _outcomes(pipeline, "fleet/b")
    assert outcome[OUTCOME].value == "failed" and "'gone'" in outcome["reason"].value
    assert failing_partitions(pipeline.instance, list(repos)) == ["fleet/b"]
    status = repository_status(pipeline.instance, "fleet/b", None, None)
    assert status.state == "failing" and "'gone'" in status.last_failure.message
    assert repository_status(pipeline.instance, "fleet/a", None, None).state == "indexed"

    # The sensor asks for it again, alone, after its backoff; not for the others.
    broken.default_branch_name = "main"
    cursor = SensorCursor()
    source = pipeline.resources()["gitlab"].source()
    limits = SensorLimits(recheck_seconds=3600, retry_seconds=30)
    now = time.time()
    for _ in range(2):  # the first tick sees the failure, the second its retry due
        tick = evaluate_tick(pipeline.instance, source, [], cursor, limits, now)
        cursor, now = tick.cursor, now + 31
        assert tick.batches == []
    assert [(k, c) for k, c, _ in tick.runs] == [("fleet/b", heads["fleet/b"])]
    pipeline.index("fleet/b")
    assert pipeline.es.documents(INDEX) == _expected(pipeline, repos)
    assert failing_partitions(pipeline.instance, list(repos)) == []
    status = repository_status(pipeline.instance, "fleet/b", None, None)
    assert status.state == "indexed" and status.last_failure.mended
    # The partition's latest word is no longer the batch's failure (issue 28, point 3).
    latest, failed = _outcomes(pipeline, "fleet/b")
    assert latest[OUTCOME].value == "indexed" and failed[OUTCOME].value == "failed"
    assert repository_status(pipeline.instance, "fleet/a", None, None).last_failure is None
    pipeline.index("fleet/b")  # said once: nothing more to mend
    assert len(_outcomes(pipeline, "fleet/b")) == 2


def _running_batch(pipeline: Pipeline, holding: str, kind: str = "batch") -> DagsterRun:
    """A run of many repositories, started in another process as far as storage can tell,
    that has claimed a repository: a sensor's batch, or a backfill's range run (whose claims
    Dagster records when it makes the run: file_manifest and line_documents, and es_index
    when selected)."""
    tags = (
        {BATCH_TAG: BATCH_TAG_VALUE}
        if kind == "batch"
        else {RANGE_START_TAG: holding, RANGE_END_TAG: holding, "dagster/backfill": "b1"}
    )
    run = pipeline.instance.add_run(
        DagsterRun(
            job_name="index_repositories" if kind == "batch" else "__ASSET_JOB",
            run_id=str(uuid.uuid4()),
            status=DagsterRunStatus.STARTED,
            tags=tags,
        )
    )
    store, heartbeat = leases_of(pipeline.instance)
    lease = store.acquire(repository_name(holding), run.run_id, lease_seconds())
    assert lease is not None
    heartbeat.hold(lease)  # renewed as its process would, for as long as the test needs
    return run


def _end(pipeline: Pipeline, run: DagsterRun) -> None:
    """The run fails, and its process lets go of what it held (as claims.release does)."""
    pipeline.instance.report_run_failed(run, "ended")
    store, _ = leases_of(pipeline.instance)
    for name in store.holders([repository_name(k) for k in KEYS]):
        lease = store.acquire(name, run.run_id, lease_seconds())
        assert lease is not None
        store.release(lease)


@pytest.mark.parametrize("holder", ["batch", "range"])
def test_a_batch_leaves_a_repository_that_another_run_holds(
    pipeline: Pipeline, tmp_path: Path, holder: str
) -> None:
    repos = _fleet(pipeline, tmp_path)
    other = _running_batch(pipeline, "fleet/c", holder)
    result = pipeline.index_batch(list(repos))
    assert result.success  # leaving a repository to its holder is not a failure
    assert last_indexed(pipeline.instance, "fleet/c") is None
    assert {d["repository_name"] for d in pipeline.es.documents(INDEX).values()} == {
        "fleet/a",
        "fleet/b",
    }
    (outcome,) = _outcomes(pipeline, "fleet/c")
    assert outcome[OUTCOME].value == "left" and other.run_id in outcome["reason"].value
    assert failing_partitions(pipeline.instance, list(repos)) == []  # skipped, not failed

    # Once the holder has finished, the repository is anyone's again.
    _end(pipeline, other)
    assert pipeline.instance.get_run_by_id(other.run_id).status == DagsterRunStatus.FAILURE
    assert pipeline.index_batch(["fleet/c"]).success
    assert pipeline.es.documents(INDEX) == _expected(pipeline, repos)


@pytest.mark.parametrize("holder", ["batch", "range"])
def test_a_run_of_one_repository_waits_while_a_batch_has_it(
    pipeline: Pipeline, tmp_path: Path, holder: str
) -> None:
    _fleet(pipeline, tmp_path, ("fleet/a",))
    other = _running_batch(pipeline, "fleet/a", holder)
    released = []

    def release() -> None:
        time.sleep(3)
        released.append(time.time())
        _end(pipeline, other)

    releaser = threading.Thread(target=release)
    releaser.start()
    started = time.time()
    pipeline.index("fleet/a")
    releaser.join()
    (record,) = _materializations(pipeline, ES_INDEX, "fleet/a")
    assert time.time() - started >= 3 and record.timestamp > released[0]
    # And the run said why it waited.
    run_id = record.run_id
    messages = [e.user_message for e in pipeline.instance.all_logs(run_id)]
    assert any(f"run {other.run_id} is indexing this repository" in m for m in messages)


@pytest.mark.parametrize("project_instance", ["sqlite", "postgres"], indirect=True)
def test_two_batches_at_once_never_index_one_repository_together(
    project_pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline = project_pipeline
    keys = [f"fleet/r{i}" for i in range(6)]
    repos = _fleet(pipeline, tmp_path, tuple(keys))
    # Each repository's tree listing takes a second, and both batches take the repositories in
    # the same order: they start on the first one together and contend all the way.
    pipeline.gitlab.faults.append(_slow_tree_listing)
    children = [start_batch(pipeline, keys), start_batch(pipeline, keys)]
    assert [c.wait(timeout=300) for c in children] == [0, 0]
    runs = pipeline.instance.get_run_records(RunsFilter(tags={BATCH_TAG: BATCH_TAG_VALUE}))
    assert len(runs) == 2
    # They did run at the same time, for most of their length.
    (s1, e1), (s2, e2) = [(r.start_time, r.end_time) for r in runs]
    assert s1 is not None and s2 is not None and e1 is not None and e2 is not None
    overlap = min(e1, e2) - max(s1, s2)
    assert overlap > 0.5 * max(e1 - s1, e2 - s2), (s1, e1, s2, e2)
    indexed = set()
    left = 0
    for key in keys:
        # A batch that came to the repository after the other had indexed it found it up to
        # date: an incremental read of nothing. Had the two overlapped on it, both would have
        # read it in full, since the mode is chosen from the indexed commit that the first one
        # records only when it is done.
        reads = [
            (m.metadata["mode"].value, m.metadata["files_read"].value)
            for m in (
                r.asset_materialization for r in _materializations(pipeline, FILE_MANIFEST, key)
            )
        ]
        full = [r for r in reads if r[0] in ("full", "full_refresh") and r[1] == 3]
        others = [r for r in reads if r not in full]
        assert len(full) == (1 if reads else 0) and others in ([], [("incremental", 0)]), (
            key,
            reads,
        )
        if reads:
            indexed.add(key)
        # A batch that did not index it said so.
        outcomes = _outcomes(pipeline, key)
        assert len(reads) + len(outcomes) == 2
        left += sum(o[OUTCOME].value == "left" for o in outcomes)
    assert left > 0  # they met: one found a repository the other held
    # The repositories that were indexed are exactly as git has them; each batch let go of
    # its repositories when done, so a later batch takes the rest.
    pipeline.gitlab.faults.remove(_slow_tree_listing)
    assert pipeline.es.documents(INDEX) == _expected(pipeline, {k: repos[k] for k in indexed})
    assert pipeline.index_batch(keys).success
    assert pipeline.es.documents(INDEX) == _expected(pipeline, repos)


def _slow_tree_listing(request: object, path: str) -> None:
    if path.endswith("/repository/tree"):
        time.sleep(1.0)


def _recorded_by(pipeline: Pipeline, run_id: str, asset: AssetKey, keys: list[str]) -> set[str]:
    return {
        k for k in keys if any(r.run_id == run_id for r in _materializations(pipeline, asset, k))
    }


def _range_check(pipeline: Pipeline, run_id: str) -> dict:
    """The range step's own result of its check (each partition has its own too)."""
    (evaluation,) = [
        e.dagster_event.event_specific_data
        for e in pipeline.instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
        if e.dagster_event.event_specific_data.partition is None
    ]
    return {"passed": evaluation.passed, **{k: v.value for k, v in evaluation.metadata.items()}}


def test_a_backfill_range_run_records_each_repository_as_its_own_run_would(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    repos = _fleet(pipeline, tmp_path)
    result = pipeline.index_range("fleet/a", "fleet/c")
    assert result.success
    assert pipeline.es.documents(INDEX) == _expected(pipeline, repos)
    # The range's first step indexed and recorded every partition; es_index's own step, with
    # no inputs given, was skipped.
    skipped = [e.step_key for e in result.all_events if e.event_type_value == "STEP_SKIPPED"]
    assert skipped == ["es_index"]
    # Said before Dagster says it, so that its "Skipping step es_index" reads as intended.
    said = [
        r.event_log_entry.user_message
        for r in pipeline.instance.get_records_for_run(result.run_id).records
    ]
    told = next(i for i, m in enumerate(said) if m.startswith("es_index was written in this step"))
    assert told < next(i for i, m in enumerate(said) if m.startswith("Skipping step es_index"))
    for key, repo in repos.items():
        for asset in (FILE_MANIFEST, LINE_DOCUMENTS, ES_INDEX):
            (record,) = _materializations(pipeline, asset, key)
            assert record.run_id == result.run_id
            assert record.asset_materialization.tags["dagster/data_version"] == _head(repo)
        assert last_indexed(pipeline.instance, key).commit_sha == _head(repo)
        # Dagster recorded the run's claim on each partition when it made the run.
        planned = pipeline.instance.fetch_planned_materializations(
            AssetRecordsFilter(asset_key=FILE_MANIFEST, asset_partitions=[key]), limit=5
        ).records
        assert [p.run_id for p in planned] == [result.run_id]
        said = _said(pipeline, result.run_id, key)
        assert len(said) == 1 and TAKEN in said[0], said
    assert _range_check(pipeline, result.run_id) == {
        "passed": True,
        "repositories_checked": 3,
        "repositories_failing": 0,
        "failing": "none",
    }
    # es_index alone over a range writes each partition from what its last read stored (here a full
    # read): a repository's documents lost from the index come back; its count check sees them.
    client = Elasticsearch(pipeline.es.url, api_key=pipeline.es.api_key)
    client.delete_by_query(
        index=INDEX, query={"term": {"repository_name": "fleet/c"}}, refresh=True
    )
    assert {d["repository_name"] for d in pipeline.es.documents(INDEX).values()} == {
        "fleet/a",
        "fleet/b",
    }
    alone = pipeline.index_range("fleet/c", "fleet/c", es_index_only=True)
    assert alone.success
    assert pipeline.es.documents(INDEX) == _expected(pipeline, repos)
    assert _recorded_by(pipeline, alone.run_id, ES_INDEX, list(repos)) == {"fleet/c"}
    assert _recorded_by(pipeline, alone.run_id, FILE_MANIFEST, list(repos)) == set()
    check = AssetCheckKey(ES_INDEX, "document_count_matches_manifest")
    latest = pipeline.instance.event_log_storage.get_latest_asset_check_execution_by_key([check])
    assert latest[check].run_id == alone.run_id
    assert _range_check(pipeline, alone.run_id)["passed"] is True
    assert _range_check(pipeline, alone.run_id)["repositories_checked"] == 1

    # es_index alone where the index holds the last read already (issue 28, point 2): a
    # range and a run of one partition send nothing, say so, and still count.
    pipeline.es.requests.clear()
    assert pipeline.index_range("fleet/a", "fleet/c", es_index_only=True).success
    assert pipeline.write_alone("fleet/b").success
    assert [path for _, path in pipeline.es.requests if "_bulk" in path] == []
    assert pipeline.es.documents(INDEX) == _expected(pipeline, repos)
    for key, repo in repos.items():
        meta = pipeline.latest_metadata("es_index", key)
        assert meta["outcome"].startswith(f"up to date at {_head(repo)[:12]}: the index holds")
        assert meta["documents_written"] == meta["documents_deleted"] == 0
        assert meta["commit_sha"] == last_indexed(pipeline.instance, key).commit_sha
    latest = pipeline.instance.event_log_storage.get_latest_asset_check_execution_by_key([check])
    assert latest[check].status.value == "SUCCEEDED"

    # A push, then another range: incremental per repository, as its own run would be.
    history = {k: [_head(r)] for k, r in repos.items()}
    commit_files(repos["fleet/b"], {"src/main.py": "NAME = 'b2'\n"}, delete=("old.txt",))
    history["fleet/b"].append(_head(repos["fleet/b"]))
    assert pipeline.index_range("fleet/a", "fleet/c").success
    assert pipeline.es.documents(INDEX) == _expected(pipeline, repos, history)
    assert pipeline.latest_metadata("file_manifest", "fleet/b")["files_read"] == 1
    assert pipeline.latest_metadata("file_manifest", "fleet/a")["files_read"] == 0


def test_a_range_run_fails_for_its_failing_repository_alone(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    repos = _fleet(pipeline, tmp_path)
    # es_index alone before anything was read: each repository fails, naming what is missing,
    # and the range's check, which no repository reached, has not passed.
    unread = pipeline.index_range("fleet/a", "fleet/c", es_index_only=True)
    assert not unread.success
    error = unread.failure_data_for_node("es_index").error.message
    assert error.count("no file_manifest is stored") == 3, error
    assert _range_check(pipeline, unread.run_id)["passed"] is False
    assert _range_check(pipeline, unread.run_id)["repositories_checked"] == 0

    broken = pipeline.gitlab.project("fleet/b")
    broken.default_branch_name = "gone"  # GitLab answers 404 for the branch
    other = _running_batch(pipeline, "fleet/c")  # and another run holds fleet/c
    result = pipeline.index_range("fleet/a", "fleet/c")
    assert not result.success
    error = result.failure_data_for_node("manifest_and_line_documents").error.message
    assert "fleet/b" in error and "'gone'" in error
    assert f"fleet/c: run {other.run_id} has it" in error and "fleet/a" not in error
    assert pipeline.es.documents(INDEX) == _expected(pipeline, {"fleet/a": repos["fleet/a"]})
    # A backfill marks as failed a ranged run's range minus what the run recorded (Dagster's
    # _get_failed_asset_graph_subset): exactly the two it did not index, for each asset.
    for asset in (FILE_MANIFEST, LINE_DOCUMENTS, ES_INDEX):
        assert set(repos) - _recorded_by(pipeline, result.run_id, asset, list(repos)) == {
            "fleet/b",
            "fleet/c",
        }
    # The newest outcome of each (the es_index-only run's "failed" came before).
    assert _outcomes(pipeline, "fleet/b")[0][OUTCOME].value == "failed"
    assert _outcomes(pipeline, "fleet/c")[0][OUTCOME].value == "left"
    # The UI marks a failed run's planned partitions it did not record as failed: fleet/c too,
    # until the run that has it records it.
    assert failing_partitions(pipeline.instance, list(repos)) == ["fleet/b", "fleet/c"]
    # fleet/b failed before its manifest was checked; the range's check counts what it checked.
    assert _range_check(pipeline, result.run_id)["repositories_checked"] == 1

    # Mended, and the holder gone: the range again indexes everything.
    broken.default_branch_name = "main"
    _end(pipeline, other)
    assert pipeline.index_range("fleet/a", "fleet/c").success
    assert pipeline.es.documents(INDEX) == _expected(pipeline, repos)
    assert failing_partitions(pipeline.instance, list(repos)) == []


def test_es_index_alone_writes_a_read_that_was_stored_but_never_recorded(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch stores a repository's read, then fails to record it (the lease lost, storage
    away): the stored read is newer than anything recorded, at the same commit but with
    another identity (the project made private). es_index alone must write it, not take the
    index for up to date because the last write's record is newer than the last read's."""
    import gitlab_es_pipeline.runs.many as many

    repo = init_repo(tmp_path / "vis")
    commit_files(repo, {"a.py": "x = 1\ny = 2\n", "docs/b.md": "# b\n"})
    pipeline.gitlab.add_project("g/vis", str(repo), visibility="public")
    pipeline.discover()
    assert pipeline.index("g/vis").success
    pipeline.gitlab.project("g/vis").visibility = "private"
    pipeline.discover()
    real, calls = many.confirm, [0]

    def lost_on_the_read_s_record(step: Any, lease: Any) -> None:
        calls[0] += 1
        if calls[0] == 2:  # the first confirms the staged read; the second guards its record
            raise RuntimeError("lease lost while recording the read")
        real(step, lease)

    monkeypatch.setattr(many, "confirm", lost_on_the_read_s_record)
    assert not pipeline.index_batch(["g/vis"]).success
    monkeypatch.setattr(many, "confirm", real)
    assert pipeline.write_alone("g/vis").success
    visibilities = {
        d["visibility"]
        for d in pipeline.es.documents(INDEX).values()
        if d["repository_name"] == "g/vis"
    }
    assert visibilities == {pipeline.gitlab.project("g/vis").visibility}
    assert pipeline.latest_metadata("es_index", "g/vis")["documents_written"] > 0


def test_a_failure_recorded_once_the_lease_is_let_go_is_not_marked_mended(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mend of an old batch failure is said under the repository's lease: a batch that
    takes the repository the moment it is let go, and fails it, has the last word."""
    from importlib import import_module

    from dagster import AssetObservation, MetadataValue

    # The step's module (its package's attribute of that name is the asset).
    es_index_step = import_module("gitlab_es_pipeline.defs.assets.es_index")

    repo = init_repo(tmp_path / "a")
    commit_files(repo, {"a.py": "x = 1\n"})
    pipeline.gitlab.add_project("g/a", str(repo))
    pipeline.discover()
    failed: dict[str, Any] = {
        OUTCOME: "failed",
        "reason": MetadataValue.md("g/a: GitLab answered 500"),
    }
    pipeline.instance.report_runless_asset_event(
        AssetObservation(asset_key=FILE_MANIFEST, partition="g/a", metadata=failed)
    )
    real = es_index_step.settle

    def let_go_then_another_batch_fails_it(step: Any, lease: Any) -> None:
        real(step, lease)
        pipeline.instance.report_runless_asset_event(
            AssetObservation(asset_key=FILE_MANIFEST, partition="g/a", metadata=failed)
        )

    monkeypatch.setattr(es_index_step, "settle", let_go_then_another_batch_fails_it)
    assert pipeline.index("g/a").success
    newest, before, first = (o[OUTCOME].value for o in _outcomes(pipeline, "g/a")[:3])
    assert (newest, before, first) == ("failed", "indexed", "failed")
