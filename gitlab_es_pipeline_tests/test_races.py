"""Races an independent review of the leases and wants found (issue 25), each reproduced
first, then fixed; and the checks that held (named `..._holds`).

Each test states what docs/runs.md promises and drives the real Dagster instance and the
stand-ins into an interleaving that broke it: a rename between a run's read and its write,
a batch storing its read after losing its lease, forced wants first seen while held or
carried over the per-tick cap, batch members followed up by the wrong run key, a want dropped
by a record of another commit, a read-only range clearing the dirty mark, a step whose
output handling failed keeping its lease.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dagster import (
    AssetRecordsFilter,
    DagsterRun,
    DagsterRunStatus,
    RunsFilter,
    materialize,
)
from dagster._core.remote_origin import RemoteJobOrigin

from gitlab_es_pipeline.core.sensor_cursor import SensorCursor
from gitlab_es_pipeline.defs.asset_keys import ES_INDEX
from gitlab_es_pipeline.defs.assets import es_index, manifest_and_line_documents, repositories
from gitlab_es_pipeline.defs.jobs import batch_run_key
from gitlab_es_pipeline.defs.partitions import PARTITION_TAG, RANGE_END_TAG, RANGE_START_TAG
from gitlab_es_pipeline.defs.sensors import (
    COMMIT_TAG,
    RUN_KEY_TAG,
    SensorLimits,
    Tick,
    batch_request,
    evaluate_tick,
)
from gitlab_es_pipeline.runs.claims import BATCH_TAG, BATCH_TAG_VALUE, leases_of
from gitlab_es_pipeline.runs.indexed import last_indexed
from gitlab_es_pipeline.runs.leases import LEASES, Lease, LeaseStore, lease_seconds, repository_name
from gitlab_es_pipeline_tests.corpus import expected_after_runs
from gitlab_es_pipeline_tests.pipeline import INDEX, Pipeline
from gitlab_es_pipeline_tests.repos import commit_files, init_repo, run_git
from gitlab_es_pipeline_tests.standins.http import Request, Response


# -- helpers ---------------------------------------------------------------------------------
def _fleet(pipeline: Pipeline, root: Path, keys: tuple[str, ...], **attrs: object) -> dict:
    repos = {}
    for key in keys:
        repo = init_repo(root / key.replace("/", "_"))
        commit_files(repo, {"README.md": f"# {key}\n", "src/main.py": f"NAME = {key!r}\n"})
        pipeline.gitlab.add_project(key, str(repo), **attrs)
        repos[key] = repo
    pipeline.discover()
    return repos


def _head(repo: Path) -> str:
    return run_git(repo, "rev-parse", "HEAD").strip()


def _expected(pipeline: Pipeline, repo: Path, key: str, commits: list[str]) -> dict:
    ids = {p.path_with_namespace: p.id for p in pipeline.gitlab.projects.values()}
    url = f"{pipeline.gitlab.url}/{key}"
    return expected_after_runs(repo, commits, ids[key], key, "main", url).documents


def _of(pipeline: Pipeline, key: str) -> dict:
    return {i: d for i, d in pipeline.es.documents(INDEX).items() if d["repository_name"] == key}


def _tick(pipeline: Pipeline, limits: SensorLimits, now: float | None = None) -> Tick:
    tick = evaluate_tick(
        pipeline.instance,
        pipeline.resources()["gitlab"].source(),
        pipeline.resources()["gitlab"].group_paths(),
        SensorCursor.from_json(pipeline.sensor_cursor),
        limits,
        time.time() if now is None else now,
    )
    pipeline.sensor_cursor = tick.cursor.to_json()
    return tick


def _launch(pipeline: Pipeline, tick: Tick) -> list[str]:
    """As the daemon launches a tick's requests: never a run key a run already had."""
    launched: list[str] = []
    for request in [*([run] for run in tick.runs), *tick.batches]:
        key_ = request[0][2] if len(request) == 1 else batch_run_key([k for *_, k in request])
        if pipeline.instance.get_run_records(RunsFilter(tags={RUN_KEY_TAG: key_}), limit=1):
            continue
        if len(request) == 1:
            key, commit, _ = request[0]
            pipeline.index(key, raise_on_error=False, tags={RUN_KEY_TAG: key_, COMMIT_TAG: commit})
        else:
            pipeline.index_batch(
                {k: c for k, c, _ in request},
                tags={RUN_KEY_TAG: key_, BATCH_TAG: BATCH_TAG_VALUE},
            )
        launched.extend(k for k, _, _ in request)
    return launched


def _hold(pipeline: Pipeline, key: str) -> tuple[DagsterRun, object]:
    """Another process's started run holding the repository (as test_liveness does)."""
    run = pipeline.instance.add_run(
        DagsterRun(
            job_name="index_repositories",
            run_id=str(uuid.uuid4()),
            status=DagsterRunStatus.STARTED,
            tags={BATCH_TAG: BATCH_TAG_VALUE},
        )
    )
    store, heartbeat = leases_of(pipeline.instance)
    lease = store.acquire(repository_name(key), run.run_id, lease_seconds())
    assert lease is not None
    heartbeat.hold(lease)
    return run, lease


def _let_go(pipeline: Pipeline, run: DagsterRun, lease: object) -> None:
    pipeline.instance.report_run_failed(run, "ended")
    store, _ = leases_of(pipeline.instance)
    store.release(lease)  # type: ignore[arg-type]


def _origin(job_name: str) -> RemoteJobOrigin:
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin

    return RemoteJobOrigin(
        RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("loc"), "__repository__"), job_name
    )


def _iso_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- 1. batch members' wants are matched against no run ----------------------------------------
def test_members_of_a_queued_batch_are_not_asked_for_again_while_it_waits(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """runs.md, Liveness: 'is queued or running ... then wait'. A batch member's want keeps
    the member's own run key, but the batch run carries batch_run_key(...): the follow-up
    never finds its status, and after request_grace_seconds asks for every member again."""
    _fleet(pipeline, tmp_path, ("fleet/a", "fleet/b"))
    limits = SensorLimits(recheck_seconds=0)  # production grace: 600 s
    now = time.time()
    tick = _tick(pipeline, limits, now)
    assert tick.runs == [] and len(tick.batches) == 1
    (batch,) = tick.batches
    # The daemon made the batch run; it waits in the run queue (max_concurrent_runs reached).
    request = batch_request(batch)
    pipeline.instance.add_run(
        DagsterRun(
            job_name="index_repositories",
            run_id=str(uuid.uuid4()),
            status=DagsterRunStatus.QUEUED,
            tags={RUN_KEY_TAG: str(request.run_key), **request.tags},
            run_config=request.run_config,
            remote_job_origin=_origin("index_repositories"),
        )
    )
    later = _tick(pipeline, limits, now + 700)  # the batch still queued, 11+ minutes on
    assert later.requested == [], later.requested


def test_a_failed_batch_members_retry_waits_for_its_backoff(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """runs.md, Liveness: 'failed ... asked again after the backoff (5 minutes, doubling up
    to 6 hours)'. For a batch member the follow-up finds no status (see above) and asks
    again once request_grace_seconds passed, every grace period, whatever the backoff:
    a repository that always fails in a batch costs a batch run every grace period."""
    _fleet(pipeline, tmp_path, ("fleet/a", "fleet/b"))
    limits = SensorLimits(recheck_seconds=0, retry_seconds=3600, request_grace_seconds=1)
    tick = _tick(pipeline, limits)
    assert len(tick.batches) == 1
    pipeline.gitlab.tree_entries_served = 1  # every manifest check fails: permanent
    assert _launch(pipeline, tick)
    asked_again: list[str] = []
    for _ in range(3):
        time.sleep(1.2)
        again = _tick(pipeline, limits)
        asked_again.extend(k for k, _, _ in again.requested)
        _launch(pipeline, again)
    assert asked_again == [], f"asked again within the 3600 s backoff: {asked_again}"


def test_a_member_a_batch_left_is_asked_for_at_the_next_tick(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """runs.md, Liveness: 'succeeded without indexing it (a batch or range left it to another
    run) ... asked again at the next tick'. With the production request_grace_seconds (600)
    the member's want finds no status (the batch has another run key) and waits the grace:
    ten minutes, not the next tick. (test_liveness runs with request_grace_seconds=0.)"""
    _fleet(pipeline, tmp_path, ("fleet/a", "fleet/b", "fleet/c"))
    limits = SensorLimits(recheck_seconds=0)
    tick = _tick(pipeline, limits)
    assert len(tick.batches) == 1
    holder, lease = _hold(pipeline, "fleet/c")
    _launch(pipeline, tick)  # the batch indexes a and b, leaves c, succeeds
    assert last_indexed(pipeline.instance, "fleet/c") is None
    _let_go(pipeline, holder, lease)
    again = _tick(pipeline, limits)
    assert [k for k, _, _ in again.requested] == ["fleet/c"]


# -- 2. a forced want asked under a run key an old failed run has --------------------------------
def test_an_identity_want_first_seen_while_held_is_indexed_in_the_end(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """runs.md, Convergence/Liveness: a want is asked for again until indexed. A want first
    seen while another run holds the repository is remembered with no run key and its
    'forced' flag; the next tick keys it without '!n' (keyed() looks at this tick's
    found.forced, never at Want.force), i.e. `<partition>@<commit>`: the key of an earlier
    run at that commit. Dagster skips it; when that earlier run had FAILED the follow-up
    takes the want for a failed run left to its backoff, no retry is scheduled (that failure
    was seen long ago), and discovery does not want it again (a want is waiting): the
    visibility change is never indexed."""
    repo = init_repo(tmp_path / "vis")
    commit = commit_files(repo, {"a.py": "x = 1\n"})
    pipeline.gitlab.add_project("g/vis", str(repo), visibility="public")
    pipeline.discover()
    # A first attempt at this commit failed (its key is `g/vis@<commit>`); a retry indexed it.
    pipeline.instance.add_run(
        DagsterRun(
            job_name="index_repository",
            run_id=str(uuid.uuid4()),
            status=DagsterRunStatus.FAILURE,
            tags={RUN_KEY_TAG: f"g/vis@{commit}", PARTITION_TAG: "g/vis", COMMIT_TAG: commit},
        )
    )
    assert pipeline.index("g/vis", tags={RUN_KEY_TAG: f"g/vis@{commit}~1"}).success
    limits = SensorLimits(recheck_seconds=0)
    assert _launch(pipeline, _tick(pipeline, limits)) == []

    pipeline.gitlab.project("g/vis").visibility = "private"
    pipeline.discover()
    holder, lease = _hold(pipeline, "g/vis")
    assert _tick(pipeline, limits).requested == []  # held: waits for the holder
    _let_go(pipeline, holder, lease)
    for _ in range(5):
        _launch(pipeline, _tick(pipeline, limits))
    pipeline.discover()  # discovery does not want it again: its want is still 'waiting'
    for _ in range(3):
        _launch(pipeline, _tick(pipeline, limits))
    want = SensorCursor.from_json(pipeline.sensor_cursor).requested.get("g/vis")
    assert pipeline.latest_metadata("es_index", "g/vis")["visibility"] == "private", (
        f"stuck on the old failed run's key: {want}"
    )


def test_a_forced_want_carried_over_the_per_tick_cap_keeps_a_key_of_its_own(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """The same through cursor.pending (more wants than max_runs_per_tick, e.g. a group made
    private): the carried-over want loses 'forced' and is asked under `<partition>@<commit>`,
    which the run that indexed the commit already had."""
    _fleet(pipeline, tmp_path, ("g/a", "g/b"), visibility="public")
    limits = SensorLimits(recheck_seconds=0, batch_size=1)
    _launch(pipeline, _tick(pipeline, limits))
    assert last_indexed(pipeline.instance, "g/a") and last_indexed(pipeline.instance, "g/b")
    for key in ("g/a", "g/b"):
        pipeline.gitlab.project(key).visibility = "private"
    pipeline.discover()
    capped = SensorLimits(recheck_seconds=0, batch_size=1, max_runs_per_tick=1)
    first = _tick(pipeline, capped)
    assert len(first.requested) == 1
    second = _tick(pipeline, capped)
    (carried,) = second.requested
    assert "!" in carried[2], f"the carried-over want reuses a used run key: {carried[2]}"


# -- 3. a want dropped by a record of an older commit --------------------------------------------
def test_a_want_is_not_dropped_by_a_record_of_an_older_commit(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """runs.md, Liveness: 'The sensor remembers every repository it asked for until Dagster's
    storage records the commit indexed'. _follow_up drops a want on any es_index record newer
    than the request, whatever its commit. A run that read c1 and records it after the
    sensor asked for c2 drops the want for c2; unless the activity listing looks again
    (within the hour after the push), c2 waits for reconciliation (up to a day)."""
    repos = _fleet(pipeline, tmp_path, ("fleet/a",))
    repo = repos["fleet/a"]
    limits = SensorLimits(recheck_seconds=3600, request_grace_seconds=0)
    _launch(pipeline, _tick(pipeline, limits))
    c0 = _head(repo)
    assert last_indexed(pipeline.instance, "fleet/a").commit_sha == c0

    c1 = commit_files(repo, {"src/main.py": "NAME = 'c1'\n"})
    pipeline.gitlab.project("fleet/a").last_activity_at = _iso_now()
    writing, go_on = threading.Event(), threading.Event()

    def hold_first_bulk(request: Request) -> Response | None:
        if "_bulk" in request.raw_path and not writing.is_set():
            writing.set()
            go_on.wait(60)
        return None

    pipeline.es.faults.append(hold_first_bulk)
    results = []
    runner = threading.Thread(target=lambda: results.append(pipeline.index("fleet/a")))
    runner.start()  # a run (a person's, a backfill's) that read c1 and is writing it
    assert writing.wait(60)
    time.sleep(1.1)
    c2 = commit_files(repo, {"src/main.py": "NAME = 'c2'\n"})
    pipeline.gitlab.project("fleet/a").last_activity_at = _iso_now()
    tick = _tick(pipeline, limits)
    assert tick.requested == []  # held: the want for c2 waits for the holder
    assert SensorCursor.from_json(pipeline.sensor_cursor).requested["fleet/a"].commit == c2
    go_on.set()
    runner.join(120)
    assert results and results[0].success
    assert last_indexed(pipeline.instance, "fleet/a").commit_sha == c1
    for _ in range(3):
        _launch(pipeline, _tick(pipeline, limits))
    state = last_indexed(pipeline.instance, "fleet/a")
    assert state is not None and state.commit_sha == c2, "the want for c2 was dropped"


# -- 4. the dirty mark cleared by a run that wrote nothing ---------------------------------------
def _half_written_first_load(pipeline: Pipeline, tmp_path: Path) -> tuple[Path, str]:
    repo = init_repo(tmp_path / "app")
    commit_files(repo, {"a.py": "x = 1\ny = 2\n", "old.py": "gone = 1\n"})
    pipeline.gitlab.add_project("team/app", str(repo))
    pipeline.discover()

    def refuse_one(kind: str, meta: dict, source: dict | None) -> dict | None:
        if source and source["file_path"] == "a.py" and source["line_number"] == 2:
            return {"_id": meta["_id"], "status": 400, "error": {"type": "x", "reason": "no"}}
        return None

    pipeline.es.item_faults.append(refuse_one)
    assert not pipeline.index("team/app", raise_on_error=False).success
    pipeline.es.item_faults.remove(refuse_one)
    assert last_indexed(pipeline.instance, "team/app") is None
    assert any(d["file_path"] == "old.py" for d in _of(pipeline, "team/app").values())
    return repo, "team/app"


def test_a_half_written_first_load_is_swept_by_the_next_run_holds(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Control: the dirty mark makes the next run a full refresh."""
    repo, key = _half_written_first_load(pipeline, tmp_path)
    c1 = commit_files(repo, {}, delete=("old.py",))
    assert pipeline.index(key).success
    assert _of(pipeline, key) == _expected(pipeline, repo, key, [c1])


def test_a_read_only_range_run_does_not_clear_the_dirty_mark(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """runs.md, Leases: 'Before its first write a holder marks the lease dirty; recording the
    state clears it.' A backfill range run that selected file_manifest/line_documents alone
    records no state, but index_each settles (clears dirty) every repository it read: the
    next run loads as FULL, not FULL_REFRESH, and the failed first load's documents of a
    file deleted since stay in the index for good (no reconciliation looks at content)."""
    repo, key = _half_written_first_load(pipeline, tmp_path)
    read_only = materialize(
        [manifest_and_line_documents, es_index, repositories],
        selection=[manifest_and_line_documents],
        instance=pipeline.instance,
        resources=pipeline.resources(),
        tags={RANGE_START_TAG: key, RANGE_END_TAG: key},
    )
    assert read_only.success
    c1 = commit_files(repo, {}, delete=("old.py",))
    assert pipeline.index(key).success
    left = sorted({d["file_path"] for d in _of(pipeline, key).values()})
    assert _of(pipeline, key) == _expected(pipeline, repo, key, [c1]), left


# -- 5. a batch stores its read without a fence ------------------------------------------------------
class _HeartbeatPausedFor:
    """The lease store as one paused run's heartbeat sees it: its renewals never happen."""

    def __init__(self, store: LeaseStore, run_id: str) -> None:
        self._store, self._run_id = store, run_id

    def renew(self, lease: Lease, ttl: float) -> bool:
        return True if lease.holder == self._run_id else self._store.renew(lease, ttl)

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


@pytest.mark.parametrize("batch_stores", ["between_the_steps", "after_the_run_holds"])
def test_a_batch_that_lost_its_lease_does_not_overwrite_the_holders_stored_read(
    pipeline: Pipeline, tmp_path: Path, batch_stores: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runs.md, What you can rely on: 'a write made under a lease that was lost is never
    recorded as the current state'. A batch's _read stores file_manifest and line_documents
    (store_partition) before its first fence (_record). A batch whose lease lapsed while it
    read (its process paused longer than a lease, simulated by expiring the row) overwrites
    the stored line_documents of the run that took the repository over, between that run's
    two steps: the run's es_index writes the batch's documents (of c1) under its own
    manifest (c2) and records c2. (Control: the batch storing after the run is harmless.)"""
    repos = _fleet(pipeline, tmp_path, ("fleet/a",))
    repo = repos["fleet/a"]
    assert pipeline.index("fleet/a").success
    c0 = _head(repo)
    commit_files(repo, {"src/main.py": "NAME = 'c1'\nMORE = 1\n"})
    name = repository_name("fleet/a")

    batch_reading, batch_go_on = threading.Event(), threading.Event()

    def pause_the_batchs_read(request: Request, path: str) -> Response | None:
        if "/repository/compare" in path and not batch_reading.is_set():
            batch_reading.set()
            batch_go_on.wait(60)
        return None

    pipeline.gitlab.faults.append(pause_the_batchs_read)
    batch_results = []
    batch = threading.Thread(target=lambda: batch_results.append(pipeline.index_batch(["fleet/a"])))
    batch.start()
    assert batch_reading.wait(60)
    # The batch's process stalls past its lease: its heartbeat beats no more for it (it would
    # find the lease lost, by luck of timing, before the batch goes on), and the row expires.
    store, heartbeat = leases_of(pipeline.instance)
    batch_run = store.holders([name])[name][0]
    monkeypatch.setattr(heartbeat, "_store", _HeartbeatPausedFor(store, batch_run))
    with store._connect() as conn:
        conn.execute(sa.update(LEASES).where(LEASES.c.name == name).values(expires_at=0.0))
    c2 = commit_files(repo, {"src/main.py": "NAME = 'c2'\n"})

    def let_the_batch_store_first(request: Request) -> Response | None:
        # es_index's first request (the index's existence) comes after it read its manifest
        # and before it reads line_documents.
        if request.method == "HEAD" and not batch_go_on.is_set():
            batch_go_on.set()
            batch.join(60)
        return None

    if batch_stores == "between_the_steps":
        pipeline.es.faults.append(let_the_batch_store_first)
    assert pipeline.index("fleet/a").success  # took the expired lease, read c2, wrote
    batch_go_on.set()
    batch.join(60)
    assert batch_results and not batch_results[0].success  # the batch's fence did stop it
    state = last_indexed(pipeline.instance, "fleet/a")
    assert state is not None and state.commit_sha == c2
    main_py = sorted(
        (d["line_number"], d["line_content"])
        for d in _of(pipeline, "fleet/a").values()
        if d["file_path"] == "src/main.py"
    )
    assert main_py == [(1, "NAME = 'c2'")], f"recorded c2, index holds {main_py}"
    assert _of(pipeline, "fleet/a") == _expected(pipeline, repo, "fleet/a", [c0, c2])


# -- lease store: checks that held ----------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_lease_reentrance_release_and_stale_objects_holds(pipeline: Pipeline) -> None:
    """The same run's two takings share a token; releasing one ends both (the other cannot
    renew); a lapsed holder cannot renew even if nobody took it; a renewal never moves the
    local expiry past the database's."""
    clock = _Clock()
    store = LeaseStore(leases_of(pipeline.instance)[0]._connect, clock)
    first = store.acquire("repository:x", "run-a", 60)
    second = store.acquire("repository:x", "run-a", 60)
    assert first and second and first.token == second.token
    store.set_dirty(second, True)
    store.release(second)
    assert not store.renew(first, 60) and first.lost
    third = store.acquire("repository:x", "run-a", 60)  # a step retry of the same run
    assert third and third.token == first.token + 1 and third.dirty
    clock.now += 61
    assert not store.renew(third, 60)
    other = store.acquire("repository:x", "run-b", 60)
    assert other and other.token == third.token + 1
    # A pruned row restarts at token 1; the holder is part of the fence, so an old holder's
    # token 1 cannot match a new holder's.
    store.release(other)
    clock.now += 100_000
    assert store.prune(older_than=clock.now - 86400) >= 0


def test_heartbeat_survives_a_database_outage_shorter_than_twice_a_lease_holds(
    pipeline: Pipeline,
) -> None:
    """A renewal that fails leaves the local expiry alone: the fence refuses once it passed."""
    from gitlab_es_pipeline.runs.leases import Heartbeat, LeaseLost

    real = leases_of(pipeline.instance)[0]
    down = threading.Event()

    def connect() -> Any:
        if down.is_set():
            raise sa.exc.OperationalError("SELECT 1", {}, Exception("database away"))
        return real._connect()

    store = LeaseStore(connect)
    heartbeat = Heartbeat(store, 2.0)
    lease = store.acquire("repository:h", "run-h", 2.0)
    assert lease is not None
    heartbeat.hold(lease)
    down.set()
    time.sleep(2.5)
    try:
        lease.check(0.5)
        raise AssertionError("the fence let a lapsed lease write")
    except LeaseLost:
        pass
    down.clear()
    time.sleep(0.5)


def test_a_normal_run_leaves_the_lease_free_holds(pipeline: Pipeline, tmp_path: Path) -> None:
    """After a normal run the lease is free, and its state is recorded."""
    _fleet(pipeline, tmp_path, ("fleet/a",))
    assert pipeline.index("fleet/a").success
    store, _ = leases_of(pipeline.instance)
    assert store.holders([repository_name("fleet/a")]) == {}
    only = AssetRecordsFilter(asset_key=ES_INDEX, asset_partitions=["fleet/a"])
    assert pipeline.instance.fetch_materializations(only, limit=1).records


# -- 6. discovery removes a repository a run is about to record ----------------------------------
def test_a_removal_between_a_runs_last_check_and_its_record_is_not_recorded_holds(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Discovery deletes a removed repository's documents without its lease, and
    write_repository checks the partition before refresh/count/record. A removal in that gap
    is still not recorded: Dagster itself refuses an output for a partition that no longer
    exists (DagsterInvalidInvocationError in get_output_context), so the run fails."""
    _fleet(pipeline, tmp_path, ("fleet/a",))
    removed = threading.Event()
    handle = pipeline.es.handle

    def remove_before_the_count(request: Request) -> Response:
        # Outside the stand-in's lock: discovery's own requests go through meanwhile.
        if request.raw_path.endswith("/_count") and not removed.is_set():
            removed.set()
            pipeline.gitlab.project("fleet/a").archived = True
            assert pipeline.discover().success
        return handle(request)

    pipeline.es.handle = remove_before_the_count  # type: ignore[method-assign]
    try:
        result = pipeline.index("fleet/a", raise_on_error=False)
    finally:
        pipeline.es.handle = handle  # type: ignore[method-assign]
    assert removed.is_set() and not result.success
    assert "fleet/a" not in pipeline.partitions()
    assert _of(pipeline, "fleet/a") == {}
    pipeline.gitlab.project("fleet/a").archived = False
    pipeline.discover()
    assert last_indexed(pipeline.instance, "fleet/a") is None  # asked for anew


def test_a_step_whose_output_handling_fails_lets_go_of_its_lease(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """es_index yields its Output inside `try/except BaseException: release`, but when
    Dagster's own handling of that output fails (the IO manager cannot store, or the
    partition is gone) Dagster stops iterating the step's generator: the except clause never
    runs, the lease is not released, and this process's Heartbeat renews it until the
    generator is garbage-collected: in a run worker, until the process exits (then it
    expires within a lease); in-process (materialize/execute_in_process: tests, scripts, a
    notebook) for as long as the caller keeps the run's result. Meanwhile every run of the
    repository waits for it (15 minutes, then fails) and the sensor takes it for held."""
    from gitlab_es_pipeline.defs.io_managers import ParquetStore

    _fleet(pipeline, tmp_path, ("fleet/a",))
    dump = ParquetStore.dump_to_path

    def refuse_es_index(self: ParquetStore, context: Any, obj: Any, path: Any) -> None:
        if "es_index" in str(path):
            raise OSError("the object store refused the write")
        return dump(self, context, obj, path)

    monkeypatch.setattr(ParquetStore, "dump_to_path", refuse_es_index)
    result = pipeline.index("fleet/a", raise_on_error=False)
    assert not result.success
    monkeypatch.setattr(ParquetStore, "dump_to_path", dump)
    store, _ = leases_of(pipeline.instance)
    time.sleep(lease_seconds() + 2)  # longer than a lease: a dead holder would have expired
    held = store.holders([repository_name("fleet/a")])
    assert held == {}, f"the finished run {result.run_id} still holds it: {held}"


# -- 7. a rename: two partitions, one project, two leases -----------------------------------------
def test_a_run_of_the_old_path_does_not_delete_the_renamed_repositorys_documents(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Leases are per partition key; document ids are per project id (project-path-line). A
    run of the old path that was writing when the project was renamed writes the same ids as
    the new partition's run (with the old repository_name), then finds its partition gone and
    deletes (project id, old name): the new partition's documents of those ids go with them,
    after the new partition recorded its state. Nothing asks for it again (HEAD, identity
    and orphans all agree), so they are missing for good."""
    repos = _fleet(pipeline, tmp_path, ("fleet/old",))
    repo = repos["fleet/old"]
    handle = pipeline.es.handle
    writing, go_on = threading.Event(), threading.Event()

    def hold_the_old_runs_first_bulk(request: Request) -> Response:
        if "_bulk" in request.raw_path and not writing.is_set():
            writing.set()
            go_on.wait(120)
        return handle(request)

    pipeline.es.handle = hold_the_old_runs_first_bulk  # type: ignore[method-assign]
    old_results = []
    old = threading.Thread(
        target=lambda: old_results.append(pipeline.index("fleet/old", raise_on_error=False))
    )
    try:
        old.start()  # read under the old path; now writing (its first bulk is held)
        assert writing.wait(60)
        pipeline.gitlab.project("fleet/old").path_with_namespace = "fleet/new"
        assert pipeline.discover().success  # fleet/old removed, fleet/new added
        assert pipeline.partitions() == ["fleet/new"]
        # The sensor's run of the new partition: the project's documents are being written
        # under the old path, so it writes nothing and fails, to be asked for again.
        new = pipeline.index("fleet/new", raise_on_error=False)
        assert not new.success
        assert any("under another path" in str(e.event_specific_data) for e in new.all_events)
        go_on.set()
        old.join(120)
    finally:
        go_on.set()
        pipeline.es.handle = handle  # type: ignore[method-assign]
    assert old_results and not old_results[0].success  # it found its partition gone
    limits = SensorLimits(recheck_seconds=0, request_grace_seconds=0)
    pipeline.discover()
    for _ in range(2):
        _launch(pipeline, _tick(pipeline, limits))
    assert _of(pipeline, "fleet/new") == _expected(pipeline, repo, "fleet/new", [_head(repo)]), (
        f"fleet/new holds {len(_of(pipeline, 'fleet/new'))} documents"
    )


def test_a_failed_attempts_generator_closed_later_does_not_free_the_next_attempts_lease_holds(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first es_index attempt fails in Dagster's handling of its Output: its generator is
    left suspended inside `try: ... except BaseException: release(step, lease)`. The retry
    (same run) takes the lease again under the same token (re-entrance). When the garbage
    collector closes the first attempt's generator, GeneratorExit runs release() with the
    same holder and token: the retry's lease would be freed while the retry writes. Held in
    Dagster 1.13: the failed attempt's generator stays reachable until the run ends (it is
    closed, and its release runs, only once the run's result is dropped: see the next
    test), so a collection during the retry does not close it."""
    import gc

    from gitlab_es_pipeline.defs.io_managers import ParquetStore

    repos = _fleet(pipeline, tmp_path, ("fleet/a",))
    assert pipeline.index("fleet/a").success
    commit_files(repos["fleet/a"], {"src/main.py": "NAME = 2\n"})
    dump = ParquetStore.dump_to_path
    failed_once = threading.Event()

    def refuse_es_index_once(self: ParquetStore, context: Any, obj: Any, path: Any) -> None:
        if "es_index" in str(path) and not failed_once.is_set():
            failed_once.set()
            raise OSError("the object store refused the write")
        return dump(self, context, obj, path)

    monkeypatch.setattr(ParquetStore, "dump_to_path", refuse_es_index_once)
    store, _ = leases_of(pipeline.instance)
    name = repository_name("fleet/a")
    seen: dict[str, object] = {}
    handle = pipeline.es.handle

    def collect_during_the_retrys_write(request: Request) -> Response:
        if "_bulk" in request.raw_path and failed_once.is_set() and "before" not in seen:
            seen["before"] = store.holders([name])
            gc.collect()
            seen["after"] = store.holders([name])
            seen["other"] = store.acquire(name, "another-run", lease_seconds())
        return handle(request)

    pipeline.es.handle = collect_during_the_retrys_write  # type: ignore[method-assign]
    try:
        pipeline.index("fleet/a", raise_on_error=False)
    finally:
        pipeline.es.handle = handle  # type: ignore[method-assign]
    assert seen.get("before"), seen  # the retry holds it while it writes
    assert seen["other"] is None, f"another run took it while the retry wrote: {seen}"
