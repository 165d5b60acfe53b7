"""Leases (one writer per repository): compare-and-set in the instance's own database.

On the project's SQLite storage and on a real PostgreSQL; races between real processes.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psycopg2
import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

from gitlab_es_pipeline.runs.claims import leases_of
from gitlab_es_pipeline.runs.leases import (
    LEASES,
    WRITERS,
    Lease,
    LeaseLost,
    LeaseStore,
    lease_seconds,
    run_name,
)
from gitlab_es_pipeline_tests.conftest import ROOT


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _store(instance: DagsterInstance, clock: Clock) -> LeaseStore:
    store, _ = leases_of(instance)
    return LeaseStore(store._connect, clock)


@pytest.mark.parametrize("project_instance", ["sqlite", "postgres"], indirect=True)
def test_the_lease_table_is_in_the_run_storages_own_database(
    project_instance: DagsterInstance,
) -> None:
    store, _ = leases_of(project_instance)
    assert store.acquire("repository:a/b", "run-1", 60) is not None
    store.note_writer(7, "a/b")
    store.note_writer(7, "a/c")
    leases = f"SELECT name, holder FROM {LEASES.name}"
    writers = f"SELECT project_id, partition, writes FROM {WRITERS.name}"
    url = os.environ.get("DAGSTER_PG_URL")
    if url:
        with psycopg2.connect(url) as pg, pg.cursor() as cursor:
            cursor.execute(leases)
            rows = cursor.fetchall()
            cursor.execute(writers)
            written = cursor.fetchall()
    else:
        runs_db = Path(os.environ["DAGSTER_HOME"]) / "history" / "runs.db"
        with sqlite3.connect(runs_db) as conn:
            rows = conn.execute(leases).fetchall()
            written = conn.execute(writers).fetchall()
    assert rows == [("repository:a/b", "run-1")]
    assert written == [(7, "a/c", 2)] and store.last_writer(7) == ("a/c", 2)
    assert store.last_writer(8) == ("", 0)


@pytest.mark.parametrize("project_instance", ["sqlite", "postgres"], indirect=True)
def test_one_holder_at_a_time_and_a_new_token_at_each_change_of_hands(
    project_instance: DagsterInstance,
) -> None:
    clock = Clock()
    store = _store(project_instance, clock)
    first = store.acquire("repository:x", "run-a", 60)
    assert first is not None and first.token == 1 and not first.dirty
    assert store.acquire("repository:x", "run-b", 60) is None
    # The same run takes its own live lease again under the same token (its second step).
    again = store.acquire("repository:x", "run-a", 60)
    assert again is not None and again.token == first.token
    store.set_dirty(first, True)
    store.release(first)
    second = store.acquire("repository:x", "run-b", 60)
    # Released: the next holder need not wait, gets a new token, and learns a write was
    # left half done.
    assert second is not None and second.token == 2 and second.dirty
    # The old holder can neither renew nor release, nor mark it: it learns it lost it.
    assert not store.renew(first, 60) and first.lost
    with pytest.raises(LeaseLost):
        first.check(0)
    store.release(first)
    assert store.holders(["repository:x"]) == {"repository:x": ("run-b", clock.now + 60)}


@pytest.mark.parametrize("project_instance", ["sqlite", "postgres"], indirect=True)
def test_an_expired_lease_is_anyones_and_its_old_holder_stops_writing(
    project_instance: DagsterInstance,
) -> None:
    clock = Clock()
    store = _store(project_instance, clock)
    old = store.acquire("repository:y", "run-a", 60)
    assert old is not None
    old.clock = clock
    old.check(30)  # 60 s left
    clock.now += 31
    with pytest.raises(LeaseLost, match="29 s left"):
        old.check(30)  # too little left to start a request that may take 30 s
    clock.now += 30
    new = store.acquire("repository:y", "run-b", 60)
    assert new is not None and new.token == old.token + 1
    assert not store.renew(old, 60)
    with pytest.raises(LeaseLost):
        store.set_dirty(old, True)
    assert not new.dirty  # the old holder's late mark did not land


_RACER = textwrap.dedent(
    """
    import sys, time
    from dagster import DagsterInstance, DagsterRun, DagsterRunStatus
    from gitlab_es_pipeline.runs.claims import leases_of
    instance = DagsterInstance.get()
    store, _ = leases_of(instance)
    start = float(sys.argv[2])
    while time.time() < start:
        time.sleep(0.001)
    won = []
    for i in range(int(sys.argv[3])):
        lease = store.acquire(f"repository:r{i}", sys.argv[1], 600)
        if lease is not None:
            won.append(f"r{i}:{lease.token}")
    print(" ".join(won))
    """
)


@pytest.mark.parametrize("project_instance", ["sqlite", "postgres"], indirect=True)
def test_processes_racing_for_the_same_repositories_never_both_win(
    project_instance: DagsterInstance,
) -> None:
    racers, repositories = 4, 30
    start = time.time() + 3
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, f"run-{n}", str(start), str(repositories)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for n in range(racers)
    ]
    won: dict[str, list[str]] = {}
    for n, child in enumerate(children):
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        for item in out.split():
            won.setdefault(item.split(":")[0], []).append(f"run-{n}")
    # Each repository has exactly one winner, and the database agrees on who.
    assert sorted(won) == sorted(f"r{i}" for i in range(repositories))
    assert all(len(holders) == 1 for holders in won.values()), won
    store, _ = leases_of(project_instance)
    held = store.holders([f"repository:r{i}" for i in range(repositories)])
    assert {k.split(":")[1]: [h] for k, (h, _) in held.items()} == won


_HOLDER = textwrap.dedent(
    """
    import time
    from dagster import DagsterInstance, DagsterRun, DagsterRunStatus
    from gitlab_es_pipeline.runs.claims import leases_of
    instance = DagsterInstance.get()
    store, heartbeat = leases_of(instance)
    lease = store.acquire("repository:held", "run-killed", 3)
    heartbeat.hold(lease)
    print(lease.token, flush=True)
    time.sleep(600)
    """
)


@pytest.mark.parametrize("project_instance", ["sqlite"], indirect=True)
def test_a_live_holder_keeps_its_lease_and_a_killed_one_loses_it_within_the_lease(
    project_instance: DagsterInstance,
) -> None:
    env = {**os.environ, "LEASE_SECONDS": "3"}
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env
    )
    try:
        assert child.stdout is not None
        token = int(child.stdout.readline())
        store, _ = leases_of(project_instance)
        # Three lease periods later it still holds: its heartbeat renews it.
        time.sleep(9)
        assert store.acquire("repository:held", "run-other", 3) is None
        child.send_signal(signal.SIGKILL)
        child.wait()
        killed_at = time.monotonic()
        taken: Lease | None = None
        while taken is None and time.monotonic() - killed_at < 10:
            taken = store.acquire("repository:held", "run-other", 3)
            time.sleep(0.2)
        assert taken is not None and taken.token == token + 1
        assert time.monotonic() - killed_at <= 3.5
    finally:
        child.kill()


@pytest.mark.parametrize("project_instance", ["sqlite"], indirect=True)
def test_rows_free_for_long_are_pruned_and_a_dirty_one_is_kept(
    project_instance: DagsterInstance,
) -> None:
    clock = Clock()
    store = _store(project_instance, clock)
    for name in ("repository:clean", "repository:dirty", "repository:held"):
        lease = store.acquire(name, "run-a", 60)
        assert lease is not None
        if name == "repository:dirty":
            store.set_dirty(lease, True)
        if name != "repository:held":
            store.release(lease)
    clock.now += 30
    assert store.prune(older_than=clock.now) == 1  # the clean free one; the held one is live
    assert store.holders(["repository:held"])
    again = store.acquire("repository:dirty", "run-b", 60)
    assert again is not None and again.dirty  # what the dirty mark says is not lost


def test_a_process_stops_beating_for_a_run_once_it_finished_and_its_thread_ends(
    instance: DagsterInstance,
) -> None:
    """A process that lives on after its runs (a script's, a test's) does not keep them
    looking alive, nor a thread busy for ever."""
    store, heartbeat = leases_of(instance)
    run = instance.add_run(
        DagsterRun(
            job_name="index_repository", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED
        )
    )
    heartbeat.run_alive(run.run_id)
    lease = store.acquire("repository:z", run.run_id, lease_seconds())
    assert lease is not None
    heartbeat.hold(lease)
    time.sleep(3 * heartbeat.interval)
    name = run_name(run.run_id)
    assert heartbeat.running and store.last_beat([name])[name] > time.time()
    store.release(lease)
    instance.report_run_failed(run, "ended")
    deadline = time.monotonic() + 10 * heartbeat.interval
    while heartbeat.running and time.monotonic() < deadline:
        time.sleep(heartbeat.interval / 2)
    assert not heartbeat.running
    last = store.last_beat([name])[name]
    time.sleep(2 * heartbeat.interval)
    assert store.last_beat([name])[name] == last  # no longer renewed
