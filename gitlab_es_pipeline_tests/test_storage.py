"""The project's SQLite event log: Dagster's, keeping its engines, seen alike by every process.

Events are written through the instance the project's dagster.yaml makes, then read back by
Dagster's own SQLite storage in another process: what one writes, the other reads, event for
event, across more run databases than the engines kept. The engines are counted on
SQLAlchemy's own, whoever made them: exactly one per database file shows that Dagster's code
goes through the kept-engine override (gitlab_es_pipeline/instance/storage.py, "Dagster's private API").
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dagster import AssetKey, AssetMaterialization, DagsterInstance, DagsterRun, RunsFilter
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.storage.event_log import SqliteEventLogStorage
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

import gitlab_es_pipeline.instance.storage
from gitlab_es_pipeline.instance.storage import EngineKeepingSqliteEventLogStorage

KEPT = EngineKeepingSqliteEventLogStorage._ENGINES_KEPT
RUNS = 12  # more than the engines kept (8): engines are dropped and made again
EVENTS_PER_RUN = 5

# Another process: the project's instance as a run's process builds it (DAGSTER_HOME), and
# Dagster's own SQLite storage over the same files (argv[1]) reading every materialization.
READ_WITH_DAGSTERS_OWN = """
import json, sys
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance
from dagster._core.storage.event_log import SqliteEventLogStorage
project = DagsterInstance.get()
instance = DagsterInstance.from_config(sys.argv[1])
storage = instance.event_log_storage
assert type(storage) is SqliteEventLogStorage, type(storage)
records = instance.fetch_materializations(
    AssetRecordsFilter(asset_key=AssetKey("es_index")), limit=1000
).records
print(json.dumps({
    "project_event_log": type(project.event_log_storage).__name__,
    "project_base_dir": project.event_log_storage._base_dir,
    "stock_base_dir": storage._base_dir,
    "read": sorted((r.run_id, r.partition_key) for r in records),
}))
"""


@contextmanager
def engines_connecting(folder: str) -> Iterator[dict[str, list[Engine]]]:
    """Every SQLAlchemy engine that connects to a database file in folder, by file name, in
    the order they first connect; whoever made them (the override, or Dagster's own code)."""
    engines: dict[str, list[Engine]] = defaultdict(list)
    folder_path = Path(folder).resolve()

    def connected(conn: Connection) -> None:
        engine = conn.engine
        path = Path(engine.url.database or "").resolve()
        if path.parent == folder_path and all(e is not engine for e in engines[path.name]):
            engines[path.name].append(engine)  # held: an id is never reused while counting

    event.listen(Engine, "engine_connect", connected)
    try:
        yield engines
    finally:
        event.remove(Engine, "engine_connect", connected)


def _made(engines: dict[str, list[Engine]]) -> dict[str, int]:
    return {name: len(made) for name, made in engines.items()}


def _write_runs(instance: DagsterInstance, runs: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Runs of EVENTS_PER_RUN materializations each (a run shard and the index written)."""
    run_ids: list[str] = []
    written: list[tuple[str, str]] = []
    for _ in range(runs):
        run = instance.add_run(DagsterRun(job_name="index_repositories", run_id=str(uuid.uuid4())))
        run_ids.append(run.run_id)
        for i in range(EVENTS_PER_RUN):
            key = f"group/project{len(written):03d}"
            event_ = DagsterEvent(
                DagsterEventType.ASSET_MATERIALIZATION.value,
                run.job_name,
                event_specific_data=StepMaterializationData(
                    AssetMaterialization(AssetKey("es_index"), partition=key, metadata={"n": i})
                ),
                step_key="index_batch",
            )
            instance.report_dagster_event(event_, run.run_id)
            written.append((run.run_id, key))
    return run_ids, written


@pytest.mark.parametrize("project_instance", ["sqlite"], indirect=True)
def test_events_written_with_kept_engines_are_what_dagsters_own_storage_reads(
    project_instance: DagsterInstance, tmp_path: Path
) -> None:
    storage = project_instance.event_log_storage
    # dagster.yaml's storage puts the kept-engine event log in place of Dagster's own, and a
    # run's process, rebuilding the instance from its reference, gets it too.
    assert type(storage) is EngineKeepingSqliteEventLogStorage
    with DagsterInstance.from_ref(project_instance.get_ref()) as rebuilt:
        assert type(rebuilt.event_log_storage) is EngineKeepingSqliteEventLogStorage
    with engines_connecting(storage._base_dir) as engines:
        run_ids, written = _write_runs(project_instance, RUNS)
        # Exactly one engine for each database written, each run's and the cross-run index:
        # Dagster's code went through the override for every connection (Dagster's own
        # _connect makes an engine per connection: see the next test).
        assert _made(engines) == {"index.db": 1, **{f"{run_id}.db": 1 for run_id in run_ids}}
        assert storage._engines["index"] is engines["index.db"][0]
        # The engines of the index and of the last KEPT - 1 runs written are kept; the others
        # were dropped.
        assert len(storage._engines) == KEPT
        assert set(storage._engines) == {"index", *run_ids[-(KEPT - 1) :]}
        dropped = run_ids[: RUNS - (KEPT - 1)]
        runs = project_instance.get_runs(RunsFilter(job_name="index_repositories"))
        assert {run.run_id for run in runs} == set(run_ids)
        # This process reads each run's events back, the last written first: a new engine for
        # each run whose engine was dropped, and none for the others.
        for run_id in reversed(run_ids):
            logged = project_instance.all_logs(
                run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
            )
            assert len(logged) == EVENTS_PER_RUN
        assert _made(engines) == {
            "index.db": 1,
            **{f"{run_id}.db": 1 for run_id in run_ids},
            **{f"{run_id}.db": 2 for run_id in dropped},
        }
        assert len(storage._engines) == KEPT
    # Another process, on Dagster's own SQLite storage over the same files, reads them all; and
    # the project's instance there has the kept-engine event log over those same files.
    home = Path(os.environ["DAGSTER_HOME"])
    stock = tmp_path / "stock_home"
    stock.mkdir()
    (stock / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {home}\n")
    read = subprocess.run(
        [sys.executable, "-c", READ_WITH_DAGSTERS_OWN, str(stock)],
        capture_output=True,
        text=True,
        env={**os.environ, "DAGSTER_HOME": str(home)},
        check=True,
    )
    seen = json.loads(read.stdout)
    assert seen["project_event_log"] == EngineKeepingSqliteEventLogStorage.__name__
    assert seen["project_base_dir"] == seen["stock_base_dir"] == storage._base_dir
    assert [tuple(x) for x in seen["read"]] == sorted(written)


@pytest.mark.parametrize("project_instance", ["sqlite"], indirect=True)
def test_the_engine_count_shows_an_override_dagster_no_longer_calls(
    project_instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the test above would see if Dagster renamed _connect or stopped calling it: its
    own method in place of the override, an engine per connection and none kept."""
    storage = project_instance.event_log_storage
    assert isinstance(storage, EngineKeepingSqliteEventLogStorage)
    monkeypatch.setattr(
        EngineKeepingSqliteEventLogStorage, "_connect", SqliteEventLogStorage._connect
    )
    with engines_connecting(storage._base_dir) as engines:
        run_ids, _ = _write_runs(project_instance, 2)
    made = _made(engines)
    assert all(made[f"{run_id}.db"] >= EVENTS_PER_RUN for run_id in run_ids), made
    assert made["index.db"] >= 2 * EVENTS_PER_RUN, made
    assert not storage._engines


def test_dagsters_private_api_is_used_in_one_section_of_storage_py() -> None:
    """Every dagster._* import, every name it brings and every private attribute is between
    the two banners of the section "Dagster's private API"."""
    source = Path(gitlab_es_pipeline.instance.storage.__file__).read_text()
    lines = source.splitlines()
    start = lines.index(next(x for x in lines if x.startswith("# == Dagster's private API")))
    end = lines.index(next(x for x in lines if x.startswith("# == end of Dagster's private")))
    tree = ast.parse(source)
    private_names = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dagster._")
        for alias in node.names
    }
    assert {"SqliteEventLogStorage", "DagsterSqliteStorage"} <= private_names
    ours = {"_engines", "_engine", "_ENGINES_KEPT"}
    uses = [
        node
        for node in ast.walk(tree)
        if (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dagster._"))
        or (isinstance(node, ast.Name) and node.id in private_names)
        or (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and node.attr not in ours
        )
    ]
    assert uses
    outside = [ast.unparse(n) for n in uses if not start < n.lineno - 1 < end]
    assert outside == []
