"""The one Definitions object of the project (workspace.yaml points here)."""

import os

from dagster import Definitions, ExecutorDefinition, in_process_executor, multiprocess_executor

from gitlab_es_pipeline.defs.assets import es_index, manifest_and_line_documents, repositories
from gitlab_es_pipeline.defs.io_managers import ParquetIOManager, default_storage_url
from gitlab_es_pipeline.defs.jobs import (
    discover_repositories_job,
    index_repositories_job,
    index_repository_job,
)
from gitlab_es_pipeline.defs.resources import resources_from_env
from gitlab_es_pipeline.defs.schedules import hourly_discovery
from gitlab_es_pipeline.defs.sensors import head_commit_sensor

EXECUTORS = {"multiprocess": multiprocess_executor, "in_process": in_process_executor}


def executor_from_env() -> ExecutorDefinition:
    """Both steps of a run in the run's own process, unless RUN_EXECUTOR=multiprocess.

    A run's fixed cost is its processes: through the daemon, 20 small repositories cost 6.8 s
    of wall and 13.0 s of machine CPU each with a process per step, 2.8 s and 4.8 s with the
    steps in the run's process (bench/fleet.py, docs/benchmark.md); a process per step only
    buys separate memory per step, which the steps do not need (each records its peak).
    """
    choice = os.environ.get("RUN_EXECUTOR", "in_process").strip().lower() or "in_process"
    if choice not in EXECUTORS:
        raise ValueError(f"RUN_EXECUTOR must be one of {', '.join(EXECUTORS)}, not {choice!r}")
    return EXECUTORS[choice]


defs = Definitions(
    assets=[repositories, manifest_and_line_documents, es_index],
    jobs=[index_repository_job, index_repositories_job, discover_repositories_job],
    schedules=[hourly_discovery],
    sensors=[head_commit_sensor],
    executor=executor_from_env(),
    resources={
        **resources_from_env(),
        "parquet_io_manager": ParquetIOManager(
            base_path=os.environ.get("PARQUET_STORAGE_URL") or default_storage_url()
        ),
    },
)
