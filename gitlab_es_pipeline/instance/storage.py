"""Dagster storage chosen by the environment: PostgreSQL when configured, else SQLite.

dagster.yaml cannot choose between storages by itself, so it names this class as a custom
storage. With DAGSTER_PG_URL, or DAGSTER_PG_HOST (+ DAGSTER_PG_PORT, DAGSTER_PG_USER,
DAGSTER_PG_PASSWORD, DAGSTER_PG_DB), runs, event logs and schedules go to PostgreSQL through
dagster-postgres; otherwise to Dagster's embedded SQLite files under DAGSTER_HOME.

Everything this module takes from Dagster's private API (``dagster._*`` names, private
attributes and methods) is in one section below, "Dagster's private API", and nowhere else;
test_storage.py fails when what the section relies on changes.
"""

import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

from dagster import Field, StringSource
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool


def postgres_url_from_env(env: Mapping[str, str] = os.environ) -> str | None:
    """The PostgreSQL URL the environment asks for, or None for SQLite."""
    if env.get("DAGSTER_PG_URL"):
        return env["DAGSTER_PG_URL"]
    host = env.get("DAGSTER_PG_HOST")
    if not host:
        return None
    user = quote(env.get("DAGSTER_PG_USER", "dagster"), safe="")
    password = env.get("DAGSTER_PG_PASSWORD")
    credentials = f"{user}:{quote(password, safe='')}" if password else user
    port = env.get("DAGSTER_PG_PORT", "5432")
    database = quote(env.get("DAGSTER_PG_DB", "dagster"), safe="")
    return f"postgresql://{credentials}@{quote(host, safe='')}:{port}/{database}"


def with_psycopg2_driver(url: str) -> str:
    """dagster-postgres ships psycopg2; newer SQLAlchemy would pick psycopg 3 for postgresql://."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg2://{rest}"
    return url


# == Dagster's private API ==================================================================
# The only place in this module that uses it; Dagster's exact version is the one pinned in
# constraints.txt, which CI and the image install with. What is relied on, and the test of
# test_storage.py that fails when it changes:
#
# - DagsterStorage, ConfigurableClass(Data): a custom `storage:` class of dagster.yaml must be
#   both. Test: the instance of the project's dagster.yaml has our storages, in this process
#   and in another (as a run's process builds it).
# - DagsterSqliteStorage.from_local, _event_logs_directory and the storage's private
#   _event_log_storage attribute: Dagster's SQLite storage with the kept-engine event log in
#   place of its own, over the same directory. Test: instance.event_log_storage is
#   EngineKeepingSqliteEventLogStorage, its base directory Dagster's own, and Dagster's own
#   SQLite storage, in another process, reads every event it wrote.
# - SqliteEventLogStorage._connect(shard), the one method overridden, and what the override
#   uses as Dagster's does (_db_lock, _initialized_dbs, _initdb, conn_string_for_shard,
#   SQLITE_BUSY_TIMEOUT_SECONDS): every read and write of a run's or the index's database goes
#   through _connect. Test: writing many events makes exactly one SQLAlchemy engine per
#   database file, counted on SQLAlchemy's engines whoever made them; an override Dagster no
#   longer calls shows as one engine per connection, as Dagster's own _connect makes.
from dagster._core.storage.base_storage import DagsterStorage  # noqa: E402
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (  # noqa: E402
    SqliteEventLogStorage,
)
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS  # noqa: E402
from dagster._core.storage.sqlite_storage import (  # noqa: E402
    DagsterSqliteStorage,
    _event_logs_directory,
)
from dagster._serdes import ConfigurableClass, ConfigurableClassData  # noqa: E402


class EnvironmentSelectedStorage(DagsterStorage, ConfigurableClass):
    """Not a storage itself: from_config_value returns the storage the environment selects."""

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"sqlite_base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(  # type: ignore[override]  # another class by design, not Self
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> DagsterStorage:
        url = postgres_url_from_env()
        if url:
            url = with_psycopg2_driver(url)
            from dagster_postgres import DagsterPostgresStorage

            return DagsterPostgresStorage(postgres_url=url, inst_data=inst_data)
        base_dir = config_value.get("sqlite_base_dir") or os.environ.get("DAGSTER_HOME")
        if not base_dir:
            raise ValueError("set DAGSTER_HOME (or sqlite_base_dir) for the SQLite storage")
        return sqlite_storage_keeping_engines(base_dir, inst_data)

    @property
    def inst_data(self) -> ConfigurableClassData | None:  # pragma: no cover - never instantiated
        return None


def sqlite_storage_keeping_engines(
    base_dir: str, inst_data: ConfigurableClassData | None = None
) -> DagsterStorage:
    """Dagster's SQLite storage under base_dir, its event log keeping engines."""
    storage = DagsterSqliteStorage.from_local(base_dir, inst_data=inst_data)
    storage._event_log_storage = EngineKeepingSqliteEventLogStorage(_event_logs_directory(base_dir))
    return storage


class EngineKeepingSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's SQLite event log, keeping each database's SQLAlchemy engine between uses.

    Dagster's makes a new engine for every connection and drops it after, and with it the
    statements it compiled; each event written (a batch writes about ten per repository)
    paid for both. Here the engine of each recently used database is kept, so statements are
    compiled once. Connections still open and close with each use (NullPool), under the same
    lock and busy timeout as Dagster's: what other processes see does not change.
    """

    _ENGINES_KEPT = 8  # the cross-run index and the few runs this process writes or reads

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self._engines: OrderedDict[str, Engine] = OrderedDict()  # before Dagster's set-up uses it
        super().__init__(base_dir, inst_data)

    def _engine(self, shard: str) -> Engine:
        engine = self._engines.pop(shard, None)
        if engine is None:
            engine = create_engine(
                self.conn_string_for_shard(shard),
                poolclass=NullPool,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
            )
        self._engines[shard] = engine
        while len(self._engines) > self._ENGINES_KEPT:
            self._engines.popitem(last=False)[1].dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:  # Dagster's, overridden
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn


# == end of Dagster's private API ===========================================================
