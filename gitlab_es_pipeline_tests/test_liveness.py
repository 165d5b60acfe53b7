"""Liveness and exclusivity (issue 25): every wanted repository is asked for until it is
indexed, whatever ran before; no two runs write one repository at once; a dead run lets go.

Each test reproduces an interleaving that left a repository stale, or two runs writing it,
before leases and wants (docs/runs.md). Expectations come from git (`expected_after_runs`)
and the stand-ins, never from the pipeline's code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from dagster import (
    AssetRecordsFilter,
    DagsterRun,
    DagsterRunStatus,
    RunRecord,
    RunsFilter,
)

from gitlab_es_pipeline.defs.asset_keys import ES_INDEX, FILE_MANIFEST
from gitlab_es_pipeline.defs.partitions import RANGE_END_TAG, RANGE_START_TAG
from gitlab_es_pipeline.defs.sensors import SensorLimits
from gitlab_es_pipeline.runs.claims import BATCH_TAG, BATCH_TAG_VALUE, leases_of
from gitlab_es_pipeline.runs.indexed import last_indexed
from gitlab_es_pipeline.runs.leases import lease_seconds, repository_name
from gitlab_es_pipeline.runs.many import OUTCOME
from gitlab_es_pipeline_tests.corpus import expected_after_runs
from gitlab_es_pipeline_tests.pipeline import INDEX, Pipeline
from gitlab_es_pipeline_tests.repos import commit_files, init_repo, run_git
from gitlab_es_pipeline_tests.run_partition import spec_of

LIMITS = SensorLimits(recheck_seconds=0, retry_seconds=0.2, request_grace_seconds=0)


def _fleet(pipeline: Pipeline, root: Path, keys: tuple[str, ...]) -> dict[str, Path]:
    repos = {}
    for key in keys:
        repo = init_repo(root / key.replace("/", "_"))
        commit_files(repo, {"README.md": f"# {key}\n", "src/main.py": f"NAME = {key!r}\n"})
        pipeline.gitlab.add_project(key, str(repo))
        repos[key] = repo
    pipeline.discover()
    return repos


def _head(repo: Path) -> str:
    return run_git(repo, "rev-parse", "HEAD").strip()


def _expected(
    pipeline: Pipeline, repos: dict[str, Path], history: dict[str, list[str]] | None = None
) -> dict[str, dict]:
    """From git: each repository's documents after runs at the commits of its history (HEAD
    alone, a full load, by default)."""
    ids = {p.path_with_namespace: p.id for p in pipeline.gitlab.projects.values()}
    expected: dict[str, dict] = {}
    for key, repo in repos.items():
        url = f"{pipeline.gitlab.url}/{key}"
        commits = (history or {}).get(key) or [_head(repo)]
        expected.update(expected_after_runs(repo, commits, ids[key], key, "main", url).documents)
    return expected


def _holding_run(pipeline: Pipeline, key: str, kind: str) -> DagsterRun:
    """A started run of another process that holds the repository's lease."""
    tags = (
        {BATCH_TAG: BATCH_TAG_VALUE}
        if kind == "batch"
        else {RANGE_START_TAG: key, RANGE_END_TAG: key, "dagster/backfill": "b1"}
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
    lease = store.acquire(repository_name(key), run.run_id, lease_seconds())
    assert lease is not None
    heartbeat.hold(lease)  # renewed as its process would, for as long as the test needs
    return run


def _end(pipeline: Pipeline, run: DagsterRun, key: str) -> None:
    """The holding run fails without indexing the repository, and lets go of it."""
    pipeline.instance.report_run_failed(run, "ended")
    store, _ = leases_of(pipeline.instance)
    lease = store.acquire(repository_name(key), run.run_id, lease_seconds())
    assert lease is not None
    store.release(lease)


def _until_quiet(pipeline: Pipeline, ticks: int = 6) -> list[list[str]]:
    """Ticks (with the runs they ask for) until one asks for nothing; what each launched."""
    rounds = []
    for _ in range(ticks):
        time.sleep(0.25)  # past the retry backoff of LIMITS
        launched = pipeline.run_tick(LIMITS)
        rounds.append(launched)
        if not launched and not _awaited(pipeline):
            break
    return rounds


def _awaited(pipeline: Pipeline) -> dict:
    from gitlab_es_pipeline.core.sensor_cursor import SensorCursor

    return SensorCursor.from_json(pipeline.sensor_cursor).requested


@pytest.mark.parametrize("holder", ["batch", "range"])
def test_a_repository_a_batch_left_to_another_run_is_asked_for_again_once_it_is_free(
    pipeline: Pipeline, tmp_path: Path, holder: str
) -> None:
    """Issue 25, defect 1: the batch left the repository and succeeded; the sensor had
    marked it requested and never asked again (nor would Dagster run the same key twice)."""
    keys = ("fleet/a", "fleet/b", "fleet/c")
    repos = _fleet(pipeline, tmp_path, keys)
    others: list[DagsterRun] = []
    # The other run takes it after the sensor asked for it, before the batch comes to it: the
    # batch indexes a and b and leaves c.
    launched = pipeline.run_tick(
        LIMITS, before_launch=lambda: others.append(_holding_run(pipeline, "fleet/c", holder))
    )
    assert sorted(launched) == sorted(keys)
    assert last_indexed(pipeline.instance, "fleet/c") is None
    (other,) = others
    # While it holds it, nothing is asked for in vain.
    assert pipeline.run_tick(LIMITS) == []
    _end(pipeline, other, "fleet/c")  # failed or cancelled, it never indexes it
    rounds = _until_quiet(pipeline)
    assert rounds[0] == ["fleet/c"], rounds
    assert pipeline.es.documents(INDEX) == _expected(pipeline, repos)
    state = last_indexed(pipeline.instance, "fleet/c")
    assert state is not None and state.commit_sha == _head(repos["fleet/c"])


def test_a_push_while_the_daemon_was_away_longer_than_the_activity_window_is_seen(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Issue 25, defect 2: the sensor listed only projects active in the last 65 minutes."""
    repos = _fleet(pipeline, tmp_path, ("fleet/a",))
    now = time.time()
    away = SensorLimits(recheck_seconds=0)
    # The last tick before the daemon went away, two hours ago, indexed it.
    from gitlab_es_pipeline.core.sensor_cursor import SensorCursor
    from gitlab_es_pipeline.defs.sensors import evaluate_tick

    source = pipeline.resources()["gitlab"].source()
    tick = evaluate_tick(pipeline.instance, source, [], SensorCursor(), away, now - 7200)
    for key, _, _ in tick.requested:
        pipeline.index(key)
    # A push 70 minutes ago, while the daemon was away.
    commit_files(repos["fleet/a"], {"README.md": "# pushed while away\n"})
    seventy_minutes_ago = datetime.now(timezone.utc) - timedelta(minutes=70)
    project = pipeline.gitlab.project("fleet/a")
    project.last_activity_at = seventy_minutes_ago.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    tick = evaluate_tick(pipeline.instance, source, [], tick.cursor, away, now)
    assert [(k, c) for k, c, _ in tick.requested] == [("fleet/a", _head(repos["fleet/a"]))]


def test_a_run_that_cannot_see_its_repository_held_waits_for_it_es_index_alone_too(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Issue 25, defect 7: es_index materialized alone ignored the batch writing the same
    repository."""
    repos = _fleet(pipeline, tmp_path, ("fleet/a",))
    assert pipeline.index("fleet/a").success
    first = _head(repos["fleet/a"])
    commit_files(repos["fleet/a"], {"README.md": "# second\n"})
    from dagster import materialize

    from gitlab_es_pipeline.defs.assets import es_index, manifest_and_line_documents, repositories

    # Read the new commit without writing (file_manifest alone), as a person may.
    assert materialize(
        [manifest_and_line_documents, es_index, repositories],
        selection=[manifest_and_line_documents],
        partition_key="fleet/a",
        instance=pipeline.instance,
        resources=pipeline.resources(),
    ).success
    other = _holding_run(pipeline, "fleet/a", "batch")
    released: list[float] = []

    def release() -> None:
        time.sleep(3)
        released.append(time.time())
        _end(pipeline, other, "fleet/a")

    releaser = threading.Thread(target=release)
    releaser.start()
    result = materialize(
        [manifest_and_line_documents, es_index, repositories],
        selection=[es_index],
        partition_key="fleet/a",
        instance=pipeline.instance,
        resources=pipeline.resources(),
    )
    releaser.join()
    assert result.success
    only = AssetRecordsFilter(asset_key=ES_INDEX, asset_partitions=["fleet/a"])
    (record, *_) = pipeline.instance.fetch_materializations(only, limit=1).records
    assert record.timestamp > released[0]  # it wrote only once the holder let go
    messages = [e.user_message for e in pipeline.instance.all_logs(result.run_id)]
    assert any(f"run {other.run_id} is indexing this repository" in m for m in messages)
    history = {"fleet/a": [first, _head(repos["fleet/a"])]}
    assert pipeline.es.documents(INDEX) == _expected(pipeline, repos, history)


def test_no_number_of_batches_writes_a_repository_another_run_holds(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Issue 25, defect 4: claims were read from the 20 newest only; the 20th batch to skip
    a repository held by a range run wrote it at the same time."""
    _fleet(pipeline, tmp_path, ("fleet/a",))
    holder = _holding_run(pipeline, "fleet/a", "range")
    for _ in range(22):
        assert pipeline.index_batch(["fleet/a"]).success
    assert last_indexed(pipeline.instance, "fleet/a") is None
    assert pipeline.es.documents(INDEX) == {}
    store, _ = leases_of(pipeline.instance)
    assert store.holders([repository_name("fleet/a")])[repository_name("fleet/a")][0] == (
        holder.run_id
    )


def test_a_manifest_that_does_not_account_for_the_tree_fails_its_repository_in_a_batch(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Issue 25, defect 6: in batches and range runs this ended in AttributeError, the
    blocking check was never recorded, and a range's summary check could read passed."""
    repos = _fleet(pipeline, tmp_path, ("fleet/a", "fleet/b"))
    pipeline.gitlab.tree_entries_served = 2  # each tree has 4 entries: the listing ends early
    result = pipeline.index_range("fleet/a", "fleet/b")
    assert not result.success
    errors = "\n".join(str(e.message) for e in result.all_events if e.is_failure)
    assert "AttributeError" not in errors
    for key in repos:
        only = AssetRecordsFilter(asset_key=FILE_MANIFEST, asset_partitions=[key])
        (outcome,) = pipeline.instance.fetch_observations(only, limit=1).records
        metadata = outcome.asset_observation.metadata
        assert metadata[OUTCOME].value == "failed"
        assert "does not account for the tree" in str(metadata["reason"].value)
    checks = [
        e.dagster_event.event_specific_data
        for e in pipeline.instance.all_logs(result.run_id)
        if e.dagster_event is not None
        and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    per_partition = {c.partition: c.passed for c in checks if c.partition is not None}
    summary = [c.passed for c in checks if c.partition is None]
    assert per_partition == {"fleet/a": False, "fleet/b": False}
    assert summary == [False]
    assert pipeline.es.documents(INDEX) == {}


@pytest.mark.parametrize("project_instance", ["sqlite"], indirect=True)
def test_a_killed_batch_lets_go_within_a_lease_and_its_repositories_are_indexed_again(
    project_pipeline: Pipeline, tmp_path: Path
) -> None:
    """Issue 25, defect 9: a killed run held its repositories until max_runtime_seconds
    (3 hours): the default run launcher cannot see a dead run worker."""
    pipeline = project_pipeline
    keys = ("fleet/a", "fleet/b")
    repos = _fleet(pipeline, tmp_path, keys)
    tick_keys = pipeline.sensor_tick(LIMITS)
    assert sorted(k for k, _, _ in tick_keys) == sorted(keys)
    spec = spec_of(pipeline, "")
    import json

    batch = json.loads(spec)
    batch["batch"] = list(keys)
    child = subprocess.Popen(
        [sys.executable, "-m", "gitlab_es_pipeline_tests.run_partition", json.dumps(batch)]
    )

    def kill(kind: str, meta: dict, source: object) -> None:
        if kind == "index" and child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)

    pipeline.es.item_faults.append(kill)
    try:
        assert child.wait(timeout=180) == -signal.SIGKILL
    finally:
        pipeline.es.item_faults.remove(kill)
    killed_at = time.time()
    (record,) = pipeline.instance.get_run_records(RunsFilter(tags={BATCH_TAG: BATCH_TAG_VALUE}))
    assert record.dagster_run.status == DagsterRunStatus.STARTED  # nobody knows it died
    store, _ = leases_of(pipeline.instance)
    names = [repository_name(k) for k in keys]
    assert store.holders(names)  # it held one when it died
    # Within a lease, the repository is anyone's again, and the sensor marks the run failed
    # (one more lease: its last event must be older than that too).
    deadline = killed_at + 3 * lease_seconds()
    while (store.holders(names) or _run_status(pipeline, record) == DagsterRunStatus.STARTED) and (
        time.time() < deadline
    ):
        pipeline.run_tick(LIMITS)
        time.sleep(0.5)
    assert not store.holders(names)
    assert time.time() - killed_at <= 3 * lease_seconds()
    assert _run_status(pipeline, record) == DagsterRunStatus.FAILURE
    _until_quiet(pipeline, ticks=10)
    assert pipeline.es.documents(INDEX) == _expected(pipeline, repos)
    for key in keys:
        state = last_indexed(pipeline.instance, key)
        assert state is not None and state.commit_sha == _head(repos[key])


def _run_status(pipeline: Pipeline, record: RunRecord) -> DagsterRunStatus:
    run = pipeline.instance.get_run_by_id(record.dagster_run.run_id)
    assert run is not None
    return run.status
