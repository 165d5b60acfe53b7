"""The project's SQLite event log: Dagster's, keeping its engines, seen alike by every process.

Events are written through the instance the project's dagster.yaml makes, then read back by
Dagster's own SQLite storage in another process: what one writes, the other reads, event for
event, across more run databases than the engines kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from dagster import AssetKey, AssetMaterialization, DagsterInstance, DagsterRun, RunsFilter
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData

from gitlab_es_pipeline.storage import EngineKeepingSqliteEventLogStorage

RUNS = 12  # more than the engines kept (8): engines are dropped and made again
EVENTS_PER_RUN = 5

READ_WITH_DAGSTERS_OWN = """
import json, sys
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance
from dagster._core.storage.event_log import SqliteEventLogStorage
instance = DagsterInstance.from_config(sys.argv[1])
storage = instance.event_log_storage
assert type(storage) is SqliteEventLogStorage, type(storage)
records = instance.fetch_materializations(
    AssetRecordsFilter(asset_key=AssetKey("es_index")), limit=1000
).records
print(json.dumps(sorted((r.run_id, r.partition_key) for r in records)))
"""


@pytest.mark.parametrize("project_instance", ["sqlite"], indirect=True)
def test_events_written_with_kept_engines_are_what_dagsters_own_storage_reads(
    project_instance: DagsterInstance, tmp_path: Path
) -> None:
    storage = project_instance.event_log_storage
    assert isinstance(storage, EngineKeepingSqliteEventLogStorage)
    written = []
    for _ in range(RUNS):
        run = project_instance.add_run(
            DagsterRun(job_name="index_repositories", run_id=str(uuid.uuid4()))
        )
        for i in range(EVENTS_PER_RUN):
            key = f"group/project{len(written):03d}"
            event = DagsterEvent(
                DagsterEventType.ASSET_MATERIALIZATION.value,
                run.job_name,
                event_specific_data=StepMaterializationData(
                    AssetMaterialization(AssetKey("es_index"), partition=key, metadata={"n": i})
                ),
                step_key="index_batch",
            )
            project_instance.report_dagster_event(event, run.run_id)
            written.append((run.run_id, key))
    assert len(storage._engines) <= EngineKeepingSqliteEventLogStorage._ENGINES_KEPT
    # This process reads each run's events back, from databases whose engines were dropped.
    for run in project_instance.get_runs(RunsFilter(job_name="index_repositories")):
        logged = project_instance.all_logs(
            run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
        )
        assert len(logged) == EVENTS_PER_RUN
    # Another process, on Dagster's own SQLite storage over the same files, reads them all.
    home = Path(os.environ["DAGSTER_HOME"])
    stock = tmp_path / "stock_home"
    stock.mkdir()
    (stock / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {home}\n")
    read = subprocess.run(
        [sys.executable, "-c", READ_WITH_DAGSTERS_OWN, str(stock)],
        capture_output=True,
        text=True,
        env={**os.environ, "DAGSTER_HOME": str(stock)},
        check=True,
    )
    assert [tuple(x) for x in json.loads(read.stdout)] == sorted(written)
