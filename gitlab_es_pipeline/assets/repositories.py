"""Discovery: the projects to index, and one partition per project."""

import pyarrow as pa
from dagster import (
    AssetExecutionContext,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)

from gitlab_es_pipeline.core.projects import Project, is_indexable, projects_table
from gitlab_es_pipeline.partitions import REPOSITORIES_PARTITION
from gitlab_es_pipeline.resources import GitLabResource

_PREVIEW_ROWS = 200  # the full list is the asset's Parquet file


@asset(
    io_manager_key="parquet_io_manager",
    group_name="gitlab",
    kinds={"gitlab", "parquet"},
    owners=["team:data-platform"],
)
def repositories(context: AssetExecutionContext, gitlab: GitLabResource) -> pa.Table:
    """Every non-archived, non-empty project (in GITLAB_GROUPS if set), one partition each."""
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
    if added:
        context.instance.add_dynamic_partitions(REPOSITORIES_PARTITION, added)
    for key in removed:
        context.instance.delete_dynamic_partition(REPOSITORIES_PARTITION, key)
    table = projects_table(list(found.values()))
    context.log.info(f"{len(keys)} repositories: {len(added)} added, {len(removed)} removed")
    context.add_output_metadata(
        {
            "dagster/row_count": table.num_rows,
            "partitions_added": len(added),
            "partitions_removed": len(removed),
            "projects_left_out": MetadataValue.int(left_out),
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
