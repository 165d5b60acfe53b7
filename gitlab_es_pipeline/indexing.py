"""One repository's read and write, the same whether it runs alone or in a batch.

A run of its own (the `file_manifest`/`line_documents` and `es_index` steps) and a batch
(`batches.py`, many small repositories in one step) both call `read_repository` then
`write_repository`; they differ only in how they record the outcome in Dagster's storage.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
from dagster import DagsterInstance, Failure, MetadataValue

from gitlab_es_pipeline.asset_keys import DEAD_LETTERS, ES_INDEX, LINE_DOCUMENTS
from gitlab_es_pipeline.claims import (
    begin_writing,
    fence,
    last_writer,
    note_writer,
    release,
    run_works,
    take_project,
)
from gitlab_es_pipeline.clients.elasticsearch import IndexSetupError, LineIndex, SweepError
from gitlab_es_pipeline.clients.engines import EngineSetupError
from gitlab_es_pipeline.clients.gitlab import GitLabError, GitLabSource
from gitlab_es_pipeline.core.bulk import delete_operations, index_operations
from gitlab_es_pipeline.core.dead_letters import dead_letter_table
from gitlab_es_pipeline.core.documents import (
    LINE_DOCUMENT_SCHEMA,
    REPEATED_COLUMNS,
    RepositorySnapshot,
)
from gitlab_es_pipeline.core.manifest import (
    BuildMode,
    ManifestHeader,
    current_entries,
    entries_of,
    manifest_table,
    outcome_in_words,
    present_rows,
    stale_document_ids,
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
from gitlab_es_pipeline.io_managers import ParquetFile, ParquetStore, StagedParquet, stage_parquet
from gitlab_es_pipeline.leases import Lease
from gitlab_es_pipeline.memory import peak_rss_mb, use_returning_memory_pool
from gitlab_es_pipeline.partitions import REPOSITORIES_PARTITION
from gitlab_es_pipeline.resources import ElasticsearchResource, GitLabResource, IndexingResource
from gitlab_es_pipeline.retries import step_failure
from gitlab_es_pipeline.scanning import RepositoryError, RepositoryScan, ScanSettings
from gitlab_es_pipeline.state import STAGED, last_indexed

MANIFEST_CHECK = "manifest_accounts_for_tree"
DOCUMENT_COUNT_CHECK = "document_count_matches_manifest"
FAILURES_SHOWN = 20  # repositories or files a failure's message lists, at most
_CHANGES = ("added", "modified", "deleted", "renamed", "unchanged")


class StepLog(Protocol):
    """What the per-repository work says: the step's logger, or a batch's gathering of it."""

    def info(self, msg: str) -> None: ...

    def warning(self, msg: str) -> None: ...

    def error(self, msg: str) -> None: ...


@dataclass(frozen=True)
class Step:
    """What the per-repository work needs of the step it runs in."""

    log: StepLog  # DagsterLogManager is one
    instance: DagsterInstance
    run_id: str
    lease: Lease | None = None  # the repository's, once taken (claims.py)


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


@dataclass
class WriteResult:
    """What es_index recorded for one repository: its stored value and metadata, the check."""

    commit_sha: str
    present: pa.Table
    metadata: dict[str, Any]
    documents_in_index: int
    lines_in_manifest: int

    @property
    def count_matches(self) -> bool:
        return self.documents_in_index == self.lines_in_manifest

    @property
    def count_metadata(self) -> dict[str, int]:
        return {
            "documents_in_index": self.documents_in_index,
            "lines_in_manifest": self.lines_in_manifest,
        }


@dataclass
class DocumentsRejected(Exception):
    """The cluster refused some operations for good: the count check fails, then the step."""

    failure: Failure
    check_metadata: dict[str, Any] = field(default_factory=dict)


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


def open_index(
    step: Step, elasticsearch: ElasticsearchResource, key: str
) -> tuple[LineIndex, bool]:
    """The line index, created or checked once (for a batch: once for all its repositories);
    True when it was created now (its first load then runs with the bulk-load settings)."""
    try:
        index = elasticsearch.line_index()
        # A first load noted in the index is repaired only once its run no longer works.
        ensured = index.ensure(load_alive=lambda run_id: run_works(step.instance, run_id))
        created = ensured == "created"
    except (IndexSetupError, EngineSetupError) as exc:
        reason = exc.reason if isinstance(exc, EngineSetupError) else exc
        raise step_failure(f"{key}: {reason}", permanent=True) from exc
    for name, settings in index.restored_after_interrupted_load.items():
        step.log.warning(
            f"index {name}: its first load was cut short (the run killed?); settings restored: "
            + ", ".join(f"{k}={v}" for k, v in settings.items())
        )
    return index, created


def write_repository(
    step: Step,
    key: str,
    elasticsearch: ElasticsearchResource,
    indexing: IndexingResource,
    store: ParquetStore,
    manifest: pa.Table,
    line_documents: ParquetFile,
    opened: tuple[LineIndex, bool] | None = None,
) -> WriteResult:
    """Writes the new documents, deletes exactly the stale ones; the caller records the commit.

    opened: the index as `open_index` gave it, when the caller writes several repositories.

    The stored es_index value (the manifest of what the index holds) is withdrawn before the
    first write: a run that dies or fails part-way leaves documents no manifest describes, and
    the missing manifest makes the next run rebuild in full instead of trusting a stale base.

    Documents are the project's (their ids are project id, path and line), and two partitions
    can name one project for a while (a rename between a run's read and its write): the write
    also holds the project's lease, and fails, to be tried again, while another run holds it.
    Under that lease it counts itself as the project's latest writer: a read made before
    another partition wrote the project (the project left this path for that one, maybe
    came back) is not written, and the read plan (core/read_plan.py) reads this path in full
    next time.
    """
    if step.lease is None:
        return _write(step, key, elasticsearch, indexing, store, manifest, line_documents, opened)
    project = take_project(step, ManifestHeader.of(manifest).snapshot.project_id)
    try:
        if not step.instance.has_dynamic_partition(REPOSITORIES_PARTITION, key):
            # Removed (renamed or moved: its new path may be written already): writing would
            # overwrite the new path's documents, which have the same ids.
            raise step_failure(
                f"{key}: discovery removed this repository before the run wrote; nothing "
                "written, nothing recorded",
                permanent=True,
            )
        header = ManifestHeader.of(manifest)
        writer, writes = last_writer(step, header.snapshot.project_id)
        if writer != key and header.writes_seen not in (None, writes):
            raise step_failure(
                f"{key}: project {header.snapshot.project_id} was written under {writer} after "
                "this read (renamed or moved?): nothing written, nothing recorded; the next "
                "run reads it again",
                permanent=True,
            )
        note_writer(step, project, header.snapshot.project_id, key)
        return _write(
            step, key, elasticsearch, indexing, store, manifest, line_documents, opened, project
        )
    finally:
        release(step, project)


def _write(
    step: Step,
    key: str,
    elasticsearch: ElasticsearchResource,
    indexing: IndexingResource,
    store: ParquetStore,
    manifest: pa.Table,
    line_documents: ParquetFile,
    opened: tuple[LineIndex, bool] | None,
    project: Lease | None = None,
) -> WriteResult:
    started = time.monotonic()
    use_returning_memory_pool()
    header = ManifestHeader.of(manifest)
    snapshot = header.snapshot
    summary = summarize(manifest)
    lease = step.lease
    if lease is not None:
        begin_writing(step, lease)
    store.withdraw_partition(ES_INDEX, key)
    dead_before = store.read_partition(DEAD_LETTERS, key)
    index, new_index = opened or open_index(step, elasticsearch, snapshot.repository_name)
    # Every request to the cluster, retries included, first checks that the leases still hold.
    held = [h for h in (lease, project) if h is not None]

    def fenced() -> None:
        for h in held:
            fence(h)

    index.fence = fenced if held else None
    total = line_documents.num_rows
    progress = Progress(
        f"{snapshot.repository_name}: write",
        "documents",
        step.log.info,
        indexing.progress_seconds,
    )
    with index.bulk_load(owner=step.run_id) if new_index else nullcontext():
        written = index.write(
            map(index_operations, line_documents.iter_batches(dictionary_columns=REPEATED_COLUMNS)),
            progress=lambda done: progress.update(done, total),
        )
    progress.finish()
    deleted = index.write(
        delete_operations(stale_document_ids(snapshot.project_id, entries_of(manifest)))
    )
    failed = written.failed + deleted.failed
    swept = 0
    if header.mode is BuildMode.FULL_REFRESH and not failed:
        try:
            swept = index.delete_other_commits(snapshot.project_id, snapshot.commit_sha)
        except SweepError as exc:
            raise step_failure(
                f"{snapshot.repository_name}: removing documents of other commits: {exc}",
                permanent=False,
            ) from exc
    outcome = {
        "documents_written": written.succeeded,
        "documents_deleted": deleted.results.get("deleted", 0) + swept,
        "documents_failed": failed,
        # The previous run's dead letters, sent again as part of this run's full rebuild.
        "dead_letters_retried": dead_before.num_rows if dead_before is not None else 0,
        "items_retried": written.retried_items + deleted.retried_items,
        "bulk_requests": written.requests + deleted.requests,
        "bulk_bytes": written.bytes_sent + deleted.bytes_sent,
    }
    if failed:
        failures = [*written.failures, *deleted.failures]
        kept = store.store_partition(DEAD_LETTERS, key, dead_letter_table(snapshot, failures))
        shown = "\n".join(f"- {f}" for f in failures[:FAILURES_SHOWN])
        raise DocumentsRejected(
            step_failure(
                f"{snapshot.repository_name}: Elasticsearch rejected {failed} "
                f"operations; commit {snapshot.commit_sha} is not marked indexed, and the next "
                f"run rebuilds the repository and sends them again. Kept in {kept}:\n{shown}",
                permanent=True,
                metadata={
                    **outcome,
                    "failures": MetadataValue.md(shown),
                    "dead_letters": MetadataValue.path(kept),
                },
            ),
            {"documents_rejected": failed, "dead_letters": MetadataValue.path(kept)},
        )
    if not step.instance.has_dynamic_partition(REPOSITORIES_PARTITION, key):
        # Discovery removed the repository while this run wrote: what the run wrote after
        # discovery's sweep would stay forever. Swept again, and nothing recorded.
        try:
            removed = index.delete_repository(snapshot.project_id, snapshot.repository_name)
        except SweepError as exc:
            raise step_failure(
                f"{snapshot.repository_name}: removed by discovery while the run wrote, and "
                f"removing its documents again failed: {exc}",
                permanent=False,
            ) from exc
        store.forget_partition(STAGED, key)
        raise step_failure(
            f"{snapshot.repository_name}: discovery removed this repository while the run "
            f"wrote; its {removed} documents were deleted again and nothing is recorded",
            permanent=True,
        )
    store.withdraw_partition(DEAD_LETTERS, key)
    if not indexing.keep_line_documents:  # a copy of the source, no longer needed
        store.withdraw_partition(LINE_DOCUMENTS, key)
    index.refresh()
    in_index = index.count(snapshot.project_id, snapshot.repository_name)
    fenced()  # what was written is recorded only by the leases' holder
    return WriteResult(
        commit_sha=snapshot.commit_sha,
        present=present_rows(manifest),
        metadata={
            "outcome": outcome_in_words(
                snapshot.commit_sha,
                header.base_commit,
                outcome["documents_written"],
                outcome["documents_deleted"],
                summary.changes,
            ),
            "commit": MetadataValue.url(f"{snapshot.web_url}/-/commit/{snapshot.commit_sha}"),
            "commit_sha": snapshot.commit_sha,
            "project_id": snapshot.project_id,
            "branch": snapshot.branch,
            "visibility": snapshot.visibility,  # with branch and project: the identity indexed
            "project": MetadataValue.url(snapshot.web_url),
            "mode": header.mode.value,
            "base_commit": header.base_commit or "",
            "index": elasticsearch.index,
            "files_indexed": summary.indexed_files,
            "lines": summary.lines,
            "bytes": summary.indexed_bytes,
            **{f"tree_entries_{change}": n for change, n in summary.changes.items()},
            "duration_seconds": round(time.monotonic() - started, 3),
            "peak_rss_mb": peak_rss_mb(),
            **outcome,
        },
        documents_in_index=in_index,
        lines_in_manifest=summary.lines,
    )
