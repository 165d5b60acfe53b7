"""One writer per repository: leases with fencing tokens, in the instance's own database.

A lease is a row of `gitlab_es_pipeline_leases` in the database of Dagster's run storage
(SQLite's runs.db, or the PostgreSQL database of dagster-postgres), so it lives and is backed
up with the rest of the pipeline's state. It is taken by one compare-and-set statement: the
row is free, expired, or already this holder's. Each time it changes hands its `token` grows
by one (the fencing token); renewals and releases name the token, so a holder that lost its
lease can neither renew nor release it, and learns that it lost it.

A holder writes to the index only while its lease has at least `margin` seconds left, which
is more than one Elasticsearch request may take: a request started under the lease ends
before anyone else can take it. A process renews what it holds from a thread
(`Heartbeat`), so a lease outlives any pause of the work but not the process: killed, it
frees its repositories within `ttl` seconds.

`dirty` says that a write to the index began under some token and no state was recorded
after it: whoever takes the lease next cannot trust an incremental base, and rebuilds.

Rows named `run:<run id>` are heartbeats of run processes (no token rules): the sensor reads
them to tell a run whose process died from one that is only slow.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

_METADATA = sa.MetaData()
LEASES = sa.Table(
    "gitlab_es_pipeline_leases",
    _METADATA,
    sa.Column("name", sa.String(512), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=True),
    sa.Column("token", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("dirty", sa.Integer, nullable=False, server_default="0"),
)

# The partition that last wrote each project's documents. Two partitions can name one project
# (renamed away and back before discovery saw it): an indexed manifest is a base for the next
# incremental run only while no other partition has written the project since.
WRITERS = sa.Table(
    "gitlab_es_pipeline_project_writers",
    _METADATA,
    sa.Column("project_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("partition", sa.Text, nullable=False),
    sa.Column("writes", sa.BigInteger, nullable=False),  # grows by one at each write
)

Connect = Callable[[], AbstractContextManager[Connection]]


def lease_seconds() -> float:
    """How long a lease lasts without renewal: how soon a dead run's repositories are free."""
    return float(os.environ.get("LEASE_SECONDS", 300))


def write_margin_seconds() -> float:
    """What a write needs left of its lease: more than one Elasticsearch request may take
    (ElasticsearchResource.request_timeout_seconds, 120 s by default), so that no request of
    a holder that lost its lease can land after the next holder began; half the lease at most.
    """
    return min(150.0, lease_seconds() / 2)


class LeaseLost(Exception):
    """The lease ended (not renewed in time, or taken over): the holder must stop writing."""


@dataclass(eq=False)  # one object per taking: hashed by identity
class Lease:
    name: str
    holder: str
    token: int
    expires_at: float
    dirty: bool  # a write was left unsettled by an earlier holder (or this one)
    lost: bool = False
    clock: Callable[[], float] = field(default=time.time, repr=False)

    def check(self, margin: float) -> None:
        """Raise unless the lease has `margin` seconds left: the fence before each write."""
        left = self.expires_at - self.clock()
        if self.lost or left < margin:
            state = "was lost" if self.lost else f"has {max(left, 0):.0f} s left (< {margin:.0f})"
            raise LeaseLost(
                f"{self.name}: this run's lease (token {self.token}) {state}; "
                "stopping before it writes anything more"
            )


class LeaseStore:
    """Compare-and-set leases over one SQL database (see the module's docstring)."""

    def __init__(self, connect: Connect, clock: Callable[[], float] = time.time) -> None:
        self._connect = connect
        self._clock = clock
        self._ready = False

    def _execute(self, statement: sa.sql.Executable) -> int:
        """A change; the number of rows it changed."""
        if not self._ready:
            self._create_table()
        with self._connect() as conn:
            return int(conn.execute(statement).rowcount or 0)

    def _select(self, statement: sa.sql.Executable) -> list[sa.Row]:
        if not self._ready:
            self._create_table()
        with self._connect() as conn:
            return list(conn.execute(statement))

    def _create_table(self) -> None:
        for table in (LEASES, WRITERS):
            try:
                with self._connect() as conn:
                    table.create(conn, checkfirst=True)
            except (OperationalError, ProgrammingError, IntegrityError):
                # Another process created it between the check and the create.
                with self._connect() as conn:
                    if not sa.inspect(conn).has_table(table.name):
                        raise
        self._ready = True

    def last_writer(self, project_id: int) -> tuple[str, int]:
        """The partition that last wrote the project's documents, and the project's count of
        writes; ("", 0) before any."""
        c = WRITERS.c
        rows = self._select(sa.select(c.partition, c.writes).where(c.project_id == project_id))
        return (str(rows[0].partition), int(rows[0].writes)) if rows else ("", 0)

    def note_writer(self, project_id: int, partition: str) -> None:
        """Before a write of the project's documents (under the project's lease)."""
        c = WRITERS.c
        bump = sa.update(WRITERS).where(c.project_id == project_id)
        if self._execute(bump.values(partition=partition, writes=c.writes + 1)) == 0:
            try:
                self._execute(
                    sa.insert(WRITERS).values(project_id=project_id, partition=partition, writes=1)
                )
            except IntegrityError:  # inserted in between: by a holder of the lease before us
                self._execute(bump.values(partition=partition, writes=c.writes + 1))

    def acquire(self, name: str, holder: str, ttl: float) -> Lease | None:
        """The lease, if it is free, expired or already this holder's; else None.

        A holder that takes its own live lease again keeps the token (a run's second step);
        any other taking is a new token.
        """
        now = self._clock()
        c = LEASES.c
        kept = sa.and_(c.holder == holder, c.expires_at >= now)
        taken = self._execute(
            sa.update(LEASES)
            .where(c.name == name, sa.or_(c.holder.is_(None), c.expires_at < now, kept))
            .values(
                holder=holder,
                token=sa.case((kept, c.token), else_=c.token + 1),
                expires_at=now + ttl,
            )
        )
        if taken == 0:
            try:
                self._execute(
                    sa.insert(LEASES).values(
                        name=name, holder=holder, token=1, expires_at=now + ttl, dirty=0
                    )
                )
            except IntegrityError:
                return None  # the row exists and someone else holds it
        rows = self._select(
            sa.select(c.token, c.expires_at, c.dirty).where(c.name == name, c.holder == holder)
        )
        if not rows:  # taken from us between the two statements
            return None
        row = rows[0]
        return Lease(name, holder, int(row.token), float(row.expires_at), bool(row.dirty))

    def _fenced(self, lease: Lease) -> sa.ColumnElement[bool]:
        c = LEASES.c
        return sa.and_(c.name == lease.name, c.holder == lease.holder, c.token == lease.token)

    def renew(self, lease: Lease, ttl: float) -> bool:
        """Extend the lease; False (and the lease marked lost) if it is no longer ours."""
        now = self._clock()
        if lease.lost or lease.expires_at < now:
            lease.lost = True
            return False
        result = self._execute(
            sa.update(LEASES)
            .where(self._fenced(lease), LEASES.c.expires_at >= now)
            .values(expires_at=now + ttl)
        )
        if result == 0:
            lease.lost = True
            return False
        lease.expires_at = now + ttl
        return True

    def set_dirty(self, lease: Lease, dirty: bool) -> None:
        """Before the first write (True), after the state is recorded (False); fenced."""
        result = self._execute(
            sa.update(LEASES).where(self._fenced(lease)).values(dirty=int(dirty))
        )
        if result == 0:
            lease.lost = True
            raise LeaseLost(f"{lease.name}: lease (token {lease.token}) taken over")
        lease.dirty = dirty

    def release(self, lease: Lease) -> None:
        """Free it now (a no-op if it was lost): the next holder need not wait for expiry."""
        self._execute(
            sa.update(LEASES).where(self._fenced(lease)).values(holder=None, expires_at=0.0)
        )
        lease.lost = True

    def holders(self, names: list[str]) -> dict[str, tuple[str, float]]:
        """name -> (holder, expires_at) of the live leases among these names."""
        now = self._clock()
        found: dict[str, tuple[str, float]] = {}
        for start in range(0, len(names), 500):
            rows = self._select(
                sa.select(LEASES.c.name, LEASES.c.holder, LEASES.c.expires_at).where(
                    LEASES.c.name.in_(names[start : start + 500]),
                    LEASES.c.holder.is_not(None),
                    LEASES.c.expires_at >= now,
                )
            )
            found.update({r.name: (r.holder, float(r.expires_at)) for r in rows})
        return found

    def beat(self, name: str, holder: str, ttl: float) -> None:
        """A heartbeat row (no token rules): this holder is alive for ttl more seconds."""
        now = self._clock()
        updated = self._execute(
            sa.update(LEASES)
            .where(LEASES.c.name == name)
            .values(holder=holder, expires_at=now + ttl)
        )
        if updated == 0:
            with suppress(IntegrityError):  # written by another thread of the run just now
                self._execute(
                    sa.insert(LEASES).values(
                        name=name, holder=holder, token=0, expires_at=now + ttl, dirty=0
                    )
                )

    def last_beat(self, names: list[str]) -> dict[str, float]:
        """name -> expires_at of these heartbeat rows, live or not."""
        return {name: expires for name, (_, expires) in self.beats(names).items()}

    def beats(self, names: list[str]) -> dict[str, tuple[str, float]]:
        """name -> (holder, expires_at) of these heartbeat rows, live or not."""
        found: dict[str, tuple[str, float]] = {}
        for start in range(0, len(names), 500):
            rows = self._select(
                sa.select(LEASES.c.name, LEASES.c.holder, LEASES.c.expires_at).where(
                    LEASES.c.name.in_(names[start : start + 500])
                )
            )
            found.update({r.name: (str(r.holder), float(r.expires_at)) for r in rows})
        return found

    def prune(self, older_than: float) -> int:
        """Drop free or long-expired rows that carry nothing: not dirty, not a token to keep
        growing (a freed row's token restarts at 1, which is safe once nobody holds it)."""
        return self._execute(
            sa.delete(LEASES).where(LEASES.c.expires_at < older_than, LEASES.c.dirty == 0)
        )


class Heartbeat:
    """Renews, from one daemon thread, every lease and heartbeat row this process holds.

    Started by the first lease a run takes. A killed run's process stops renewing, which is
    the point: its leases expire. A run that finished (`finished` says so) is no longer beaten
    for, and the thread ends when nothing is left to renew: a process that lives on after its
    runs (a script's or a test's `materialize`) does not beat for them for ever.
    """

    def __init__(
        self,
        store: LeaseStore,
        ttl: float,
        finished: Callable[[str], bool] = lambda run_id: False,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._finished = finished
        self.steps_only = os.environ.get("RUN_EXECUTOR", "").strip().lower() == "multiprocess"
        # Until released or lost: a manifest step's lease is renewed until its run's es_index
        # step takes it over.
        self._leases: set[Lease] = set()
        self._runs: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _beat_holder(self, run_id: str) -> str:
        """The run's id, marked when the run's steps run in processes of their own: then no
        process beats between two steps (a step retry's wait, a wait for a pool slot), and the
        sensor allows for it (runs/claims.py, fail_dead_runs)."""
        return f"{STEPS_ONLY}{run_id}" if self.steps_only else run_id

    @property
    def interval(self) -> float:
        return max(self._ttl / 10, 0.05)

    def hold(self, lease: Lease) -> None:
        with self._lock:
            self._leases.add(lease)
            self._start()

    def run_alive(self, run_id: str) -> None:
        """This process works for the run: say so now and every interval until it finishes."""
        self._store.beat(run_name(run_id), self._beat_holder(run_id), self._ttl)
        with self._lock:
            self._runs.add(run_id)
            self._start()

    def _start(self) -> None:
        """Under the lock: the loop decides to end under it too, so nothing added is missed."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lease-heartbeat", daemon=True)
            self._thread.start()

    def beat_once(self) -> None:
        with self._lock:
            self._leases = {lease for lease in self._leases if not lease.lost}
            leases = list(self._leases)
            runs = list(self._runs)
        for lease in leases:
            if self._finished(lease.holder):
                # Its run ended without letting go (Dagster stopped the step's generator
                # before its release ran): free it now, not when the process ends.
                self._store.release(lease)
            else:
                self._store.renew(lease, self._ttl)
        for run_id in runs:
            if self._finished(run_id):
                with self._lock:
                    self._runs.discard(run_id)
            else:
                self._store.beat(run_name(run_id), self._beat_holder(run_id), self._ttl)

    def _loop(self) -> None:
        failing_since: float | None = None
        while True:
            time.sleep(self.interval)
            try:
                self.beat_once()
                failing_since = None
            except Exception:  # the database away for a moment: the next beat tries again
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > 2 * self._ttl:
                    with self._lock:  # gone for good (its instance disposed): all expired
                        self._leases.clear()
                        self._runs.clear()
            with self._lock:
                if not self._leases and not self._runs:
                    self._thread = None
                    return

    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None


STEPS_ONLY = "steps-only:"  # a heartbeat holder whose run's steps each have a process


def run_name(run_id: str) -> str:
    return f"run:{run_id}"


def repository_name(partition: str) -> str:
    return f"repository:{partition}"


def project_name(project_id: int) -> str:
    return f"project:{project_id}"
