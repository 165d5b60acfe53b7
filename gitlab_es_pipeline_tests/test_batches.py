"""Batches of small repositories: each keeps its own state, outcome and exclusive run.

Expectations come from git (`expected_documents` reads the trees with git ls-tree and git
cat-file), from the documents in the Elasticsearch stand-in, and from Dagster's own event log.
"""

import itertools
import threading
import time
import uuid
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterRun,
    DagsterRunStatus,
    RunsFilter,
)

from gitlab_es_pipeline.batches import OUTCOME, TAKEN
from gitlab_es_pipeline.claims import BATCH_TAG, BATCH_TAG_VALUE, record_claim
from gitlab_es_pipeline.core.head_tracking import TrackerCursor
from gitlab_es_pipeline.sensors import SensorLimits, evaluate_tick
from gitlab_es_pipeline.state import ES_INDEX, FILE_MANIFEST, failing_partitions, last_indexed
from gitlab_es_pipeline.status import repository_status
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
    return pipeline.instance.fetch_materializations(only, limit=100).records


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
    broken = next(
        p for p in pipeline.gitlab.projects.values() if p.path_with_namespace == "fleet/b"
    )
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
    cursor = TrackerCursor()
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
    assert repository_status(pipeline.instance, "fleet/b", None, None).state == "indexed"


def _running_batch(pipeline: Pipeline, holding: str) -> DagsterRun:
    """A batch run, started in another process as far as storage can tell, that has claimed
    a repository."""
    run = pipeline.instance.add_run(
        DagsterRun(
            job_name="index_repositories",
            run_id=str(uuid.uuid4()),
            status=DagsterRunStatus.STARTED,
            tags={BATCH_TAG: BATCH_TAG_VALUE},
        )
    )
    record_claim(
        pipeline.instance, run.run_id, "index_repositories", "index_batch", holding, [ES_INDEX]
    )
    return run


def _end(pipeline: Pipeline, run: DagsterRun) -> None:
    pipeline.instance.report_run_failed(run, "ended")


def test_a_batch_leaves_a_repository_that_another_run_holds(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    repos = _fleet(pipeline, tmp_path)
    other = _running_batch(pipeline, "fleet/c")
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


def test_a_run_of_one_repository_waits_while_a_batch_has_it(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    _fleet(pipeline, tmp_path, ("fleet/a",))
    other = _running_batch(pipeline, "fleet/a")
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
    keys = [f"fleet/r{i}" for i in range(8)]
    repos = _fleet(pipeline, tmp_path, tuple(keys))
    # Two processes, one going forwards and one backwards: they meet in the middle.
    children = [start_batch(pipeline, keys), start_batch(pipeline, keys[::-1])]
    assert [c.wait(timeout=300) for c in children] == [0, 0]
    indexed = set()
    for key in keys:
        # For each batch that indexed the repository: from its claim (recorded before it
        # looked for others) to its es_index materialization. Times, not storage ids: SQLite
        # keeps a run's log and the asset index in separate databases.
        claims = pipeline.instance.fetch_planned_materializations(
            AssetRecordsFilter(asset_key=ES_INDEX, asset_partitions=[key]), limit=10
        ).records
        spans = []
        for record in _materializations(pipeline, ES_INDEX, key):
            claimed = [
                c.event_log_entry.timestamp
                for c in claims
                if c.event_log_entry.run_id == record.run_id
            ]
            spans.append((min(claimed), record.timestamp))
            indexed.add(key)
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end < start, (key, spans)  # one after the other, never together
        # A batch that did not index it said so.
        assert len(spans) + len(_outcomes(pipeline, key)) == 2
    runs = pipeline.instance.get_run_records(RunsFilter(tags={BATCH_TAG: BATCH_TAG_VALUE}))
    assert len(runs) == 2
    # The repositories that were indexed are exactly as git has them; each batch's claims
    # ended with the run, so a later batch takes the rest.
    assert pipeline.es.documents(INDEX) == _expected(pipeline, {k: repos[k] for k in indexed})
    assert pipeline.index_batch(keys).success
    assert pipeline.es.documents(INDEX) == _expected(pipeline, repos)
