"""The private Dagster API of dagster_private.py still does what the pipeline relies on.

Each test compares with what Dagster itself does through its public API, so that a change of
Dagster's behaviour (not only of a name) fails here first.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from dagster import (
    AssetKey,
    AssetPartitionStatus,
    AssetRecordsFilter,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DataVersion,
    DynamicPartitionsDefinition,
    Output,
    asset,
    materialize,
)
from dagster._core.storage.fs_io_manager import PickledObjectFilesystemIOManager
from upath import UPath

from gitlab_es_pipeline.dagster_private import record_planned, versioned
from gitlab_es_pipeline.defs.io_managers import ParquetIOManager

PARTS = DynamicPartitionsDefinition(name="parts")


@asset(partitions_def=PARTS)
def thing() -> Iterator[Output[int]]:
    yield Output(1, data_version=DataVersion("c0ffee"))


def test_a_batch_records_a_data_version_with_the_tags_output_uses(
    instance: DagsterInstance,
) -> None:
    instance.add_dynamic_partitions("parts", ["p"])
    assert materialize([thing], partition_key="p", instance=instance).success
    only = AssetRecordsFilter(asset_key=AssetKey("thing"), asset_partitions=["p"])
    (record,) = instance.fetch_materializations(only, limit=1).records
    materialization = record.asset_materialization
    assert materialization is not None
    recorded = {k: v for k, v in materialization.tags.items() if k in versioned("c0ffee")}
    assert recorded == versioned("c0ffee")


def test_a_planned_materialization_of_a_run_that_failed_shows_its_partition_failed(
    instance: DagsterInstance,
) -> None:
    instance.add_dynamic_partitions("parts", ["p", "q"])
    run = instance.add_run(
        DagsterRun(
            job_name="index_repositories",
            run_id=str(uuid.uuid4()),
            status=DagsterRunStatus.STARTED,
        )
    )
    record_planned(instance, run.run_id, run.job_name, "index_batch", "p", [AssetKey("thing")])
    instance.report_run_failed(run, "failed")
    statuses = instance.get_status_by_partition(AssetKey("thing"), ["p", "q"], PARTS)
    assert statuses is not None
    assert statuses.get("p") == AssetPartitionStatus.FAILED and statuses.get("q") is None


def test_partition_paths_are_made_safe_as_dagsters_filesystem_io_manager_makes_them(
    tmp_path: Path,
) -> None:
    """Dagster's own filesystem IO manager escapes `..` segments with the same function."""
    ours = ParquetIOManager(base_path=str(tmp_path)).create_io_manager(None)
    dagsters = PickledObjectFilesystemIOManager(base_dir=str(tmp_path))
    base = UPath(tmp_path)
    for key in ("group/project", "a/../b", "../up", "x/./y", "g/..", "n/.../m"):
        path = ours.make_safe_partition_path(base, key)
        assert path == dagsters.make_safe_partition_path(base, key)
        assert os.path.commonpath([os.path.normpath(str(path)), str(tmp_path)]) == str(tmp_path)
