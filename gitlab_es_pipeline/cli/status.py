"""Where each repository stands: indexed commit, HEAD now, documents against lines, failures.

Read from Dagster's storage (the only state store) and, when asked, from GitLab (HEAD) and
Elasticsearch (document counts). The services are passed in as functions: the caller decides
whether to ask one at all (`--no-heads`) and what an unanswered request means.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

from dagster import (
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunsFilter,
)

from gitlab_es_pipeline.core.timestamps import iso_utc
from gitlab_es_pipeline.defs.asset_keys import FILE_MANIFEST
from gitlab_es_pipeline.defs.jobs import IN_PROGRESS, batch_members
from gitlab_es_pipeline.defs.partitions import (
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    REPOSITORIES_PARTITION,
    is_range_run,
)
from gitlab_es_pipeline.runs.claims import BATCH_TAG, BATCH_TAG_VALUE
from gitlab_es_pipeline.runs.indexed import last_indexed
from gitlab_es_pipeline.runs.many import OUTCOME


@dataclass(frozen=True)
class LastFailure:
    """A repository's latest failed attempt, as `status` shows it."""

    run_id: str
    at: str  # ISO 8601, UTC, to the second
    message: str
    timestamp: float  # the same, exactly: to compare with the indexed commit's time
    # Indexed since: history, not the repository's state.
    mended: bool = False


@dataclass(frozen=True)
class ActiveRun:
    """A run that has the repository in hand now: queued, indexing, or waiting for Dagster to
    retry its step (when, and why)."""

    run_id: str
    status: str  # queued | indexing | waiting to retry
    retry_at: str | None = None  # ISO 8601, UTC
    reason: str | None = None  # the failure the retry follows


@dataclass(frozen=True)
class RepositoryStatus:
    repository: str
    # indexing | waiting to retry | failing | never indexed | count mismatch | behind | indexed
    # | up to date
    state: str
    indexed_commit: str | None
    indexed_at: str | None
    head: str | None
    behind: bool | None
    documents: int | None
    lines: int | None
    last_failure: LastFailure | None
    active_run: ActiveRun | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def selected_repositories(instance: DagsterInstance, patterns: Iterable[str]) -> list[str]:
    """The partitions (repositories) matching any of the patterns; all when none is given."""
    keys = sorted(instance.get_dynamic_partitions(REPOSITORIES_PARTITION))
    wanted = list(patterns)
    if not wanted:
        return keys
    return [key for key in keys if any(fnmatch.fnmatchcase(key, p) for p in wanted)]


def last_failure(instance: DagsterInstance, repository: str) -> LastFailure | None:
    """The newest failure of the repository: a failed run of its own (with the first line of
    its step's error), or a batch's `batch_outcome: failed` for it."""
    failures = [
        f for f in (_run_failure(instance, repository), _batch_failure(instance, repository)) if f
    ]
    return max(failures, key=lambda f: f.timestamp) if failures else None


def _batch_failure(instance: DagsterInstance, repository: str) -> LastFailure | None:
    only = AssetRecordsFilter(asset_key=FILE_MANIFEST, asset_partitions=[repository])
    for record in instance.fetch_observations(only, limit=10).records:
        metadata = record.asset_observation.metadata if record.asset_observation else {}
        outcome = metadata.get(OUTCOME)
        if outcome is not None and outcome.value == "failed":
            reason = metadata.get("reason")
            message = str(reason.value).strip().splitlines()[0] if reason else "the batch failed"
            return LastFailure(record.run_id, iso_utc(record.timestamp), message, record.timestamp)
    return None


def _run_failure(instance: DagsterInstance, repository: str) -> LastFailure | None:
    records = instance.get_run_records(
        RunsFilter(statuses=[DagsterRunStatus.FAILURE], tags={PARTITION_TAG: repository}),
        limit=1,
    )
    if not records:
        return None
    record = records[0]
    message = "the run failed"
    for event in instance.all_logs(
        record.dagster_run.run_id, of_type=DagsterEventType.STEP_FAILURE
    ):
        data = event.dagster_event.step_failure_data if event.dagster_event else None
        if data is not None and data.error is not None:
            message = _failure_said(data.error) or message
    ended = record.end_time or record.update_timestamp.timestamp()
    return LastFailure(record.dagster_run.run_id, iso_utc(ended), message, ended)


_STEP_EVENTS = {
    DagsterEventType.STEP_START,
    DagsterEventType.STEP_RESTARTED,
    DagsterEventType.STEP_UP_FOR_RETRY,
    DagsterEventType.STEP_SUCCESS,
    DagsterEventType.STEP_FAILURE,
}


def active_runs(instance: DagsterInstance) -> dict[str, ActiveRun]:
    """Every repository that a run in progress has in hand, read once for the fleet: a run of
    its own (its partition tag), a batch (its config) or a backfill's range (its two tags)."""
    keys: list[str] | None = None
    active: dict[str, ActiveRun] = {}
    records = instance.get_run_records(RunsFilter(statuses=IN_PROGRESS))
    # A run at work before one that waits in the queue; the newest first within each.
    queued = (DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED)
    for record in sorted(records, key=lambda r: r.dagster_run.status in queued):
        run = record.dagster_run
        if is_range_run(run.tags) and keys is None:
            keys = list(instance.get_dynamic_partitions(REPOSITORIES_PARTITION))
        members = [r for r in _in_hand(run, keys or []) if r not in active]
        if members:
            seen = _active(instance, run)  # its step events read once, for all its members
            active.update(dict.fromkeys(members, seen))
    return active


def _in_hand(run: DagsterRun, keys: list[str]) -> list[str]:
    if PARTITION_TAG in run.tags:
        return [run.tags[PARTITION_TAG]]
    if run.tags.get(BATCH_TAG) == BATCH_TAG_VALUE:
        return list(batch_members(run))
    if is_range_run(run.tags):
        first, last = run.tags[RANGE_START_TAG], run.tags[RANGE_END_TAG]
        if first in keys and last in keys:
            return keys[keys.index(first) : keys.index(last) + 1]
    return []


def _active(instance: DagsterInstance, run: DagsterRun) -> ActiveRun:
    if run.status in (DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED):
        return ActiveRun(run.run_id, "queued")
    steps = [e for e in instance.all_logs(run.run_id, of_type=_STEP_EVENTS) if e.dagster_event]
    last = steps[-1] if steps else None
    if last is not None and last.dagster_event is not None:
        event = last.dagster_event
        if event.event_type == DagsterEventType.STEP_UP_FOR_RETRY:
            data = event.step_retry_data
            wait = (data.seconds_to_wait or 0) if data else 0
            reason = _failure_said(data.error) if data else None
            return ActiveRun(run.run_id, "waiting to retry", iso_utc(last.timestamp + wait), reason)
    return ActiveRun(run.run_id, "indexing")


def _failure_said(error: Any) -> str | None:
    """The first line of what failed the step: Dagster's own wrappers (a retry's
    RetryRequestedFromPolicy, "Exceeded max_retries" once they are spent) give way to their
    cause, the step's own failure."""
    while (
        error is not None
        and (
            error.cls_name == "RetryRequestedFromPolicy"
            or error.message.startswith("Exceeded max_retries")
        )
        and (error.cause or error.context)
    ):
        error = error.cause or error.context
    if error is None or not error.message:
        return None
    first: str = error.message.strip().splitlines()[0]
    if error.cls_name == "Failure":  # "dagster._core....Failure: <description>": the description
        return first.partition(": ")[2] or first
    return first  # another exception: its class says what happened


def repository_status(
    instance: DagsterInstance,
    repository: str,
    head_of: Callable[[str], str | None] | None,
    documents_of: Callable[[str, int | None], int | None] | None,
    active: ActiveRun | None = None,
) -> RepositoryStatus:
    """head_of / documents_of: None when that service is not asked (or not reachable).
    active: the run in progress that has the repository, if any (`active_runs`)."""
    indexed = last_indexed(instance, repository)
    failure = last_failure(instance, repository)
    head = head_of(repository) if head_of else None
    documents = (
        documents_of(repository, indexed.project_id if indexed else None) if documents_of else None
    )
    behind = None if head is None or indexed is None else head != indexed.commit_sha
    failing = failure is not None and (indexed is None or failure.timestamp > indexed.timestamp)
    if failure is not None and not failing:
        failure = replace(failure, mended=True)
    lines = indexed.lines if indexed else None
    if active is not None:
        state = active.status
    elif failing:
        state = "failing"
    elif indexed is None:
        state = "never indexed"
    elif documents is not None and lines is not None and documents != lines:
        state = "count mismatch"
    elif behind:
        state = "behind"
    elif behind is None:
        state = "indexed"  # HEAD not looked at
    else:
        state = "up to date"
    return RepositoryStatus(
        repository=repository,
        state=state,
        indexed_commit=indexed.commit_sha if indexed else None,
        indexed_at=iso_utc(indexed.timestamp) if indexed else None,
        head=head,
        behind=behind,
        documents=documents,
        lines=lines,
        last_failure=failure,
        active_run=active,
    )
