"""file_manifest and line_documents: one step, because both come from one read of the repository."""

import os
import tempfile
from collections.abc import Iterator
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetOut,
    Config,
    DataVersion,
    MetadataValue,
    Output,
    ResourceParam,
    multi_asset,
)
from pydantic import Field

from gitlab_es_pipeline.clients.gitlab import GitLabError, GitLabSource
from gitlab_es_pipeline.core.documents import (
    LINE_DOCUMENT_SCHEMA,
    REPEATED_COLUMNS,
    RepositorySnapshot,
)
from gitlab_es_pipeline.core.manifest import (
    BuildMode,
    ManifestHeader,
    current_entries,
    manifest_table,
    summarize,
)
from gitlab_es_pipeline.core.progress import Progress
from gitlab_es_pipeline.core.projects import Project
from gitlab_es_pipeline.io_managers import ParquetStore, stage_parquet
from gitlab_es_pipeline.memory import peak_rss_mb, use_returning_memory_pool
from gitlab_es_pipeline.partitions import repository_partitions
from gitlab_es_pipeline.pools import GITLAB_POOL
from gitlab_es_pipeline.resources import GitLabResource, IndexingResource
from gitlab_es_pipeline.retries import step_failure, step_retry_policy
from gitlab_es_pipeline.scanning import RepositoryError, RepositoryScan, ScanSettings
from gitlab_es_pipeline.state import ES_INDEX, attempted_elsewhere, last_indexed

MANIFEST_CHECK = "manifest_accounts_for_tree"


class IndexRunConfig(Config):
    full_refresh: bool = Field(
        default=False,
        description="Rebuild this repository's documents from scratch and remove everything "
        "stale, instead of updating only what changed since the last indexed commit.",
    )


def _snapshot(source: GitLabSource, key: str) -> RepositorySnapshot:
    """The project as GitLab has it now; a failure names the repository and what to do."""
    try:
        project = Project.from_api(source.project(key))
    except GitLabError as exc:
        hint = " If it was renamed or moved, discovery will replace this partition." * (
            exc.status == 404
        )
        raise step_failure(f"{key}: {exc}.{hint}", permanent=exc.permanent) from exc
    branch = project.default_branch
    if not branch:
        raise step_failure(
            f"{key}: the project has no default branch (empty repository?)", permanent=True
        )
    try:
        commit = source.head_commit(project.project_id, branch)
    except GitLabError as exc:
        hint = (
            f" The default branch {branch!r} is gone: choose another one in the project's "
            "settings (Repository > Branch defaults)." * (exc.status == 404)
        )
        raise step_failure(f"{key}: {exc}.{hint}", permanent=exc.permanent) from exc
    return RepositorySnapshot(
        project_id=project.project_id,
        repository_name=project.path_with_namespace,
        branch=branch,
        commit_sha=commit,
        web_url=project.web_url,
        visibility=project.visibility or "private",
    )


def _choose_mode(
    context: AssetExecutionContext,
    config: IndexRunConfig,
    snapshot: RepositorySnapshot,
    store: ParquetStore,
) -> tuple[BuildMode, ManifestHeader | None, Any]:
    """Incremental against the indexed manifest when there is a trustworthy one."""
    state = last_indexed(context.instance, context.partition_key)
    if state is None:
        # Never indexed. A first load that failed or was killed may have left documents that
        # no manifest describes (of files gone since): a full refresh sweeps them.
        leftovers = attempted_elsewhere(context.instance, context.partition_key, context.run_id)
        if leftovers and not config.full_refresh:
            context.log.info(
                f"{snapshot.repository_name}: never indexed, but an earlier run set out to; "
                "rebuilding as a full refresh to sweep what it may have left"
            )
        mode = BuildMode.FULL_REFRESH if config.full_refresh or leftovers else BuildMode.FULL
        return mode, None, None
    stored = store.read_partition(ES_INDEX, context.partition_key)
    header = ManifestHeader.of(stored) if stored is not None else None
    if header is None or header.snapshot.commit_sha != state.commit_sha:
        # The indexed manifest is missing (es_index withdraws it before writing, so a run that
        # died or failed while writing leaves none) or is not the one Dagster recorded: only a
        # full rebuild is sure to leave nothing stale behind.
        context.log.warning(
            f"{snapshot.repository_name}: no stored manifest for indexed commit "
            f"{state.commit_sha} (an earlier run stopped while writing to Elasticsearch?); "
            "rebuilding in full"
        )
        return BuildMode.FULL_REFRESH, header, stored
    mode = BuildMode.FULL_REFRESH if config.full_refresh else BuildMode.INCREMENTAL
    return mode, header, stored


def _compared_changes(
    context: AssetExecutionContext,
    source: GitLabSource,
    snapshot: RepositorySnapshot,
    base: ManifestHeader,
    indexing: IndexingResource,
) -> list[dict[str, Any]] | None:
    """GitLab's list of paths changed since the indexed commit, or None to list the tree.

    None when the comparison fails (the old commit is gone), may be cut off by GitLab's diff
    limits, or names so many files that one archive is cheaper than fetching them one by one.
    """
    try:
        comparison = source.compare(
            snapshot.project_id, base.snapshot.commit_sha, snapshot.commit_sha
        )
    except GitLabError as exc:
        context.log.warning(f"{snapshot.repository_name}: {exc}; listing the tree instead")
        return None
    diffs = comparison.get("diffs") or []
    if comparison.get("compare_timeout") or len(diffs) >= indexing.compare_max_files:
        context.log.info(f"{snapshot.repository_name}: comparison cut off; listing the tree")
        return None
    if len(diffs) > indexing.max_files_fetched_alone:
        return None
    return diffs


@multi_asset(
    outs={
        "file_manifest": AssetOut(
            io_manager_key="parquet_io_manager",
            kinds={"gitlab", "parquet"},
            owners=["team:data-platform"],
            description="Every file at the default branch's HEAD: blob, mode, size, lines, "
            "why it is skipped if it is, and how it changed since the last indexed commit.",
        ),
        "line_documents": AssetOut(
            io_manager_key="parquet_io_manager",
            kinds={"gitlab", "parquet"},  # its lines are read from GitLab
            owners=["team:data-platform"],
            description="One document per line of every added, modified or renamed file "
            "(every file on a full load), as Elasticsearch gets it.",
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
    check_specs=[
        AssetCheckSpec(
            MANIFEST_CHECK,
            asset="file_manifest",
            blocking=True,  # an incomplete manifest must not decide what the index deletes
            description="The manifest holds every entry of the tree at the commit: as many "
            "as the tree pages listed, every listed folder complete (its entries hash to its "
            "tree id), no file of the archive missing from the listing, and every file that "
            "needed reading read once and checked against its blob id.",
        )
    ],
    pool=GITLAB_POOL,
    retry_policy=step_retry_policy(),
)
def manifest_and_line_documents(
    context: AssetExecutionContext,
    config: IndexRunConfig,
    gitlab: GitLabResource,
    indexing: IndexingResource,
    parquet_io_manager: ResourceParam[ParquetStore],
) -> Iterator[Output[Any]]:
    """Tree listing (blob ids), then only the files that changed since the indexed commit."""
    memory_pool = use_returning_memory_pool()
    source = gitlab.source()
    snapshot = _snapshot(source, context.partition_key)
    settings = ScanSettings(
        max_file_bytes=indexing.max_file_bytes,
        max_line_chars=indexing.max_line_chars,
        excluded=indexing.excluded_regex(),
        archive_format=gitlab.archive_format,
        archive_attempts=gitlab.archive_attempts,
        archive_retry_seconds=gitlab.archive_retry_seconds,
        max_files_fetched_alone=indexing.max_files_fetched_alone,
    )
    mode, base_header, base_table = _choose_mode(context, config, snapshot, parquet_io_manager)
    progress = Progress(
        f"{snapshot.repository_name}: read", "files", context.log.info, indexing.progress_seconds
    )
    scan = RepositoryScan(source, snapshot, settings, progress)
    # Every document carries these: when one changes, every document is written again.
    identity_changed = base_header is not None and (
        base_header.snapshot.repository_name,
        base_header.snapshot.branch,
        base_header.snapshot.web_url,
        base_header.snapshot.visibility,
    ) != (snapshot.repository_name, snapshot.branch, snapshot.web_url, snapshot.visibility)
    read_everything = (
        mode is not BuildMode.INCREMENTAL
        or identity_changed
        or (base_header is not None and base_header.settings != settings.fingerprint())
    )
    base_entries = current_entries(base_table) if base_table is not None else None
    diffs = None
    if not read_everything and base_header is not None and base_entries is not None:
        diffs = _compared_changes(context, source, snapshot, base_header, indexing)
    try:
        if diffs is not None and base_entries is not None:
            scan.from_compare(base_entries, diffs)
        elif read_everything:
            scan.read_everything(base_entries)
        else:
            scan.list_tree()
            scan.plan(base_entries)
    except RepositoryError as exc:
        raise step_failure(str(exc), permanent=exc.permanent) from exc
    context.log.info(
        f"{snapshot.repository_name}: {snapshot.branch} at {snapshot.commit_sha}, {mode.value} "
        f"against {base_header.snapshot.commit_sha if base_header else 'nothing'}; "
        + (
            "reading every file"
            if read_everything
            else f"{len(scan.wanted)} of {len(scan.entries)} files to read"
        )
    )
    header = ManifestHeader(
        snapshot=snapshot,
        mode=mode,
        base_commit=base_header.snapshot.commit_sha if base_header else None,
        settings=settings.fingerprint(),
    )
    with tempfile.TemporaryDirectory(prefix="line_documents-") as staging:
        # Documents go to a staged Parquet file as they are read; the manifest fills in.
        try:
            documents = stage_parquet(
                os.path.join(staging, "line_documents.parquet"),
                LINE_DOCUMENT_SCHEMA,
                scan.documents(indexing.row_group_lines),
                dictionary_columns=REPEATED_COLUMNS,
            )
        except RepositoryError as exc:
            raise step_failure(str(exc), permanent=exc.permanent) from exc
        progress.finish()
        manifest = manifest_table(header, [*scan.entries.values(), *scan.deleted])
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
                "mode": mode.value,
                "base_commit": header.base_commit or "",
                "files": summary.files,
                "files_indexed": summary.indexed_files,
                "files_skipped": summary.files - summary.indexed_files,
                **{f"skipped_{reason}": n for reason, n in scan.skipped().items()},
                **{f"files_{change}": summary.changes.get(change, 0) for change in _CHANGES},
                "files_read": len(scan.wanted),
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
                "mode": mode.value,
                "files_read": len(scan.wanted),
                "files_from_archive": stats.files_from_archive,
                "files_fetched_alone": stats.files_fetched_alone,
                "files_missing_from_archive": stats.files_missing_from_archive,
                "files_rewritten_by_archive": stats.files_rewritten_by_archive,
                "archive_bytes": stats.archive_bytes,
                "archive_restarts": stats.archive_restarts,
                "arrow_memory_pool": memory_pool,
                "peak_rss_mb": peak_rss_mb(),
                "duration_seconds": round(stats.seconds, 3),
                "lines_per_second": round(stats.lines / stats.seconds) if stats.seconds else 0,
            },
        )
    problems = scan.account.problems()
    if problems:
        context.log.error(f"{snapshot.repository_name}: " + "; ".join(problems))
    yield AssetCheckResult(
        check_name=MANIFEST_CHECK,
        asset_key=AssetKey("file_manifest"),
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            **scan.account.metadata(),
            "problems": MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
        },
    )


_CHANGES = ("added", "modified", "deleted", "renamed", "unchanged")
