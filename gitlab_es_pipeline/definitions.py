"""The one Definitions object of the project (workspace.yaml points here)."""

import os

from dagster import AssetSelection, Definitions, define_asset_job

from gitlab_es_pipeline.assets import es_index, manifest_and_line_documents, repositories
from gitlab_es_pipeline.io_managers import ParquetIOManager, default_storage_url
from gitlab_es_pipeline.resources import resources_from_env

index_repository_job = define_asset_job(
    "index_repository",
    selection=AssetSelection.assets(manifest_and_line_documents, es_index),
    description="Index one repository: manifest, line documents, Elasticsearch.",
)

discover_repositories_job = define_asset_job(
    "discover_repositories",
    selection=AssetSelection.assets(repositories),
    description="List the projects in GitLab and keep one partition per repository.",
)

defs = Definitions(
    assets=[repositories, manifest_and_line_documents, es_index],
    jobs=[index_repository_job, discover_repositories_job],
    resources={
        **resources_from_env(),
        "parquet_io_manager": ParquetIOManager(
            base_path=os.environ.get("PARQUET_STORAGE_URL") or default_storage_url()
        ),
    },
)
