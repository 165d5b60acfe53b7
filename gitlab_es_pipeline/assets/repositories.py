"""Discovery: the projects to index, and one partition per project."""

import pyarrow as pa
from dagster import (
    AssetExecutionContext,
    Config,
    Failure,
    MetadataValue,
    ResourceParam,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)
from pydantic import Field

from gitlab_es_pipeline.clients.elasticsearch import SweepError
from gitlab_es_pipeline.core.projects import Project, is_indexable, projects_table
from gitlab_es_pipeline.core.removals import RemovalGuard
from gitlab_es_pipeline.io_managers import ParquetStore
from gitlab_es_pipeline.partitions import REPOSITORIES_PARTITION
from gitlab_es_pipeline.pools import GITLAB_POOL, ensure_pools
from gitlab_es_pipeline.resources import ElasticsearchResource, GitLabResource
from gitlab_es_pipeline.state import STAGED, failing_partitions, forget, last_indexed

_PREVIEW_ROWS = 200  # the full list is the asset's Parquet file


class DiscoveryConfig(Config):
    allow_mass_removal: bool = Field(
        default=False,
        description="Remove the repositories that are gone even when they are more than "
        "discovery removes on its own (GitLabResource removal_guard_share / _count): set it "
        "from the launchpad once you know they are really gone.",
    )


@asset(
    io_manager_key="parquet_io_manager",
    group_name="code_search",  # one group: the lineage page opens on the whole pipeline
    kinds={"gitlab", "parquet"},
    owners=["team:data-platform"],
    pool=GITLAB_POOL,
)
def repositories(
    context: AssetExecutionContext,
    config: DiscoveryConfig,
    gitlab: GitLabResource,
    elasticsearch: ElasticsearchResource,
    parquet_io_manager: ResourceParam[ParquetStore],
) -> pa.Table:
    """Every non-archived, non-empty project (in GITLAB_GROUPS if set), one partition each.

    A repository that is gone (deleted, archived, emptied, renamed, moved out of the groups)
    loses its partition, its documents and its indexed state, in that order of safety: the
    documents go first, so a failure leaves the partition to be removed again next hour.
    More removals at once than the guard allows fail the run with nothing changed, until a
    person confirms them (`allow_mass_removal`).
    """
    ensure_pools(context.instance)
    source = gitlab.source()
    found: dict[int, Project] = {}
    left_out = 0
    for attrs in source.list_projects(gitlab.group_paths()):
        if is_indexable(attrs):
            project = Project.from_api(attrs)
            found[project.project_id] = project  # groups may overlap: one entry per project id
        else:
            left_out += 1
    keys = {p.partition_key for p in found.values()}
    existing = set(context.instance.get_dynamic_partitions(REPOSITORIES_PARTITION))
    added, removed = sorted(keys - existing), sorted(existing - keys)
    guard = RemovalGuard(gitlab.removal_guard_share, gitlab.removal_guard_count)
    refusal = guard.refusal(len(existing), removed)
    if refusal is not None and not config.allow_mass_removal:
        raise Failure(
            description=refusal,
            metadata={
                "partitions_to_remove": len(removed),
                "partitions": len(existing),
                "to_remove": MetadataValue.md(_listed(removed)),
            },
            allow_retries=False,
        )
    if refusal is not None:
        context.log.warning(f"removing {len(removed)} repositories, confirmed by run config")
    if added:
        context.instance.add_dynamic_partitions(REPOSITORIES_PARTITION, added)
    documents_deleted = 0
    if removed:
        index = elasticsearch.line_index()
        for key in removed:
            state = last_indexed(context.instance, key)
            try:
                deleted = index.delete_repository(state.project_id, key) if state is not None else 0
            except SweepError as exc:  # the partition stays, to be removed again next time
                raise Failure(f"{key}: removing its documents: {exc}") from exc
            forget(context.instance, key, deleted)
            parquet_io_manager.forget_partition(STAGED, key)  # its copies of the source too
            documents_deleted += deleted
            context.instance.delete_dynamic_partition(REPOSITORIES_PARTITION, key)
            context.log.info(f"{key}: gone from GitLab; partition, documents and files removed")
    table = projects_table(list(found.values()))
    failing = failing_partitions(context.instance, sorted(keys))
    context.log.info(f"{len(keys)} repositories: {len(added)} added, {len(removed)} removed")
    context.add_output_metadata(
        {
            "dagster/row_count": table.num_rows,
            "partitions_added": len(added),
            "partitions_removed": len(removed),
            "removed": MetadataValue.md(_listed(removed)),
            "documents_deleted": documents_deleted,
            "projects_left_out": MetadataValue.int(left_out),
            # Repositories whose latest run failed; the UI marks their partitions failed too.
            "repositories_failing": len(failing),
            "failing": MetadataValue.md("\n".join(f"- {k}" for k in failing[:_PREVIEW_ROWS])),
            "gitlab_requests": MetadataValue.json(dict(source.requests)),
            "projects": MetadataValue.table(
                records=[TableRecord(row) for row in table.slice(0, _PREVIEW_ROWS).to_pylist()],
                schema=TableSchema(
                    columns=[TableColumn(f.name, str(f.type)) for f in table.schema]
                ),
            ),
        }
    )
    return table


def _listed(keys: list[str]) -> str:
    shown = "\n".join(f"- {k}" for k in keys[:_PREVIEW_ROWS])
    more = len(keys) - _PREVIEW_ROWS
    return shown + (f"\n- ... and {more} more" if more > 0 else "") if keys else "none"
