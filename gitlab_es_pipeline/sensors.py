"""The HEAD-commit sensor: runs only the repositories whose default branch moved."""

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from gitlab_es_pipeline.clients.gitlab import GitLabError, GitLabSource
from gitlab_es_pipeline.core.head_tracking import TrackerCursor, dedupe
from gitlab_es_pipeline.jobs import index_repository_job
from gitlab_es_pipeline.partitions import PARTITION_TAG, REPOSITORIES_PARTITION
from gitlab_es_pipeline.pools import ensure_pools
from gitlab_es_pipeline.resources import GitLabResource
from gitlab_es_pipeline.state import fleet_state, last_indexed

COMMIT_TAG = "gitlab_es_pipeline/commit"


@dataclass(frozen=True)
class SensorLimits:
    max_runs_per_tick: int = 50
    max_head_lookups_per_tick: int = 200
    recheck_seconds: float = 300
    # GitLab's hourly throttle of last_activity_at, plus a margin.
    activity_window_seconds: float = 3900
    # A repository whose run failed is asked for again after this, doubling up to the cap.
    retry_seconds: float = 300
    retry_cap_seconds: float = 6 * 3600

    @classmethod
    def from_env(cls) -> "SensorLimits":
        return cls(
            max_runs_per_tick=int(os.environ.get("HEAD_SENSOR_MAX_RUNS_PER_TICK", 50)),
            max_head_lookups_per_tick=int(os.environ.get("HEAD_SENSOR_MAX_HEAD_LOOKUPS", 200)),
            recheck_seconds=float(os.environ.get("HEAD_SENSOR_RECHECK_SECONDS", 300)),
            retry_seconds=float(os.environ.get("HEAD_SENSOR_RETRY_SECONDS", 300)),
        )


@dataclass
class Tick:
    runs: list[tuple[str, str, str]]  # partition, commit, run key
    cursor: TrackerCursor
    head_lookups: int
    errors: list[str]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def evaluate_tick(
    instance: DagsterInstance,
    source: GitLabSource,
    groups: list[str],
    cursor: TrackerCursor,
    limits: SensorLimits,
    now: float,
) -> Tick:
    """One tick: a listing of recently active projects, then HEAD only where it may have moved.

    Cost: the listing pages (active projects only) plus at most max_head_lookups_per_tick
    requests; Dagster storage: two queries plus one per project looked up.
    """
    partitions = set(instance.get_dynamic_partitions(REPOSITORIES_PARTITION))
    fleet = fleet_state(instance)
    indexed = fleet.indexed
    runs: list[tuple[str, str]] = [(k, c) for k, c in cursor.pending if k in partitions]
    _note_failed_runs(instance, cursor, now, limits)
    for key, commit in cursor.due_retries(now):
        state = last_indexed(instance, key) if key in indexed else None
        if state is not None:
            cursor.forget_failure(key, state.timestamp)
        if key in partitions and key in cursor.retries:
            runs.append((key, commit))
    budget = limits.max_head_lookups_per_tick
    lookups = 0
    errors: list[str] = []
    for attrs in source.recently_active(groups, _iso(now - limits.activity_window_seconds)):
        key = attrs["path_with_namespace"]
        activity = attrs.get("last_activity_at") or ""
        if key not in partitions or not cursor.due(key, activity, now, limits.recheck_seconds):
            continue
        if lookups >= budget:
            break
        lookups += 1
        try:
            head = source.head_commit(attrs["id"], attrs["default_branch"])
        except GitLabError as exc:
            errors.append(f"{key}: {exc}")
            continue
        cursor.checked[key] = (activity, now)
        state = last_indexed(instance, key) if key in indexed else None
        known = state.commit_sha if state else cursor.requested_commit(key, fleet.epoch(key))
        if head != known:
            runs.append((key, head))
            if state is None:
                cursor.requested[key] = (head, fleet.epoch(key))
    waiting = {k for k in cursor.requested if cursor.requested_commit(k, fleet.epoch(k))}
    for key in sorted(partitions - indexed - waiting):
        if lookups >= budget:
            break
        lookups += 1
        try:
            head = source.default_branch_head(key)
        except GitLabError as exc:
            errors.append(f"{key}: {exc}")
            continue
        if head:
            runs.append((key, head))
            cursor.requested[key] = (head, fleet.epoch(key))
    cursor.prune(partitions, now, limits.activity_window_seconds)
    cursor.requested = {k: c for k, c in cursor.requested.items() if k not in indexed}
    runs = dedupe(runs)
    cursor.pending = runs[limits.max_runs_per_tick :]
    return Tick(
        [
            (k, c, run_key(k, c, fleet.epoch(k), cursor.attempt(k, c, now)))
            for k, c in runs[: limits.max_runs_per_tick]
        ],
        cursor,
        lookups,
        errors,
    )


def run_key(partition: str, commit: str, epoch: str, attempt: int = 0) -> str:
    """Partition and commit: a commit is indexed once (again only after a removal, or as a
    retry of a failed run)."""
    return (
        f"{partition}@{commit}" + (f"#{epoch}" if epoch else "") + (f"~{attempt}" * bool(attempt))
    )


def _note_failed_runs(
    instance: DagsterInstance, cursor: TrackerCursor, now: float, limits: SensorLimits
) -> None:
    """Runs this sensor asked for that failed since the last look (also those that run
    monitoring marked failed after their process died): each gets a retry, later and later."""
    since = cursor.failures_seen_until or now - limits.activity_window_seconds
    records = instance.get_run_records(
        RunsFilter(
            # Not CANCELED: a person stopped that run, and a push still starts a new one.
            statuses=[DagsterRunStatus.FAILURE],
            updated_after=datetime.fromtimestamp(since, timezone.utc),
        ),
        limit=1000,
        order_by="update_timestamp",
        ascending=True,
    )
    for record in records:
        updated = record.update_timestamp.replace(tzinfo=timezone.utc).timestamp()
        cursor.failures_seen_until = max(cursor.failures_seen_until, updated)
        key = record.dagster_run.tags.get(PARTITION_TAG)
        commit = record.dagster_run.tags.get(COMMIT_TAG)
        if key and commit:
            ended = record.end_time or updated
            cursor.record_failure(
                key, commit, ended, limits.retry_seconds, limits.retry_cap_seconds
            )


@sensor(
    job=index_repository_job,
    minimum_interval_seconds=int(os.environ.get("HEAD_SENSOR_INTERVAL_SECONDS", 60)),
    default_status=DefaultSensorStatus.RUNNING,
    description="Requests one index_repository run per repository whose default-branch HEAD "
    "differs from its last indexed commit (or that was never indexed).",
)
def head_commit_sensor(context: SensorEvaluationContext, gitlab: GitLabResource) -> SensorResult:
    ensure_pools(context.instance)
    source = gitlab.source()
    tick = evaluate_tick(
        context.instance,
        source,
        gitlab.group_paths(),
        TrackerCursor.from_json(context.cursor),
        SensorLimits.from_env(),
        time.time(),
    )
    for error in tick.errors:
        context.log.warning(error)
    context.log.info(
        f"{len(tick.runs)} runs requested, {len(tick.cursor.pending)} carried over; "
        f"{tick.head_lookups} HEAD lookups, GitLab requests {dict(source.requests)}"
    )
    return SensorResult(
        run_requests=[
            RunRequest(partition_key=key, run_key=key_, tags={COMMIT_TAG: commit})
            for key, commit, key_ in tick.runs
        ],
        cursor=tick.cursor.to_json(),
    )
