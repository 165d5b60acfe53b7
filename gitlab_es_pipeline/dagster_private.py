"""Dagster's private API, each use in one place (instance/storage.py keeps its own, in one section).

Each has a test in test_dagster_private.py that fails when Dagster changes what it relies on.

- A batch's planned materializations: Dagster writes an ASSET_MATERIALIZATION_PLANNED event
  per asset when it creates a run of one partition; the UI then shows the partition in
  progress, and failed when the run fails without materializing it. A batch's partitions are
  not known to Dagster when the run is made, so the batch records the event itself as it
  takes each repository, with the constructor Dagster's own run creation uses. These events
  are for the UI only: exclusivity is the lease's (runs/claims.py).
- The tags with which Dagster stores an output's user-provided data version: a batch records
  each repository's materialization itself, with the commit as its data version, as
  `Output(data_version=...)` would.
- `escape_dotdot_segments`: how UPathIOManager makes a partition key safe as a path.
"""

from collections.abc import Iterable

from dagster import AssetKey, DagsterInstance
from dagster._core.definitions.data_version import (
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    DATA_VERSION_TAG,
)
from dagster._core.events import AssetMaterializationPlannedData, DagsterEvent
from dagster._core.storage.upath_io_manager import escape_dotdot_segments

__all__ = ["escape_dotdot_segments", "record_planned", "versioned"]


def record_planned(
    instance: DagsterInstance,
    run_id: str,
    job_name: str,
    step_key: str,
    key: str,
    asset_keys: Iterable[AssetKey],
) -> None:
    for asset_key in asset_keys:
        instance.report_dagster_event(
            DagsterEvent.build_asset_materialization_planned_event(
                job_name, step_key, AssetMaterializationPlannedData(asset_key, partition=key)
            ),
            run_id,
        )


def versioned(commit: str) -> dict[str, str]:
    """The tags with which Dagster stores an output's user-provided data version."""
    return {DATA_VERSION_TAG: commit, DATA_VERSION_IS_USER_PROVIDED_TAG: "true"}
