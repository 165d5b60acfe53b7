"""One run per repository at a time, across single runs, batches, ranges and es_index alone.

Every step that reads or writes a repository first takes the repository's lease
(`leases.py`), in the instance's own database, under the run's id:

- a batch or a backfill's range run that finds it held leaves the repository to its holder
  (`batch_outcome: left`) and goes on; the sensor asks for it again once the holder is done;
- a run of one repository (its manifest step, or es_index materialized alone) waits for it;
- the manifest step keeps it for the run's es_index step (the same run takes its own live
  lease again under the same token), and it is released when the state is recorded, or the
  step fails;
- every write to Elasticsearch is fenced by it (`Lease.check` before each request), and
  every stored read and recorded state by the database itself (`confirm`): a run that lost
  its lease records nothing.

The run's process renews what it holds (`Heartbeat`): a killed run's repositories are free
within `LEASE_SECONDS` (300), and the sensor reads the run's own heartbeat to mark it failed
(`fail_dead_runs`).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, cast

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from sqlalchemy.engine import Connection

from gitlab_es_pipeline.defs.partitions import is_range_run
from gitlab_es_pipeline.defs.retries import step_failure
from gitlab_es_pipeline.runs.leases import (
    STEPS_ONLY,
    Heartbeat,
    Lease,
    LeaseStore,
    lease_seconds,
    project_name,
    repository_name,
    run_name,
    write_margin_seconds,
)

if TYPE_CHECKING:
    from gitlab_es_pipeline.indexing.step import Step

# The tag of a batch run, always with this value.
BATCH_TAG = "gitlab_es_pipeline/batch"
BATCH_TAG_VALUE = "true"

_stores: weakref.WeakKeyDictionary[DagsterInstance, tuple[LeaseStore, Heartbeat]] = (
    weakref.WeakKeyDictionary()
)
_stores_lock = threading.Lock()


def of_many_repositories(tags: Mapping[str, str]) -> bool:
    """A batch, or a backfill's partition-range run."""
    return tags.get(BATCH_TAG) == BATCH_TAG_VALUE or is_range_run(tags)


def _connect(instance: DagsterInstance) -> AbstractContextManager[Connection]:
    """The adapter to Dagster's run storage: a connection to its SQL database.

    `SqlRunStorage.connect` is how Dagster's own SQLite, in-memory and PostgreSQL run storages
    reach their database; a transaction per call (PostgreSQL's is in autocommit mode).
    test_leases.py checks that the table lands in the run storage's own database.
    """
    storage = instance.run_storage
    connect = getattr(storage, "connect", None)
    if connect is None:
        raise TypeError(
            f"the run storage {type(storage).__name__} has no SQL database for leases; "
            "use Dagster's SQLite or PostgreSQL storage"
        )
    return cast(AbstractContextManager[Connection], connect())


def leases_of(instance: DagsterInstance) -> tuple[LeaseStore, Heartbeat]:
    """The instance's lease store and this process's heartbeat for it (one of each)."""
    with _stores_lock:
        found = _stores.get(instance)
        if found is None:
            store = LeaseStore(lambda: _connect(instance))
            found = (store, Heartbeat(store, lease_seconds(), lambda r: _finished(instance, r)))
            _stores[instance] = found
        return found


def _finished(instance: DagsterInstance, run_id: str) -> bool:
    run = instance.get_run_by_id(run_id)
    return run is not None and run.is_finished


def run_is_alive(step: Step) -> None:
    """Say, for as long as this process lives, that the run works (the sensor reads it)."""
    _, heartbeat = leases_of(step.instance)
    heartbeat.run_alive(step.run_id)


def try_take(step: Step, key: str) -> Lease | str:
    """The repository's lease for this run, or the run id holding it."""
    store, heartbeat = leases_of(step.instance)
    name = repository_name(key)
    lease = store.acquire(name, step.run_id, lease_seconds())
    if lease is None:
        holder = store.holders([name]).get(name)
        return holder[0] if holder else "another run"  # freed in between: asked again later
    heartbeat.hold(lease)
    return lease


def take(step: Step, key: str, timeout_seconds: float = 900, poll_seconds: float = 2) -> Lease:
    """The repository's lease for a run of one repository: waits while another run has it."""
    deadline = time.monotonic() + timeout_seconds
    told = False
    while True:
        lease = try_take(step, key)
        if isinstance(lease, Lease):
            return lease
        if time.monotonic() >= deadline:
            raise step_failure(
                f"{key}: run {lease} is still indexing this repository after "
                f"{timeout_seconds:.0f} s; trying again later",
                permanent=False,
            )
        if not told:
            step.log.info(f"{key}: run {lease} is indexing this repository; waiting for it")
            told = True
        time.sleep(poll_seconds)


def take_project(step: Step, project_id: int) -> Lease:
    """The project's lease, for a write: documents are the project's, and during a rename two
    partitions name one project. Held by another run: the write fails, to be tried again."""
    store, heartbeat = leases_of(step.instance)
    lease = store.acquire(project_name(project_id), step.run_id, lease_seconds())
    if lease is None:
        holder = store.holders([project_name(project_id)]).get(project_name(project_id))
        raise step_failure(
            f"project {project_id} is being written by run {holder[0] if holder else '?'} "
            "under another path (renamed or moved?); trying again later",
            permanent=False,
        )
    heartbeat.hold(lease)
    return lease


def last_writer(step: Step, project_id: int) -> tuple[str, int]:
    """The partition that last wrote the project's documents, and its count of writes."""
    store, _ = leases_of(step.instance)
    return store.last_writer(project_id)


def note_writer(step: Step, project: Lease, project_id: int, key: str) -> None:
    """This partition writes the project now: under the project's lease, before the write."""
    fence(project)
    store, _ = leases_of(step.instance)
    store.note_writer(project_id, key)


def settle(step: Step, lease: Lease) -> None:
    """The state is recorded: nothing is left half-written, and the repository is free."""
    store, _ = leases_of(step.instance)
    if lease.dirty and not lease.lost:
        store.set_dirty(lease, False)
    store.release(lease)


def release(step: Step, lease: Lease) -> None:
    """Free the repository without settling it (a failure: a write may be half done)."""
    store, _ = leases_of(step.instance)
    store.release(lease)


def begin_writing(step: Step, lease: Lease) -> None:
    """Before the first write: whoever comes next knows a write may be half done."""
    lease.check(write_margin_seconds())
    store, _ = leases_of(step.instance)
    store.set_dirty(lease, True)


def fence(lease: Lease) -> None:
    """Before each request to Elasticsearch and before the state is recorded."""
    lease.check(write_margin_seconds())


def confirm(step: Step, lease: Lease) -> None:
    """The fence, asked of the database as well: before what the next holder takes as true
    (the stored read, the recorded state). `fence` trusts this process's clock and its
    heartbeat's last word; a takeover since the last beat (a pause longer than the lease)
    is seen only here. Renewing leaves the write the whole lease to finish in."""
    fence(lease)
    store, _ = leases_of(step.instance)
    if not store.renew(lease, lease_seconds()):
        lease.check(0)  # raises: renew marked it lost


def run_works(instance: DagsterInstance, run_id: str) -> bool:
    """Whether a run may still be working: Dagster has not seen it finish, and its process
    renews its heartbeat (if it ever said it works: older runs did not). Unsure is yes."""
    run = instance.get_run_by_id(run_id)
    if run is None or run.is_finished:
        return False
    store, _ = leases_of(instance)
    name = run_name(run_id)
    beats = store.last_beat([name])
    return name not in beats or beats[name] >= time.time()


def fail_dead_runs(instance: DagsterInstance, now: float) -> list[str]:
    """Runs still 'started' whose process stopped renewing its heartbeat more than a lease
    ago: marked failed, so that Dagster frees what they held and the sensor's backoff asks
    for their repositories again (the default run launcher cannot see a dead run worker)."""
    records = instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTED]), limit=1000)
    if not records:
        return []
    store, _ = leases_of(instance)
    beats = store.beats([run_name(r.dagster_run.run_id) for r in records])
    ttl = lease_seconds()
    dead = []
    for record in records:
        run = record.dagster_run
        holder, expires = beats.get(run_name(run.run_id), ("", now))
        if expires >= now:
            continue  # never said it works (Dagster's own monitoring), or alive
        # Steps in processes of their own: nothing beats between two steps (a retry's wait of
        # up to 6 minutes, a pool slot's, re-logged every 5): allow for it.
        quiet = ttl if not holder.startswith(STEPS_ONLY) else max(4 * ttl, 1200)
        if expires > now - quiet + ttl:
            continue
        latest = instance.get_records_for_run(run.run_id, limit=1, ascending=False).records
        if latest and latest[0].timestamp > now - quiet:
            continue  # it still writes events: slow, not dead
        instance.report_run_failed(
            run,
            message=f"its process stopped renewing its leases {now - expires + ttl:.0f} s ago "
            "(killed, or its machine lost); its repositories are asked for again",
        )
        dead.append(run.run_id)
    return dead
