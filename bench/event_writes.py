"""What one event write costs on Dagster's SQLite storage, Dagster's own and the project's.

    .venv/bin/python bench/event_writes.py [--events 600]

A batch or a backfill's range run records about ten events per repository (claims,
materializations, check results, one log message); on SQLite their writes were most of a
small repository's cost. Each way writes the same events into a fresh DAGSTER_HOME: a run's
planned materializations, materializations and check evaluations of distinct partitions, as
a batch does, through `DagsterInstance.report_dagster_event`. Prints milliseconds per event
for both, side by side, and the ratio.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

if TYPE_CHECKING:
    from dagster import DagsterInstance


def _instance(home: Path, kept: bool) -> DagsterInstance:
    """An instance on Dagster's SQLite storage, or (kept) on the project's dagster.yaml."""
    from dagster import DagsterInstance

    if kept:
        (home / "dagster.yaml").write_text((HERE.parent / "dagster.yaml").read_text())
    else:
        (home / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {home}\n")
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ.pop("DAGSTER_PG_URL", None)
    os.environ.pop("DAGSTER_PG_HOST", None)
    return DagsterInstance.from_config(str(home))


def _write(kept: bool, events: int) -> tuple[float, float, type]:
    from dagster import AssetCheckEvaluation, AssetKey, AssetMaterialization, DagsterRun
    from dagster._core.events import (
        AssetMaterializationPlannedData,
        DagsterEvent,
        DagsterEventType,
        StepMaterializationData,
    )

    with tempfile.TemporaryDirectory(prefix="event-writes-") as folder:
        instance = _instance(Path(folder), kept)
        run = instance.add_run(DagsterRun(job_name="index_repositories", run_id=str(uuid.uuid4())))
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        for i in range(events // 3):
            key = f"group/project{i:05d}"
            asset = AssetKey("es_index")
            planned = DagsterEvent.build_asset_materialization_planned_event(
                run.job_name, "index_batch", AssetMaterializationPlannedData(asset, partition=key)
            )
            materialized = DagsterEvent(
                DagsterEventType.ASSET_MATERIALIZATION.value,
                run.job_name,
                event_specific_data=StepMaterializationData(
                    AssetMaterialization(asset, partition=key, metadata={"documents": i})
                ),
                step_key="index_batch",
            )
            checked = DagsterEvent(
                DagsterEventType.ASSET_CHECK_EVALUATION.value,
                run.job_name,
                event_specific_data=AssetCheckEvaluation(
                    asset_key=asset, check_name="document_count", passed=True, partition=key
                ),
                step_key="index_batch",
            )
            for event in (planned, materialized, checked):
                instance.report_dagster_event(event, run.run_id)
        wall = time.perf_counter() - started
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
        kind = type(instance.event_log_storage)
        instance.dispose()
    return wall, cpu, kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=600)
    args = parser.parse_args()
    _write(False, 30)  # imports and first-use costs, outside the measurement
    rows = []
    for kept in (False, True, False, True):
        wall, cpu, kind = _write(kept, args.events)
        rows.append((kind.__name__, wall, cpu))
    print(f"\n{'event log storage':<40} {'wall ms/event':>14} {'CPU ms/event':>13}")
    n = args.events // 3 * 3
    for name, wall, cpu in rows:
        print(f"{name:<40} {1000 * wall / n:>14.2f} {1000 * cpu / n:>13.2f}")
    stock_wall = sum(r[1] for r in rows[0::2])
    kept_wall = sum(r[1] for r in rows[1::2])
    print(f"\nwall, Dagster's / the project's: {stock_wall / kept_wall:.2f}")


if __name__ == "__main__":
    main()
