"""The HEAD-commit sensor: runs only the repositories whose default branch moved."""

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from gitlab_es_pipeline.batches import BATCH_OP, batch_run_key, index_repositories_job
from gitlab_es_pipeline.claims import BATCH_TAG, BATCH_TAG_VALUE
from gitlab_es_pipeline.clients.gitlab import GitLabError, GitLabSource
from gitlab_es_pipeline.core.batching import Request, form_runs
from gitlab_es_pipeline.core.head_tracking import TrackerCursor, dedupe
from gitlab_es_pipeline.jobs import index_repository_job
from gitlab_es_pipeline.partitions import PARTITION_TAG, REPOSITORIES_PARTITION
from gitlab_es_pipeline.pools import ensure_pools
from gitlab_es_pipeline.resources import GitLabResource
from gitlab_es_pipeline.state import fleet_state, last_indexed

COMMIT_TAG = "gitlab_es_pipeline/commit"


@dataclass(frozen=True)
class SensorLimits:
    max_runs_per_tick: int = 50  # a batch is one run
    max_head_lookups_per_tick: int = 200
    recheck_seconds: float = 300
    # GitLab's hourly throttle of last_activity_at, plus a margin.
    activity_window_seconds: float = 3900
    # A repository whose run failed is asked for again after this, doubling up to the cap.
    retry_seconds: float = 300
    retry_cap_seconds: float = 6 * 3600
    # Small repositories (at most batch_max_files tree entries) share runs of batch_size.
    batch_size: int = 50
    batch_max_files: int = 1000

    @classmethod
    def from_env(cls) -> "SensorLimits":
        return cls(
            max_runs_per_tick=int(os.environ.get("HEAD_SENSOR_MAX_RUNS_PER_TICK", 50)),
            max_head_lookups_per_tick=int(os.environ.get("HEAD_SENSOR_MAX_HEAD_LOOKUPS", 200)),
            recheck_seconds=float(os.environ.get("HEAD_SENSOR_RECHECK_SECONDS", 300)),
            retry_seconds=float(os.environ.get("HEAD_SENSOR_RETRY_SECONDS", 300)),
            batch_size=int(os.environ.get("INDEX_BATCH_SIZE", 50)),
            batch_max_files=int(os.environ.get("INDEX_BATCH_MAX_FILES", 1000)),
        )


@dataclass
class Tick:
    runs: list[tuple[str, str, str]]  # runs of one repository: partition, commit, run key
    batches: list[list[tuple[str, str, str]]]  # runs of several: their members, likewise
    cursor: TrackerCursor
    head_lookups: int
    errors: list[str]

    @property
    def requested(self) -> list[tuple[str, str, str]]:
        """Every repository asked for, in a run of its own or in a batch."""
        return [*self.runs, *(member for batch in self.batches for member in batch)]


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
    files: dict[str, int | None] = {}  # what is known of each requested repository's size
    alone: set[str] = set()  # retries: on their own
    runs: list[tuple[str, str]] = []
    for key, commit, size in cursor.pending:
        if key in partitions:
            runs.append((key, commit))
            files[key] = size
    _note_failed_runs(instance, cursor, now, limits)
    for key, commit in cursor.due_retries(now):
        state = last_indexed(instance, key) if key in indexed else None
        if state is not None:
            cursor.forget_failure(key, state.timestamp)
        if key in partitions and key in cursor.retries:
            runs.append((key, commit))
            alone.add(key)
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
            files[key] = state.files if state else _tree_size(source, key, head, limits, errors)
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
            files[key] = _tree_size(source, key, head, limits, errors)
            cursor.requested[key] = (head, fleet.epoch(key))
    cursor.prune(partitions, now, limits.activity_window_seconds)
    cursor.requested = {k: c for k, c in cursor.requested.items() if k not in indexed}
    formed = form_runs(
        [Request(k, c, files.get(k), alone=k in alone) for k, c in dedupe(runs)],
        limits.batch_size,
        limits.batch_max_files,
    )
    cursor.pending = [
        (r.key, r.commit, r.files) for run in formed[limits.max_runs_per_tick :] for r in run
    ]

    def keyed(request: Request) -> tuple[str, str, str]:
        attempt = cursor.attempt(request.key, request.commit, now)
        epoch = fleet.epoch(request.key)
        return request.key, request.commit, run_key(request.key, request.commit, epoch, attempt)

    chosen = formed[: limits.max_runs_per_tick]
    return Tick(
        [keyed(run[0]) for run in chosen if len(run) == 1],
        [[keyed(r) for r in run] for run in chosen if len(run) > 1],
        cursor,
        lookups,
        errors,
    )


def _tree_size(
    source: GitLabSource, key: str, head: str, limits: SensorLimits, errors: list[str]
) -> int | None:
    """A never-indexed repository's size: its tree's entries, counted only as far as needed to
    tell it is small (one request for a small one). None (a run of its own) if GitLab fails."""
    try:
        return source.tree_entries(key, head, limits.batch_max_files)
    except GitLabError as exc:
        errors.append(f"{key}: {exc}")
        return None


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
        ended = record.end_time or updated
        for key, commit in _repositories_of(instance, record.dagster_run, record.start_time):
            cursor.record_failure(
                key, commit, ended, limits.retry_seconds, limits.retry_cap_seconds
            )


def _repositories_of(
    instance: DagsterInstance, run: DagsterRun, started: float | None
) -> list[tuple[str, str]]:
    """The repositories a failed run left unindexed, with the commits it was asked for: the
    run's partition, or the members of a batch not indexed since the batch started."""
    key = run.tags.get(PARTITION_TAG)
    commit = run.tags.get(COMMIT_TAG)
    if key and commit:
        return [(key, commit)]
    if run.tags.get(BATCH_TAG) != BATCH_TAG_VALUE:
        return []
    members = run.run_config.get("ops", {}).get(BATCH_OP, {}).get("config", {})
    left = []
    for key, commit in (members.get("repositories") or {}).items():
        state = last_indexed(instance, key)
        if state is None or started is None or state.timestamp < started:
            left.append((key, commit))
    return left


@sensor(
    jobs=[index_repository_job, index_repositories_job],
    minimum_interval_seconds=int(os.environ.get("HEAD_SENSOR_INTERVAL_SECONDS", 60)),
    default_status=DefaultSensorStatus.RUNNING,
    description="Requests runs of the repositories whose default-branch HEAD differs from "
    "their last indexed commit (or that were never indexed): small ones in batches "
    "(index_repositories), large ones and retries in runs of their own (index_repository).",
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
        f"{len(tick.runs)} runs and {len(tick.batches)} batches of "
        f"{sum(len(b) for b in tick.batches)} repositories requested, "
        f"{len(tick.cursor.pending)} carried over; {tick.head_lookups} HEAD lookups, GitLab "
        f"requests {dict(source.requests)}"
    )
    return SensorResult(
        run_requests=[
            *(
                RunRequest(
                    job_name=index_repository_job.name,
                    partition_key=key,
                    run_key=key_,
                    tags={COMMIT_TAG: commit},
                )
                for key, commit, key_ in tick.runs
            ),
            *(batch_request(batch) for batch in tick.batches),
        ],
        cursor=tick.cursor.to_json(),
    )


def batch_request(members: list[tuple[str, str, str]]) -> RunRequest:
    """A run of index_repositories over these repositories."""
    return RunRequest(
        job_name=index_repositories_job.name,
        run_key=batch_run_key([key_ for _, _, key_ in members]),
        run_config={"ops": {BATCH_OP: {"config": {"repositories": {k: c for k, c, _ in members}}}}},
        tags={BATCH_TAG: BATCH_TAG_VALUE},
    )
