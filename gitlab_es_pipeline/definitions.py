"""The one Definitions object of the project (workspace.yaml points here)."""

import os

from dagster import Definitions

from gitlab_es_pipeline.assets import es_index, manifest_and_line_documents, repositories
from gitlab_es_pipeline.io_managers import ParquetIOManager, default_storage_url
from gitlab_es_pipeline.jobs import discover_repositories_job, index_repository_job
from gitlab_es_pipeline.resources import resources_from_env
from gitlab_es_pipeline.schedules import hourly_discovery
from gitlab_es_pipeline.sensors import head_commit_sensor

defs = Definitions(
    assets=[repositories, manifest_and_line_documents, es_index],
    jobs=[index_repository_job, discover_repositories_job],
    schedules=[hourly_discovery],
    sensors=[head_commit_sensor],
    resources={
        **resources_from_env(),
        "parquet_io_manager": ParquetIOManager(
            base_path=os.environ.get("PARQUET_STORAGE_URL") or default_storage_url()
        ),
    },
)
