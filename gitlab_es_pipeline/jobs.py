"""The two jobs: index one repository, discover the fleet."""

from dagster import AssetSelection, define_asset_job

from gitlab_es_pipeline.asset_keys import ES_INDEX, FILE_MANIFEST, LINE_DOCUMENTS, REPOSITORIES

index_repository_job = define_asset_job(
    "index_repository",
    selection=AssetSelection.assets(FILE_MANIFEST, LINE_DOCUMENTS, ES_INDEX),
    description="Index one repository: manifest, line documents, Elasticsearch. Run config "
    "`ops: {manifest_and_line_documents: {config: {full_refresh: true}}}` rebuilds it from "
    "scratch.",
)

discover_repositories_job = define_asset_job(
    "discover_repositories",
    selection=AssetSelection.assets(REPOSITORIES),
    description="List the projects in GitLab and keep one partition per repository.",
)
