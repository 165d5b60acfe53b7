"""The HEAD-commit sensor: runs only the repositories whose default branch moved."""

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from dagster import (
    AddDynamicPartitionsRequest,
    AssetRecordsFilter,
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

from gitlab_es_pipeline.clients.gitlab import GitLabError, GitLabSource
from gitlab_es_pipeline.core.projects import is_indexable
from gitlab_es_pipeline.core.run_forming import Request, form_runs
from gitlab_es_pipeline.core.sensor_cursor import SensorCursor, Want, dedupe
from gitlab_es_pipeline.core.timestamps import iso_utc
from gitlab_es_pipeline.core.webhooks import ZERO_SHA, ProjectNews, coalesce, in_groups
from gitlab_es_pipeline.defs.asset_keys import FILE_MANIFEST
from gitlab_es_pipeline.defs.jobs import (
    BATCH_OP,
    IN_PROGRESS,
    batch_members,
    batch_run_key,
    discover_repositories_job,
    index_repositories_job,
    index_repository_job,
)
from gitlab_es_pipeline.defs.partitions import PARTITION_TAG, REPOSITORIES_PARTITION
from gitlab_es_pipeline.defs.pools import ensure_pools
from gitlab_es_pipeline.defs.resources import GitLabResource
from gitlab_es_pipeline.runs.claims import BATCH_TAG, BATCH_TAG_VALUE, fail_dead_runs, leases_of
from gitlab_es_pipeline.runs.indexed import WANTED, FleetState, fleet_state, last_indexed
from gitlab_es_pipeline.runs.leases import repository_name
from gitlab_es_pipeline.webhooks.heard import heard_since

COMMIT_TAG = "gitlab_es_pipeline/commit"
RUN_KEY_TAG = "dagster/run_key"  # Dagster's tag of a run a sensor asked for


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
    # A requested run that Dagster has not made after this is asked for again.
    request_grace_seconds: float = 600
    # The listing and the follow-ups at most this often; ticks between them read only what
    # the hooks heard (0: every tick polls).
    poll_seconds: float = 0

    @classmethod
    def from_env(cls) -> "SensorLimits":
        return cls(
            max_runs_per_tick=int(os.environ.get("HEAD_SENSOR_MAX_RUNS_PER_TICK", 50)),
            max_head_lookups_per_tick=int(os.environ.get("HEAD_SENSOR_MAX_HEAD_LOOKUPS", 200)),
            recheck_seconds=float(os.environ.get("HEAD_SENSOR_RECHECK_SECONDS", 300)),
            retry_seconds=float(os.environ.get("HEAD_SENSOR_RETRY_SECONDS", 300)),
            batch_size=int(os.environ.get("INDEX_BATCH_SIZE", 50)),
            batch_max_files=int(os.environ.get("INDEX_BATCH_MAX_FILES", 1000)),
            poll_seconds=float(os.environ.get("HEAD_SENSOR_POLL_SECONDS", 60)),
        )


@dataclass
class Tick:
    runs: list[tuple[str, str, str]]  # runs of one repository: partition, commit, run key
    batches: list[list[tuple[str, str, str]]]  # runs of several: their members, likewise
    cursor: SensorCursor
    head_lookups: int
    errors: list[str]
    dead_runs: list[str] = field(default_factory=list)  # marked failed this tick
    added: list[str] = field(default_factory=list)  # partitions of projects hooks told of
    discover: str | None = None  # the run key of a discovery run to ask for (hooks)

    @property
    def requested(self) -> list[tuple[str, str, str]]:
        """Every repository asked for, in a run of its own or in a batch."""
        return [*self.runs, *(member for batch in self.batches for member in batch)]


@dataclass
class _Wanted:
    """What one tick found to ask for."""

    runs: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, int | None] = field(default_factory=dict)
    alone: set[str] = field(default_factory=set)
    forced: set[str] = field(default_factory=set)
    lookups: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, key: str, commit: str, files: int | None = None) -> None:
        self.runs.append((key, commit))
        self.files.setdefault(key, files)


def evaluate_tick(
    instance: DagsterInstance,
    source: GitLabSource,
    groups: list[str],
    cursor: SensorCursor,
    limits: SensorLimits,
    now: float,
) -> Tick:
    """One tick: a listing of recently active projects, then HEAD only where it may have moved;
    the wants that discovery or hooks recorded; the outstanding requests followed up.

    Cost: the listing pages (active projects only) plus at most max_head_lookups_per_tick
    requests; Dagster storage: a few queries plus one per project looked up.
    """
    heard = heard_since(instance, cursor.heard_after)
    cursor.heard_after = heard.after
    poll = now - cursor.polled_at >= limits.poll_seconds
    if not (poll or heard.events or cursor.pending or cursor.discover):
        return Tick([], [], cursor, 0, [])  # between polls, nothing heard: no GitLab request
    partitions = set(instance.get_dynamic_partitions(REPOSITORIES_PARTITION))
    dead = fail_dead_runs(instance, now) if poll else []
    if poll:
        cursor.polled_at = now
        leases_of(instance)[0].prune(older_than=now - 86400)  # rows free a day carry nothing
    fleet = fleet_state(instance)
    indexed = fleet.indexed
    found = _Wanted()
    for key, commit, size in cursor.pending:
        if key in partitions:
            found.add(key, commit, size)
            if key in cursor.forced:
                found.forced.add(key)
    if poll:
        _note_failed_runs(instance, cursor, now, limits)
    for key, commit in cursor.due_retries(now) if poll else []:
        state = last_indexed(instance, key) if key in indexed else None
        if state is not None:
            cursor.forget_failure(key, state.timestamp)
        if key in partitions and key in cursor.retries:
            found.add(key, commit)
            found.alone.add(key)

    def look(key: str, project_id: int | None = None, branch: str | None = None) -> str | None:
        """HEAD of the default branch, or None (no commits, or GitLab failed: kept unsure)."""
        found.lookups += 1
        try:
            if project_id is not None and branch:
                return source.head_commit(project_id, branch)
            return source.default_branch_head(key)
        except GitLabError as exc:
            found.errors.append(f"{key}: {exc}")
            if key not in cursor.unsure:
                cursor.unsure.append(key)
            return None

    def compare(key: str, head: str) -> None:
        """Asked for when HEAD is not what was indexed, nor what was already asked for."""
        if key in cursor.unsure:
            cursor.unsure.remove(key)
        state = last_indexed(instance, key) if key in indexed else None
        known = state.commit_sha if state else None
        asked = cursor.requested_commit(key, fleet.epoch(key))
        if head != known and head != asked:
            size = state.files if state else _tree_size(source, key, head, limits, found.errors)
            found.add(key, head, size)

    added = _hooked(
        source, groups, coalesce(heard.events), partitions, cursor, found, look, compare
    )
    if poll:
        _poll(
            instance, source, groups, cursor, fleet, partitions, found, look, compare, now, limits
        )
    cursor.prune(partitions, now, limits.activity_window_seconds)
    requested = dedupe(found.runs)
    held = _held(instance, [k for k, _ in requested])
    for key, commit in requested:  # another run has it: asked for once it lets go
        if key in held:
            _remember(cursor, fleet, key, commit, "", now, key in found.forced)
    formed = form_runs(
        [
            Request(k, c, found.files.get(k), alone=k in found.alone)
            for k, c in requested
            if k not in held
        ],
        limits.batch_size,
        limits.batch_max_files,
    )
    cursor.pending = [
        (r.key, r.commit, r.files) for run in formed[limits.max_runs_per_tick :] for r in run
    ]
    cursor.forced = [key for key, _, _ in cursor.pending if key in found.forced]

    def keyed(request: Request) -> tuple[str, str, str]:
        previous = cursor.requested.get(request.key)
        forced = request.key in found.forced or (previous is not None and previous.force)
        attempt = cursor.attempt(request.key, request.commit, now)
        key_ = run_key(request.key, request.commit, fleet.epoch(request.key), attempt)
        if forced or (previous is not None and previous.reasks):
            # Asked again at a commit that a run may already have had (a want, or a run that
            # ended without indexing it): a key Dagster has never seen.
            cursor.asks += 1
            key_ += f"!{cursor.asks}"
        _remember(cursor, fleet, request.key, request.commit, key_, now, forced)
        return request.key, request.commit, key_

    chosen = formed[: limits.max_runs_per_tick]
    batches = [[keyed(r) for r in run] for run in chosen if len(run) > 1]
    for members in batches:  # a member's run is its batch's: followed up by that run key
        batch_key = batch_run_key([key_ for _, _, key_ in members])
        for key, _, _ in members:
            cursor.requested[key].run_key = batch_key
    discover = None
    if cursor.discover and not _discovery_in_progress(instance):
        discover, cursor.discover = f"hooked-discovery-{cursor.heard_after}", False
    return Tick(
        [keyed(run[0]) for run in chosen if len(run) == 1],
        batches,
        cursor,
        found.lookups,
        found.errors,
        dead,
        added,
        discover,
    )


def _poll(
    instance: DagsterInstance,
    source: GitLabSource,
    groups: list[str],
    cursor: SensorCursor,
    fleet: FleetState,
    partitions: set[str],
    found: "_Wanted",
    look: Callable[..., str | None],
    compare: Callable[[str, str], None],
    now: float,
    limits: SensorLimits,
) -> None:
    """The backstop of the hooks: recently active projects listed, HEAD looked up where it may
    have moved, never-indexed repositories, wants recorded in storage, runs followed up."""
    budget = limits.max_head_lookups_per_tick
    for key in list(cursor.unsure):  # lookups that failed before: first, before they are lost
        if found.lookups >= budget:
            break
        if key in partitions:
            head = look(key)
            if head:
                compare(key, head)
    # From the last listing on (less the window), however long the daemon was away.
    since = now - limits.activity_window_seconds
    if cursor.listed_at:
        since = min(since, cursor.listed_at - limits.activity_window_seconds)
    listed_at = now
    for attrs in source.recently_active(groups, iso_utc(since)):
        key = attrs["path_with_namespace"]
        activity = attrs.get("last_activity_at") or ""
        if key not in partitions or not cursor.due(key, activity, now, limits.recheck_seconds):
            continue
        if found.lookups >= budget:
            listed_at = cursor.listed_at or now  # the rest is listed again next tick
            break
        head = look(key, attrs["id"], attrs["default_branch"])
        if head is None:
            continue
        cursor.checked[key] = (activity, now)
        compare(key, head)
    cursor.listed_at = listed_at
    waiting = set(cursor.requested) | set(found.files)
    for key in sorted(partitions - fleet.indexed - waiting):
        if found.lookups >= budget:
            break
        head = look(key)
        if head:
            found.add(key, head, _tree_size(source, key, head, limits, found.errors))
    _read_signals(instance, cursor, partitions, found)
    for key, commit in _follow_up(instance, cursor, fleet, partitions, now, limits):
        found.add(key, commit)


def _hooked(
    source: GitLabSource,
    groups: list[str],
    news: list[ProjectNews],
    partitions: set[str],
    cursor: SensorCursor,
    found: "_Wanted",
    look: Callable[..., str | None],
    compare: Callable[[str, str], None],
) -> list[str]:
    """What the hooks heard, one API lookup per project (the payload is trusted for its
    project id and commit only): a push to the default branch is wanted at its commit; a
    changed project is looked up, indexed under its current path (a partition added for a
    new one), and, when a path may have gone (destroyed, renamed, moved, out of scope),
    discovery is asked for. The partitions added, for the sensor to request."""
    added = []
    for item in news:
        try:
            attrs = source.project(item.project_id)
        except GitLabError as exc:
            if exc.status == 404:  # destroyed, or no longer visible to the token
                cursor.discover = True
            else:  # the poll still sees it
                found.errors.append(f"project {item.project_id} (heard of): {exc}")
            continue
        key = attrs["path_with_namespace"]
        if not (is_indexable(attrs) and in_groups(key, groups)):
            # Archived, emptied or out of scope: discovery removes its partition (or the
            # partition of the path it left); a new empty project waits for its first push.
            cursor.discover |= key in partitions or bool(item.changes & _PATH_CHANGES)
            continue
        if item.changes & _PATH_CHANGES:
            cursor.discover = True  # the old path's partition goes
        if key not in partitions:
            partitions.add(key)
            added.append(key)
        branch = attrs["default_branch"]
        commit = item.pushes.get(f"refs/heads/{branch}")
        if commit == ZERO_SHA or (commit is None and item.changes):
            commit = look(key, item.project_id, branch)
        if commit is None:
            continue
        if "project_update" in item.changes:  # visibility or branch: every document again
            found.forced.add(key)
            found.add(key, commit)
        else:
            compare(key, commit)
    return added


_PATH_CHANGES = {"project_destroy", "project_rename", "project_transfer"}


def _discovery_in_progress(instance: DagsterInstance) -> bool:
    runs = instance.get_run_records(
        RunsFilter(job_name=discover_repositories_job.name, statuses=IN_PROGRESS),
        limit=1,
    )
    return bool(runs)


def _remember(
    cursor: SensorCursor,
    fleet: FleetState,
    key: str,
    commit: str,
    key_: str,
    now: float,
    force: bool,
) -> None:
    previous = cursor.requested.get(key)
    reasks = previous.reasks if previous is not None else 0
    cursor.requested[key] = Want(
        commit,
        fleet.epoch(key),
        key_,
        now,
        previous.since if previous is not None else fleet.latest.get(key, 0),
        reasks,
        force or (previous is not None and previous.force),
    )


def _held(instance: DagsterInstance, keys: list[str]) -> set[str]:
    """The repositories among these that a run holds now (its lease is live)."""
    if not keys:
        return set()
    store, _ = leases_of(instance)
    names = {repository_name(k): k for k in keys}
    return {names[n] for n in store.holders(list(names))}


def _read_signals(
    instance: DagsterInstance, cursor: SensorCursor, partitions: set[str], found: _Wanted
) -> None:
    """Wants recorded in Dagster's storage since the last tick (discovery's identity changes):
    each asked for again at its indexed commit, or HEAD when never indexed."""
    page = instance.fetch_observations(
        AssetRecordsFilter(asset_key=FILE_MANIFEST, after_storage_id=cursor.signals_after),
        limit=1000,
        ascending=True,
    )
    for record in page.records:
        cursor.signals_after = max(cursor.signals_after, record.storage_id)
        observation = record.asset_observation
        key = record.partition_key
        if observation is None or key is None or key not in partitions:
            continue
        if WANTED not in observation.metadata:
            continue
        state = last_indexed(instance, key)
        if state is None:
            continue  # never indexed: asked for at HEAD anyway
        found.forced.add(key)
        if key not in found.files:  # not already asked for at a newer HEAD this tick
            found.add(key, state.commit_sha, state.files)


def _follow_up(
    instance: DagsterInstance,
    cursor: SensorCursor,
    fleet: FleetState,
    partitions: set[str],
    now: float,
    limits: SensorLimits,
) -> list[tuple[str, str]]:
    """Wants whose run ended without indexing them: asked for again (liveness).

    Satisfied wants are dropped: an es_index record newer than the request. A failed run is
    left to its backoff (`_note_failed_runs`); a run that succeeded without indexing the
    repository (a batch or range that left it to another run) or was never made is asked for
    again now, a cancelled one after the backoff, under a new run key, unless another run
    holds the repository.
    """
    open_wants: dict[str, Want] = {}
    for key, want in cursor.requested.items():
        if key not in partitions:
            continue
        if fleet.latest.get(key, 0) > want.since and key in fleet.indexed:
            state = last_indexed(instance, key)
            if state is not None and (want.force or state.commit_sha == want.commit):
                continue  # indexed since it was asked for
            if state is not None:
                # Another commit recorded since (a run that read an older or a newer HEAD):
                # HEAD is looked up again at the next tick, and asked for if it differs.
                if key not in cursor.unsure:
                    cursor.unsure.append(key)
                continue
        open_wants[key] = want
    cursor.requested = open_wants
    statuses: dict[str, tuple[DagsterRunStatus, float]] = {}
    run_keys = sorted({w.run_key for w in open_wants.values() if w.run_key})
    for start in range(0, len(run_keys), 200):
        for record in instance.get_run_records(
            RunsFilter(tags={RUN_KEY_TAG: run_keys[start : start + 200]})
        ):
            created = record.create_timestamp.replace(tzinfo=timezone.utc).timestamp()
            statuses[record.dagster_run.tags[RUN_KEY_TAG]] = (record.dagster_run.status, created)
    held = _held(instance, list(open_wants))
    again = []
    for key, want in open_wants.items():
        if key in held:
            continue
        status, created = statuses.get(want.run_key, (None, 0.0))
        fresh = now - want.requested_at < limits.request_grace_seconds
        if status is not None and created < want.requested_at - 1:
            # A run made before the request: Dagster skipped the request as its duplicate.
            status, fresh = None, False
        if want.run_key and status is None and fresh:
            continue  # not made yet (or still in the daemon's hands)
        if status in _UNFINISHED or status == DagsterRunStatus.FAILURE:
            continue
        if status == DagsterRunStatus.CANCELED and now - want.requested_at < limits.retry_seconds:
            continue  # a person stopped it: not at once
        if want.run_key:
            want.reasks += 1
        again.append((key, want.commit))
    return again


_UNFINISHED = {
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
}


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
    instance: DagsterInstance, cursor: SensorCursor, now: float, limits: SensorLimits
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
    left = []
    for key, commit in batch_members(run).items():
        state = last_indexed(instance, key)
        if state is None or started is None or state.timestamp < started:
            left.append((key, commit))
    return left


# Dagster's daemon looks at its sensors every 5 s. A sensor whose interval is exactly 5 s is
# skipped at every other look whose evaluation starts a hair earlier in the loop than the last
# tick's did (measured: ticks 5 or 10 s apart, bench/hooks_push.py); 4 s ticks at every look.
@sensor(
    jobs=[index_repository_job, index_repositories_job, discover_repositories_job],
    minimum_interval_seconds=int(os.environ.get("HEAD_SENSOR_INTERVAL_SECONDS", 4)),
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
        SensorCursor.from_json(context.cursor),
        SensorLimits.from_env(),
        time.time(),
    )
    for error in tick.errors:
        context.log.warning(error)
    for run_id in tick.dead_runs:
        context.log.warning(f"run {run_id}: its process is gone; marked failed")
    context.log.info(
        f"{len(tick.runs)} runs and {len(tick.batches)} batches of "
        f"{sum(len(b) for b in tick.batches)} repositories requested, "
        f"{len(tick.cursor.pending)} carried over, {len(tick.cursor.requested)} awaited; "
        f"{tick.head_lookups} HEAD lookups, GitLab "
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
            *(
                [RunRequest(job_name=discover_repositories_job.name, run_key=tick.discover)]
                if tick.discover
                else []
            ),
        ],
        dynamic_partitions_requests=(
            [AddDynamicPartitionsRequest(REPOSITORIES_PARTITION, tick.added)] if tick.added else []
        ),
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
