"""One repository's read: its snapshot, its read plan (core/read_plan.py), the manifest and the
line documents, with their metadata. A run of its own (the `file_manifest`/`line_documents`
step), a batch and a range (runs/many.py) all read through `read_repository`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from dagster import MetadataValue

from gitlab_es_pipeline.clients.gitlab import GitLabError, GitLabSource
from gitlab_es_pipeline.core.documents import (
    LINE_DOCUMENT_SCHEMA,
    REPEATED_COLUMNS,
    RepositorySnapshot,
)
from gitlab_es_pipeline.core.manifest import (
    ManifestHeader,
    current_entries,
    manifest_table,
    summarize,
)
from gitlab_es_pipeline.core.progress import Progress
from gitlab_es_pipeline.core.projects import Project
from gitlab_es_pipeline.core.read_plan import (
    Comparison,
    Indexed,
    Reading,
    ReadPlan,
    plan_read,
    with_comparison,
)
from gitlab_es_pipeline.defs.asset_keys import ES_INDEX
from gitlab_es_pipeline.defs.io_managers import (
    ParquetStore,
    StagedParquet,
    stage_parquet,
)
from gitlab_es_pipeline.defs.resources import (
    GitLabResource,
    IndexingResource,
)
from gitlab_es_pipeline.defs.retries import step_failure
from gitlab_es_pipeline.indexing.scan import RepositoryError, RepositoryScan, ScanSettings
from gitlab_es_pipeline.indexing.step import (
    Step,
)
from gitlab_es_pipeline.memory import peak_rss_mb, use_returning_memory_pool
from gitlab_es_pipeline.runs.claims import (
    last_writer,
)
from gitlab_es_pipeline.runs.indexed import last_indexed

_CHANGES = ("added", "modified", "deleted", "renamed", "unchanged")


@dataclass
class ReadResult:
    """file_manifest and line_documents of one repository, with their metadata."""

    commit_sha: str
    manifest: pa.Table
    documents: StagedParquet
    manifest_metadata: dict[str, Any]
    documents_metadata: dict[str, Any]
    problems: list[str]  # the manifest check's findings: none, or the index must not be touched
    check_metadata: dict[str, Any]


def snapshot_now(source: GitLabSource, key: str) -> RepositorySnapshot:
    """The project as GitLab has it now; a failure names the repository and what to do."""
    try:
        project = Project.from_api(source.project(key))
    except GitLabError as exc:
        hint = " If it was renamed or moved, discovery will replace this partition." * (
            exc.status == 404
        )
        raise step_failure(f"{key}: {exc}.{hint}", permanent=exc.permanent) from exc
    if project.path_with_namespace != key:
        # GitLab answers an old path with the project that left it (it follows its redirect
        # routes). Indexed here, its documents would belong to two partitions at once.
        raise step_failure(
            f"{key}: GitLab has this project at {project.path_with_namespace} now (renamed or "
            "moved); nothing indexed here: discovery replaces this partition with that one",
            permanent=True,
        )
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


def plan_of(
    step: Step,
    key: str,
    full_refresh: bool,
    source: GitLabSource,
    snapshot: RepositorySnapshot,
    settings: str,
    writer: str,
    store: ParquetStore,
    indexing: IndexingResource,
) -> tuple[ReadPlan, Any]:
    """The read plan (core/read_plan.py) from what Dagster and the store hold, with GitLab's
    comparison when the plan would list the tree; and the stored manifest it reads against."""
    state = last_indexed(step.instance, key)
    indexed = Indexed(state.commit_sha, state.project_id) if state is not None else None
    # The stored manifest, unless the path names another project now (no base for it).
    same_project = indexed is not None and indexed.project_id in (None, snapshot.project_id)
    stored = store.read_partition(ES_INDEX, key) if same_project else None
    plan = plan_read(
        key,
        snapshot,
        settings,
        indexed,
        ManifestHeader.of(stored) if stored is not None else None,
        writer,
        full_refresh=full_refresh,
        leftovers=step.lease is not None and step.lease.dirty,
    )
    if plan.reading is Reading.TREE and plan.base is not None:
        plan = with_comparison(
            plan,
            _comparison(source, snapshot, plan.base.snapshot.commit_sha),
            indexing.compare_max_files,
            indexing.max_files_fetched_alone,
        )
    for note in plan.notes:
        (step.log.warning if note.warning else step.log.info)(note.text)
    return plan, stored


def _comparison(source: GitLabSource, snapshot: RepositorySnapshot, since: str) -> Comparison:
    """GitLab's list of paths changed since the indexed commit, or why there is none."""
    try:
        found = source.compare(snapshot.project_id, since, snapshot.commit_sha)
    except GitLabError as exc:
        return Comparison(failed=str(exc))
    return Comparison(tuple(found.get("diffs") or ()), timed_out=bool(found.get("compare_timeout")))


def read_repository(
    step: Step,
    key: str,
    full_refresh: bool,
    source: GitLabSource,
    gitlab: GitLabResource,
    indexing: IndexingResource,
    store: ParquetStore,
    staging: str,
) -> ReadResult:
    """Tree listing (blob ids), then only the files that changed since the indexed commit.

    The line documents go to a Parquet file in `staging` as they are read.
    """
    memory_pool = use_returning_memory_pool()
    requests_before = dict(source.requests)
    snapshot = snapshot_now(source, key)
    settings = ScanSettings(
        max_file_bytes=indexing.max_file_bytes,
        max_line_chars=indexing.max_line_chars,
        excluded=indexing.excluded_regex(),
        archive_format=gitlab.archive_format,
        archive_attempts=gitlab.archive_attempts,
        archive_retry_seconds=gitlab.archive_retry_seconds,
        max_files_fetched_alone=indexing.max_files_fetched_alone,
    )
    writer, writes_seen = last_writer(step, snapshot.project_id)
    plan, stored = plan_of(
        step, key, full_refresh, source, snapshot, settings.fingerprint(), writer, store, indexing
    )
    mode, base_header = plan.mode, plan.base
    progress = Progress(
        f"{snapshot.repository_name}: read", "files", step.log.info, indexing.progress_seconds
    )
    scan = RepositoryScan(source, snapshot, settings, progress)
    base_entries = current_entries(stored) if stored is not None and plan.base else None
    try:
        scan.start(plan, base_entries)
    except RepositoryError as exc:
        raise step_failure(str(exc), permanent=exc.permanent) from exc
    read_everything = plan.reading is Reading.EVERYTHING
    step.log.info(
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
        writes_seen=writes_seen,
    )
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
    requests = {
        kind: n - requests_before.get(kind, 0)
        for kind, n in source.requests.items()
        if n > requests_before.get(kind, 0)
    }
    problems = scan.account.problems()
    if problems:
        step.log.error(f"{snapshot.repository_name}: " + "; ".join(problems))
    return ReadResult(
        commit_sha=snapshot.commit_sha,
        manifest=manifest,
        documents=documents,
        manifest_metadata={
            "dagster/row_count": manifest.num_rows,
            "commit": MetadataValue.url(f"{snapshot.web_url}/-/commit/{snapshot.commit_sha}"),
            "commit_sha": snapshot.commit_sha,
            "branch": snapshot.branch,
            "project": MetadataValue.url(snapshot.web_url),
            "mode": mode.value,
            "base_commit": header.base_commit or "",
            # Every path of the tree (files, symlinks, submodules), and the text files of it
            # that are indexed: the two counts the asset pages show side by side.
            "tree_entries": summary.files,
            "files_indexed": summary.indexed_files,
            "tree_entries_skipped": summary.files - summary.indexed_files,
            **{f"skipped_{reason}": n for reason, n in scan.skipped().items()},
            **{f"tree_entries_{change}": summary.changes.get(change, 0) for change in _CHANGES},
            "files_read": len(scan.wanted),
            "lines": summary.lines,
            "bytes": summary.indexed_bytes,
            "gitlab_requests": MetadataValue.json(requests),
        },
        documents_metadata={
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
        problems=problems,
        check_metadata={
            **scan.account.metadata(),
            "problems": MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
        },
    )
