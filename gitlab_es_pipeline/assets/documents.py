"""file_manifest and line_documents: one step, because both come from one archive download."""

import os
import tempfile
from collections.abc import Iterator
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetOut,
    DataVersion,
    MetadataValue,
    Output,
    multi_asset,
)

from gitlab_es_pipeline.clients.gitlab import GitLabSource
from gitlab_es_pipeline.core.documents import (
    LINE_DOCUMENT_SCHEMA,
    RepositorySnapshot,
    coalesce_batches,
)
from gitlab_es_pipeline.core.manifest import manifest_table, summarize
from gitlab_es_pipeline.core.projects import Project
from gitlab_es_pipeline.io_managers import stage_parquet
from gitlab_es_pipeline.partitions import repository_partitions
from gitlab_es_pipeline.resources import GitLabResource, IndexingResource
from gitlab_es_pipeline.scanning import RepositoryScan, ScanSettings


def _snapshot(source: GitLabSource, key: str) -> RepositorySnapshot:
    project = Project.from_api(source.project(key))
    branch = project.default_branch
    if not branch:
        raise ValueError(f"{key}: the project has no default branch (empty repository?)")
    return RepositorySnapshot(
        project_id=project.project_id,
        repository_name=project.path_with_namespace,
        branch=branch,
        commit_sha=source.head_commit(project.project_id, branch),
        web_url=project.web_url,
    )


@multi_asset(
    outs={
        "file_manifest": AssetOut(
            io_manager_key="parquet_io_manager",
            kinds={"gitlab", "parquet"},
            owners=["team:data-platform"],
            description="Every file at the default branch's HEAD: blob, mode, size, lines, "
            "and why it is skipped if it is.",
        ),
        "line_documents": AssetOut(
            io_manager_key="parquet_io_manager",
            kinds={"parquet"},
            owners=["team:data-platform"],
            description="One document per line of every indexed file, as Elasticsearch gets it.",
        ),
    },
    internal_asset_deps={
        "file_manifest": {AssetKey("repositories")},
        "line_documents": {AssetKey("file_manifest")},
    },
    deps=[AssetKey("repositories")],
    partitions_def=repository_partitions,
    group_name="gitlab",
    can_subset=False,
)
def manifest_and_line_documents(
    context: AssetExecutionContext, gitlab: GitLabResource, indexing: IndexingResource
) -> Iterator[Output[Any]]:
    """Tree listing (blob ids) plus one streamed archive read (content) of one repository."""
    source = gitlab.source()
    snapshot = _snapshot(source, context.partition_key)
    context.log.info(f"{snapshot.repository_name}: {snapshot.branch} at {snapshot.commit_sha}")
    scan = RepositoryScan(
        source,
        snapshot,
        ScanSettings(
            max_file_bytes=indexing.max_file_bytes,
            max_line_chars=indexing.max_line_chars,
            excluded=indexing.excluded_regex(),
            archive_format=gitlab.archive_format,
        ),
    )
    scan.list_tree()

    with tempfile.TemporaryDirectory(prefix="line_documents-") as staging:
        # Stream the archive once: documents go to a staged Parquet file, the manifest fills in.
        documents = stage_parquet(
            os.path.join(staging, "line_documents.parquet"),
            LINE_DOCUMENT_SCHEMA,
            coalesce_batches(scan.documents(), indexing.row_group_lines, LINE_DOCUMENT_SCHEMA),
        )
        manifest = manifest_table(snapshot, scan.entries.values())
        summary = summarize(manifest)
        stats = scan.stats
        yield Output(
            manifest,
            output_name="file_manifest",
            data_version=DataVersion(snapshot.commit_sha),
            metadata={
                "dagster/row_count": manifest.num_rows,
                "commit": MetadataValue.url(f"{snapshot.web_url}/-/commit/{snapshot.commit_sha}"),
                "commit_sha": snapshot.commit_sha,
                "branch": snapshot.branch,
                "project": MetadataValue.url(snapshot.web_url),
                "files": summary.files,
                "files_indexed": summary.indexed_files,
                "files_skipped": summary.files - summary.indexed_files,
                **{f"skipped_{reason}": n for reason, n in scan.skipped().items()},
                "lines": summary.lines,
                "bytes": summary.indexed_bytes,
                "gitlab_requests": MetadataValue.json(dict(source.requests)),
            },
        )
        yield Output(
            documents,
            output_name="line_documents",
            data_version=DataVersion(snapshot.commit_sha),
            metadata={
                "dagster/row_count": documents.rows,
                "commit_sha": snapshot.commit_sha,
                "files_from_archive": stats.files_from_archive,
                "files_fetched_alone": stats.files_fetched_alone,
                "archive_bytes": stats.archive_bytes,
                "duration_seconds": round(stats.seconds, 3),
                "lines_per_second": round(stats.lines / stats.seconds) if stats.seconds else 0,
            },
        )
