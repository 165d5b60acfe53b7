"""Where each repository stands: indexed commit, HEAD now, documents against lines, failures.

Read from Dagster's storage (the only state store) and, when asked, from GitLab (HEAD) and
Elasticsearch (document counts). The services are passed in as functions: the caller decides
whether to ask one at all (`--no-heads`) and what an unanswered request means.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from dagster import (
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
)

from gitlab_es_pipeline.core.timestamps import iso_utc
from gitlab_es_pipeline.defs.asset_keys import FILE_MANIFEST
from gitlab_es_pipeline.defs.partitions import PARTITION_TAG, REPOSITORIES_PARTITION
from gitlab_es_pipeline.runs.indexed import last_indexed
from gitlab_es_pipeline.runs.many import OUTCOME


@dataclass(frozen=True)
class LastFailure:
    """A repository's latest failed attempt, as `status` shows it."""

    run_id: str
    at: str  # ISO 8601, UTC, to the second
    message: str
    timestamp: float  # the same, exactly: to compare with the indexed commit's time


@dataclass(frozen=True)
class RepositoryStatus:
    repository: str
    state: str  # up to date | behind | indexed | never indexed | failing | count mismatch
    indexed_commit: str | None
    indexed_at: str | None
    head: str | None
    behind: bool | None
    documents: int | None
    lines: int | None
    last_failure: LastFailure | None

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
            message = data.error.message.strip().splitlines()[0]
    ended = record.end_time or record.update_timestamp.timestamp()
    return LastFailure(record.dagster_run.run_id, iso_utc(ended), message, ended)


def repository_status(
    instance: DagsterInstance,
    repository: str,
    head_of: Callable[[str], str | None] | None,
    documents_of: Callable[[str, int | None], int] | None,
) -> RepositoryStatus:
    """head_of / documents_of: None when that service is not asked (or not reachable)."""
    indexed = last_indexed(instance, repository)
    failure = last_failure(instance, repository)
    head = head_of(repository) if head_of else None
    documents = (
        documents_of(repository, indexed.project_id if indexed else None) if documents_of else None
    )
    behind = None if head is None or indexed is None else head != indexed.commit_sha
    failing = failure is not None and (indexed is None or failure.timestamp > indexed.timestamp)
    lines = indexed.lines if indexed else None
    if failing:
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
    )
