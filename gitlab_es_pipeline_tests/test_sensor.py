"""The HEAD-commit sensor: cost independent of the fleet size, caps, the real sensor object."""

import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from dagster import AssetMaterialization, DagsterInstance, build_sensor_context

from gitlab_es_pipeline.core.sensor_cursor import SensorCursor
from gitlab_es_pipeline.definitions import defs
from gitlab_es_pipeline.defs.asset_keys import ES_INDEX
from gitlab_es_pipeline.defs.partitions import REPOSITORIES_PARTITION
from gitlab_es_pipeline.defs.sensors import (
    SensorLimits,
    batch_request,
    evaluate_tick,
    head_commit_sensor,
)
from gitlab_es_pipeline.runs.claims import BATCH_TAG, BATCH_TAG_VALUE
from gitlab_es_pipeline.runs.indexed import last_indexed
from gitlab_es_pipeline_tests.pipeline import Pipeline
from gitlab_es_pipeline_tests.repos import commit_files, init_repo, run_git

FLEET = 10_000
CHANGED = 10
TWO_DAYS_AGO = (datetime.now(timezone.utc) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _fleet(pipeline: Pipeline, tmp_path: Path) -> list[tuple[str, Path, str]]:
    """FLEET idle indexed repositories; CHANGED of them then get a new commit."""
    idle = init_repo(tmp_path / "idle")
    idle_head = commit_files(idle, {"x.txt": "x\n"})
    changed = []
    for i in range(CHANGED):
        repo = init_repo(tmp_path / f"busy{i}")
        old = commit_files(repo, {"x.txt": "x\n"})
        changed.append((f"fleet/busy{i:02d}", repo, old))
    keys = []
    busy = {key: (repo, old) for key, repo, old in changed}
    for i in range(FLEET - CHANGED):
        key = f"fleet/p{i:05d}"
        pipeline.gitlab.add_project(key, str(idle), last_activity_at=TWO_DAYS_AGO)
        keys.append((key, idle_head))
    for key, (repo, old) in busy.items():
        pipeline.gitlab.add_project(key, str(repo), last_activity_at=TWO_DAYS_AGO)
        keys.append((key, old))
    instance = pipeline.instance
    instance.add_dynamic_partitions(REPOSITORIES_PARTITION, [k for k, _ in keys])
    for key, commit in keys:
        instance.report_runless_asset_event(
            AssetMaterialization(ES_INDEX, partition=key, metadata={"commit_sha": commit})
        )
    news = []
    for key, repo, _old in changed:
        commit_files(repo, {"x.txt": "changed\n"})
        project = pipeline.gitlab.project(key)
        project.record_push()
        news.append((key, repo, run_git(repo, "rev-parse", "HEAD").strip()))
    return news


def test_a_tick_over_10000_repositories_costs_what_changed(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    # Dagster's in-memory storage (its SQL event log on an in-memory SQLite): recording 10,000
    # materializations on disk costs 100-200 s of set-up for one tick. The tick's cost on the
    # project's own storage is measured by bench/fleet_push.py (docs/benchmark.md).
    pipeline = replace(pipeline, instance=DagsterInstance.ephemeral())
    changed = _fleet(pipeline, tmp_path)
    pipeline.gitlab.requests.clear()
    started = time.monotonic()
    runs = pipeline.sensor_tick(SensorLimits())
    seconds = time.monotonic() - started
    print(
        f"\nsensor tick over {FLEET} partitions: {seconds:.2f} s, "
        f"{len(pipeline.gitlab.requests)} GitLab requests"
    )
    assert sorted((k, c) for k, c, _ in runs) == sorted((k, c) for k, _, c in changed)
    assert all(run_key == f"{k}@{c}" for k, c, run_key in runs)
    kinds = [r for r in pipeline.gitlab.requests]
    assert len(pipeline.gitlab.requests_of_kind("branch")) == CHANGED
    assert len(pipeline.gitlab.requests_of_kind("projects_list")) == 1
    assert len(kinds) == CHANGED + 1
    assert seconds < 60  # Dagster's default sensor time limit

    # The next tick: nothing new, and (within recheck_seconds) not even a HEAD lookup.
    pipeline.gitlab.requests.clear()
    assert pipeline.sensor_tick(SensorLimits()) == []
    assert len(pipeline.gitlab.requests) == 1


def _seven_new_repositories(pipeline: Pipeline, tmp_path: Path) -> None:
    """g/r0 .. g/r6, discovered, never indexed; g/r6 the most recently active."""
    for i in range(7):
        repo = init_repo(tmp_path / f"r{i}")
        commit_files(repo, {"a.txt": f"{i}\n"})
        pipeline.gitlab.add_project(f"g/r{i}", str(repo))
    pipeline.discover()


def test_run_requests_over_the_cap_are_carried_to_the_next_tick(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    _seven_new_repositories(pipeline, tmp_path)
    limits = SensorLimits(max_runs_per_tick=3, batch_size=1)  # each in a run of its own
    first = [k for k, _, _ in pipeline.sensor_tick(limits)]
    second = [k for k, _, _ in pipeline.sensor_tick(limits)]
    third = [k for k, _, _ in pipeline.sensor_tick(limits)]
    assert len(first) == 3 and len(second) == 3 and len(third) == 1
    assert sorted(first + second + third) == [f"g/r{i}" for i in range(7)]
    # Never-indexed partitions already requested are not looked up again.
    pipeline.gitlab.requests.clear()
    assert pipeline.sensor_tick(limits) == []
    assert pipeline.gitlab.requests_of_kind("commits") == []


def test_a_batch_counts_as_one_run_against_the_cap(pipeline: Pipeline, tmp_path: Path) -> None:
    _seven_new_repositories(pipeline, tmp_path)
    limits = SensorLimits(max_runs_per_tick=2, batch_size=3, recheck_seconds=0)
    source = pipeline.resources()["gitlab"].source()
    cursor = SensorCursor()
    shapes = []
    for _ in range(3):
        tick = evaluate_tick(pipeline.instance, source, [], cursor, limits, time.time())
        cursor = tick.cursor
        shapes.append(([k for k, _, _ in tick.runs], [[k for k, _, _ in b] for b in tick.batches]))
    assert shapes == [  # the most recently active first
        ([], [["g/r6", "g/r5", "g/r4"], ["g/r3", "g/r2", "g/r1"]]),
        (["g/r0"], []),  # the one carried over: a batch of one is a run of its own
        ([], []),
    ]


def test_a_retry_carried_over_to_the_next_tick_still_runs_alone(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    heads = {}
    for name in ("big", "retry", "s1", "s2"):
        repo = init_repo(tmp_path / name)
        files = {"a.txt": f"{name}\n", **({"b.txt": "b\n"} if name == "big" else {})}
        heads[f"g/{name}"] = commit_files(repo, files)
        pipeline.gitlab.add_project(f"g/{name}", str(repo), last_activity_at=TWO_DAYS_AGO)
    pipeline.discover()
    # g/big (two files: large here) waits from an earlier tick; g/retry's run failed and its
    # retry is due.
    cursor = SensorCursor(
        pending=[("g/big", heads["g/big"], 2)],
        retries={"g/retry": (heads["g/retry"], 1, 0.0, 0.0)},
    )
    limits = SensorLimits(max_runs_per_tick=1, recheck_seconds=0, batch_max_files=1)
    source = pipeline.resources()["gitlab"].source()
    shapes = []
    for _ in range(3):
        tick = evaluate_tick(pipeline.instance, source, [], cursor, limits, time.time())
        cursor = tick.cursor
        shapes.append(([k for k, _, _ in tick.runs], [[k for k, _, _ in b] for b in tick.batches]))
    assert shapes == [
        (["g/big"], []),  # the retry and the two new ones are carried over
        (["g/retry"], []),  # still alone, not in the small ones' batch
        ([], [["g/s1", "g/s2"]]),
    ]


def test_the_sensor_definition_requests_runs_of_the_index_job(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    repo = init_repo(tmp_path / "one")
    head = commit_files(repo, {"a.txt": "a\n"})
    pipeline.gitlab.add_project("g/one", str(repo))
    pipeline.discover()
    context = build_sensor_context(
        instance=pipeline.instance,
        definitions=defs,
        resources={"gitlab": pipeline.resources()["gitlab"]},
    )
    result = head_commit_sensor(context)
    # One small repository: a batch of one is a run of its own.
    assert [(r.job_name, r.partition_key, r.run_key) for r in result.run_requests] == [
        ("index_repository", "g/one", f"g/one@{head}")
    ]
    assert result.cursor and "g/one" in result.cursor


def test_the_sensor_definition_batches_small_repositories(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    heads = {}
    for name in ("one", "two", "three"):
        repo = init_repo(tmp_path / name)
        heads[f"g/{name}"] = commit_files(repo, {"a.txt": f"{name}\n"})
        pipeline.gitlab.add_project(f"g/{name}", str(repo))
    big = init_repo(tmp_path / "big")
    heads["g/big"] = commit_files(big, {f"f{i}.txt": f"{i}\n" for i in range(12)})
    pipeline.gitlab.add_project("g/big", str(big))
    pipeline.discover()
    context = build_sensor_context(
        instance=pipeline.instance,
        definitions=defs,
        resources={"gitlab": pipeline.resources()["gitlab"]},
    )
    monkeypatch.setenv("INDEX_BATCH_MAX_FILES", "10")  # g/big's 12 files make it large
    result = head_commit_sensor(context)
    by_job = {str(r.job_name): r for r in result.run_requests}
    assert sorted(by_job) == ["index_repositories", "index_repository"]
    assert by_job["index_repository"].partition_key == "g/big"
    batch = by_job["index_repositories"]
    assert batch.partition_key is None
    assert batch.tags[BATCH_TAG] == BATCH_TAG_VALUE
    members = batch.run_config["ops"]["index_batch"]["config"]["repositories"]
    assert members == {k: c for k, c in heads.items() if k != "g/big"}
    # Asked again (the same tick evaluated twice), the same batch has the same run key.
    again = batch_request([(k, c, f"{k}@{c}") for k, c in reversed(list(members.items()))])
    assert again.run_key == batch.run_key


def test_the_size_of_a_repository_indexed_before_the_metadata_rename_still_reads() -> None:
    """es_index recorded `files` before it was named `files_indexed`: the sensor's batching
    still knows those repositories' sizes."""
    instance = DagsterInstance.ephemeral()
    for key, metadata in (("g/old", {"files": 7}), ("g/new", {"files_indexed": 9})):
        instance.report_runless_asset_event(
            AssetMaterialization(ES_INDEX, partition=key, metadata={"commit_sha": "c", **metadata})
        )
    assert [last_indexed(instance, k).files for k in ("g/old", "g/new")] == [7, 9]
