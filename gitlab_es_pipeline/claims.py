"""One run per repository at a time, across runs of one repository and runs of many.

Dagster's run queue keeps two runs of one partition apart (the `dagster/partition` tag limit
in dagster.yaml), but a batch run and a backfill's partition-range run index many
repositories and carry no partition tag. The rule that covers all three lives in Dagster's
own event log:

- A run's claim on a repository is an ASSET_MATERIALIZATION_PLANNED event of the partition's
  `file_manifest` or `es_index`. Dagster writes them when it creates a run of one partition
  or of a range (one per partition); a batch writes them itself just before it starts on a
  repository.
- A claim holds while its run is not finished and has not yet recorded, after the claim, an
  `es_index` materialization of the partition or (a batch) an observation of its
  `file_manifest` saying why it did not index it.
- A batch writes its claim, then reads the others: if any other claim holds, it leaves the
  repository alone (a run of its own, or another batch, has it). Two batches that claim at
  once may both leave it (it is asked for again), but never both go on: each reads after
  its own claim is stored, so at least one of them sees the other's. A range run does the
  same when it comes to a repository, its claim stored since the run was made.
- A run of one partition does not step back (the queue already chose it); before it reads,
  it waits while a started batch or range run holds it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.events import AssetMaterializationPlannedData, DagsterEvent

from gitlab_es_pipeline.indexing import Step
from gitlab_es_pipeline.partitions import is_range_run
from gitlab_es_pipeline.retries import step_failure
from gitlab_es_pipeline.state import ES_INDEX, FILE_MANIFEST, planned_materializations

# The tag of a batch run, always with this value.
BATCH_TAG = "gitlab_es_pipeline/batch"
BATCH_TAG_VALUE = "true"

# Runs that may still write: queued ones too, since their steps have not started yet.
_UNFINISHED = [
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]
_WRITING = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
_RECENT_CLAIMS = 20
_CLAIMED = (FILE_MANIFEST, ES_INDEX)  # a run of es_index alone plans only es_index


def of_many_repositories(tags: Mapping[str, str]) -> bool:
    """A batch, or a backfill's partition-range run: the runs the run queue cannot keep apart
    from the runs of one partition."""
    return tags.get(BATCH_TAG) == BATCH_TAG_VALUE or is_range_run(tags)


def record_claim(
    instance: DagsterInstance,
    run_id: str,
    job_name: str,
    step_key: str,
    key: str,
    asset_keys: Iterable[AssetKey],
) -> None:
    """The batch's intent to materialize the repository's assets, as Dagster records it for a
    run of one partition (the UI shows the partition in progress). Dagster has no public call
    for this event; its constructor is the one Dagster's own run creation uses."""
    for asset_key in asset_keys:
        instance.report_dagster_event(
            DagsterEvent.build_asset_materialization_planned_event(
                job_name, step_key, AssetMaterializationPlannedData(asset_key, partition=key)
            ),
            run_id,
        )


def holders(
    instance: DagsterInstance,
    key: str,
    run_id: str,
    statuses: list[DagsterRunStatus],
    many_only: bool = False,
) -> list[str]:
    """Other runs, in one of these statuses (batches and range runs only, if asked), whose
    claim on the repository holds."""
    first_claim: dict[str, int] = {}
    for asset_key in _CLAIMED:
        only = AssetRecordsFilter(asset_key=asset_key, asset_partitions=[key])
        for record in planned_materializations(instance, only, limit=_RECENT_CLAIMS):
            other = record.event_log_entry.run_id
            if other != run_id:
                first_claim[other] = min(
                    first_claim.get(other, record.storage_id), record.storage_id
                )
    if not first_claim:
        return []
    unfinished = {
        r.dagster_run.run_id
        for r in instance.get_run_records(RunsFilter(run_ids=list(first_claim), statuses=statuses))
        if not many_only or of_many_repositories(r.dagster_run.tags)
    }
    if not unfinished:
        return []
    since = min(first_claim[r] for r in unfinished)
    after = AssetRecordsFilter(
        asset_key=ES_INDEX, asset_partitions=[key], after_storage_id=since - 1
    )
    outcome = AssetRecordsFilter(
        asset_key=FILE_MANIFEST, asset_partitions=[key], after_storage_id=since - 1
    )
    settled = {
        record.event_log_entry.run_id
        for record in [
            *instance.fetch_materializations(after, limit=_RECENT_CLAIMS).records,
            *instance.fetch_observations(outcome, limit=_RECENT_CLAIMS).records,
        ]
        if record.storage_id > first_claim.get(record.event_log_entry.run_id, 0)
    }
    return sorted(unfinished - settled)


def claim(
    step: Step, job_name: str, step_key: str, key: str, asset_keys: Iterable[AssetKey]
) -> list[str]:
    """Claim the repository for a batch: the runs that hold it already (empty: go on)."""
    record_claim(step.instance, step.run_id, job_name, step_key, key, asset_keys)
    return held_by_others(step, key)


def held_by_others(step: Step, key: str) -> list[str]:
    """The other unfinished runs whose claim on the repository holds (empty: go on)."""
    return holders(step.instance, key, step.run_id, _UNFINISHED)


def wait_for_other_runs(
    step: Step, key: str, timeout_seconds: float = 900, poll_seconds: float = 2
) -> None:
    """Before a run of one repository reads it: wait while a started batch or range run
    holds it.

    Not for other runs of one repository: the run queue keeps them apart, and two of them
    started at once outside the queue (`materialize` in a script) would only wait for each
    other.
    """
    deadline = time.monotonic() + timeout_seconds
    told = False
    while True:
        others = holders(step.instance, key, step.run_id, _WRITING, many_only=True)
        if not others:
            return
        if time.monotonic() >= deadline:
            raise step_failure(
                f"{key}: run {others[0]} is still indexing this repository after "
                f"{timeout_seconds:.0f} s; trying again later",
                permanent=False,
            )
        if not told:
            step.log.info(f"{key}: run {others[0]} is indexing this repository; waiting for it")
            told = True
        time.sleep(poll_seconds)
