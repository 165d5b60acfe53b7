"""A backfill of every partition, launched as the UI launches one, run by dagster-daemon.

The webserver receives the UI's own GraphQL mutation (`launchPartitionBackfill`, what
"Materialize all partitions" sends); the daemon forms the runs from the assets'
BackfillPolicy and launches them as in production. Expectations come from git
(`expected_after_runs`), the documents in the Elasticsearch stand-in, and Dagster's own
backfill record.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, RunsFilter
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.execution.backfill import BulkActionStatus

from gitlab_es_pipeline.defs.asset_keys import ES_INDEX, FILE_MANIFEST, LINE_DOCUMENTS
from gitlab_es_pipeline.defs.partitions import PARTITION_TAG, RANGE_END_TAG, RANGE_START_TAG
from gitlab_es_pipeline.runs.indexed import last_indexed
from gitlab_es_pipeline.runs.many import OUTCOME
from gitlab_es_pipeline_tests.corpus import expected_after_runs
from gitlab_es_pipeline_tests.pipeline import INDEX, Pipeline
from gitlab_es_pipeline_tests.processes import launch_backfill_of_all, serving_webserver
from gitlab_es_pipeline_tests.repos import commit_files, init_repo, run_git
from gitlab_es_pipeline_tests.test_daemon import Daemon, wait_until

pytestmark = pytest.mark.daemon

PER_RUN = 3
KEYS = [f"fleet/r{i}" for i in range(7)]
BROKEN = "fleet/r4"
SENSOR = "head_commit_sensor"


@pytest.mark.parametrize("project_instance", ["sqlite"], indirect=True)
def test_a_backfill_of_all_partitions_from_the_ui_runs_in_batches_of_partitions(
    project_pipeline: Pipeline, project_instance: DagsterInstance, tmp_path: Path
) -> None:
    pipeline = project_pipeline
    env = {
        **os.environ,  # DAGSTER_HOME of the project instance, on SQLite
        "GITLAB_URL": pipeline.gitlab.url,
        "GITLAB_TOKEN": pipeline.gitlab.token,
        "ELASTICSEARCH_URL": pipeline.es.url,
        "ELASTICSEARCH_API_KEY": pipeline.es.api_key or "",
        "PARQUET_STORAGE_URL": str(pipeline.storage),
        "BACKFILL_PARTITIONS_PER_RUN": str(PER_RUN),
        # The sensor ticks every few seconds: its batches of the never-indexed repositories
        # run beside the backfill's range runs, and each repository is indexed by one of them
        # at a time. Discovery only on New Year's Day.
        "HEAD_SENSOR_INTERVAL_SECONDS": "5",
        "HEAD_SENSOR_POLL_SECONDS": "5",  # every tick polls: the never-indexed are seen
        "DISCOVERY_CRON": "0 0 1 1 *",
        "DAGSTER_DISABLE_TELEMETRY": "yes",
    }
    log = tmp_path / "daemon.log"
    daemon = Daemon(env, log)
    daemon.start()
    try:
        wait_until(
            lambda: "Sensor head_commit_sensor skipped" in log.read_text(errors="replace"),
            180,
            "the sensor's first tick",
            log,
        )
        repos = {}
        for key in KEYS:
            repo = init_repo(tmp_path / key.replace("/", "_"))
            commit_files(repo, {"README.md": f"# {key}\n", "src/app.py": f"NAME = {key!r}\n"})
            pipeline.gitlab.add_project(key, str(repo))
            repos[key] = repo
        pipeline.discover()
        pipeline.gitlab.project(BROKEN).default_branch_name = "gone"  # 404 for its branch

        with serving_webserver(env, tmp_path / "webserver.log") as url:
            assets = [a.path[0] for a in (FILE_MANIFEST, LINE_DOCUMENTS, ES_INDEX)]
            backfill_id = launch_backfill_of_all(url, assets)

        def done() -> bool:
            backfill = project_instance.get_backfill(backfill_id)
            return backfill is not None and backfill.status != BulkActionStatus.REQUESTED

        wait_until(done, 420, "the backfill to finish", log)
    finally:
        daemon.stop()

    # Runs of up to PER_RUN partitions each, consecutive in partition order, with no partition
    # tag of their own.
    runs = project_instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))
    ranges = sorted((r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]) for r in runs)
    assert len(runs) == math.ceil(len(KEYS) / PER_RUN)
    assert ranges == [
        (KEYS[i], KEYS[min(i + PER_RUN, len(KEYS)) - 1]) for i in range(0, len(KEYS), PER_RUN)
    ]
    assert all(PARTITION_TAG not in r.tags for r in runs)
    # The sensor's runs went on beside them.
    sensor_runs = project_instance.get_runs(RunsFilter(tags={"dagster/sensor_name": SENSOR}))
    assert sensor_runs

    # Every repository but the broken one indexed exactly as git has it, with its own state,
    # by a range run or by a sensor's run.
    ids = {p.path_with_namespace: p.id for p in pipeline.gitlab.projects.values()}
    expected: dict[str, dict] = {}
    for key, repo in repos.items():
        head = run_git(repo, "rev-parse", "HEAD").strip()
        if key == BROKEN:
            assert last_indexed(project_instance, key) is None
            continue
        url_of = f"{pipeline.gitlab.url}/{key}"
        expected.update(expected_after_runs(repo, [head], ids[key], key, "main", url_of).documents)
        assert last_indexed(project_instance, key).commit_sha == head
    assert pipeline.es.documents(INDEX) == expected
    # Each repository was read in full once: never by two runs at once (both would have, the
    # mode being chosen from the indexed commit that the first records only when done).
    for key in set(KEYS) - {BROKEN}:
        only = AssetRecordsFilter(asset_key=FILE_MANIFEST, asset_partitions=[key])
        reads = project_instance.fetch_materializations(only, limit=10).records
        modes = sorted(
            (
                str(r.asset_materialization.metadata["mode"].value),
                int(str(r.asset_materialization.metadata["files_read"].value)),
            )
            for r in reads
        )
        assert [m for m in modes if m[1] > 0] in ([("full", 2)], [("full_refresh", 2)]), (
            key,
            modes,
        )

    # The backfill's own account, as its page shows it: the broken repository's partitions
    # failed, and so did any that a range run left to a sensor's run holding it; every other
    # one materialized.
    backfill = project_instance.get_backfill(backfill_id)
    assert backfill.status == BulkActionStatus.COMPLETED_FAILED
    data = backfill.asset_backfill_data
    left = _left_by(project_instance, [r.run_id for r in runs])
    for asset in (FILE_MANIFEST, LINE_DOCUMENTS, ES_INDEX):
        materialized = _partitions(data.materialized_subset, asset)
        failed = _partitions(data.failed_and_downstream_subset, asset)
        assert (asset, materialized, failed) == (
            asset,
            set(KEYS) - {BROKEN} - left,
            {BROKEN} | left,
        )


def _left_by(instance: DagsterInstance, run_ids: list[str]) -> set[str]:
    """The repositories these runs left to another run that held them."""
    left = set()
    for key in KEYS:
        only = AssetRecordsFilter(asset_key=FILE_MANIFEST, asset_partitions=[key])
        for record in instance.fetch_observations(only, limit=20).records:
            metadata = record.asset_observation.metadata
            if (
                record.run_id in run_ids
                and metadata.get(OUTCOME)
                and metadata[OUTCOME].value == "left"
            ):
                left.add(key)
    return left


def _partitions(subset: AssetGraphSubset, asset: AssetKey) -> set[str]:
    return {str(p.partition_key) for p in subset.iterate_asset_partitions() if p.asset_key == asset}
