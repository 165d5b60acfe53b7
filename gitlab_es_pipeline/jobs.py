"""The two jobs: index one repository, discover the fleet."""

from dagster import AssetKey, AssetSelection, define_asset_job

index_repository_job = define_asset_job(
    "index_repository",
    selection=AssetSelection.assets(
        AssetKey("file_manifest"), AssetKey("line_documents"), AssetKey("es_index")
    ),
    description="Index one repository: manifest, line documents, Elasticsearch. Run config "
    "`ops: {manifest_and_line_documents: {config: {full_refresh: true}}}` rebuilds it from "
    "scratch.",
)

discover_repositories_job = define_asset_job(
    "discover_repositories",
    selection=AssetSelection.assets(AssetKey("repositories")),
    description="List the projects in GitLab and keep one partition per repository.",
)
