"""The jobs: index one repository, index many small ones (a batch), discover the fleet."""

import hashlib
from collections.abc import Mapping
from typing import Any

from dagster import (
    AssetSelection,
    Config,
    DagsterRun,
    DagsterRunStatus,
    OpExecutionContext,
    ResourceParam,
    define_asset_job,
    job,
    op,
)
from pydantic import Field

from gitlab_es_pipeline.defs.asset_keys import ES_INDEX, FILE_MANIFEST, LINE_DOCUMENTS, REPOSITORIES
from gitlab_es_pipeline.defs.io_managers import ParquetStore
from gitlab_es_pipeline.defs.pools import GITLAB_POOL
from gitlab_es_pipeline.defs.resources import (
    ElasticsearchResource,
    GitLabResource,
    IndexingResource,
)
from gitlab_es_pipeline.runs.claims import BATCH_TAG, BATCH_TAG_VALUE
from gitlab_es_pipeline.runs.many import Services, index_each

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


BATCH_OP = "index_batch"


class BatchConfig(Config):
    repositories: dict[str, str] = Field(
        description="The repositories (partition keys) to index, each with the HEAD commit "
        "it had when the run was asked for (the run indexes HEAD as it is when it gets there)."
    )
    full_refresh: bool = Field(
        default=False, description="Rebuild each repository's documents from scratch."
    )


@op(
    name=BATCH_OP,
    pool=GITLAB_POOL,
    description="Index each of the configured repositories as its own run would, recording "
    "each one's materializations; one that fails does not stop the others.",
)
def index_batch(
    context: OpExecutionContext,
    config: BatchConfig,
    gitlab: GitLabResource,
    elasticsearch: ElasticsearchResource,
    indexing: IndexingResource,
    parquet_io_manager: ResourceParam[ParquetStore],
) -> None:
    services = Services(gitlab, elasticsearch, indexing, parquet_io_manager)
    outcome = index_each(
        context, list(config.repositories), services, config.full_refresh, record_plans=True
    )
    failure = outcome.failure("the sensor asks for these again", count_left=False)
    if failure is not None:
        raise failure


@job(
    name="index_repositories",
    tags={BATCH_TAG: BATCH_TAG_VALUE},
    description="Index several small repositories in one run (the HEAD-commit sensor forms "
    "these; see docs/runs.md). Each repository keeps its own "
    "materializations, metadata and failures.",
)
def index_repositories_job() -> None:
    index_batch()


# Dagster's statuses of a run that has not finished.
IN_PROGRESS = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


def batch_members(run: DagsterRun) -> dict[str, str]:
    """A batch run's repositories and the commits it was asked for (its config, as the run
    was given it); {} for any other run."""
    if run.tags.get(BATCH_TAG) != BATCH_TAG_VALUE:
        return {}
    run_config: Mapping[str, Any] = run.run_config  # nested mappings
    members = run_config.get("ops", {}).get(BATCH_OP, {}).get("config", {})
    return dict(members.get("repositories") or {})


def batch_run_key(run_keys: list[str]) -> str:
    """Of the members' own run keys: the same batch asked for again is the same run."""
    digest = hashlib.sha256("\n".join(sorted(run_keys)).encode())
    return f"batch:{len(run_keys)}:{digest.hexdigest()[:24]}"
