"""One repository's write: the line index opened, the documents written and the stale ones
deleted, exactly, under the repository's lease; then its state recorded. A run of its own
(the `es_index` step), a batch and a range all write through `write_repository`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from dagster import Failure, MetadataValue

from gitlab_es_pipeline.clients.elasticsearch import IndexSetupError, LineIndex, SweepError
from gitlab_es_pipeline.clients.engines import (
    EngineSetupError,
    EngineUnreachable,
    unreachable_reason,
)
from gitlab_es_pipeline.core.bulk import delete_operations, index_operations
from gitlab_es_pipeline.core.dead_letters import dead_letter_table
from gitlab_es_pipeline.core.documents import (
    REPEATED_COLUMNS,
)
from gitlab_es_pipeline.core.filtering import Skipped
from gitlab_es_pipeline.core.manifest import (
    BuildMode,
    ManifestHeader,
    entries_of,
    outcome_in_words,
    present_rows,
    stale_document_ids,
    summarize,
)
from gitlab_es_pipeline.core.progress import Progress
from gitlab_es_pipeline.defs.asset_keys import DEAD_LETTERS, ES_INDEX, LINE_DOCUMENTS
from gitlab_es_pipeline.defs.io_managers import (
    ParquetFile,
    ParquetStore,
)
from gitlab_es_pipeline.defs.partitions import REPOSITORIES_PARTITION
from gitlab_es_pipeline.defs.resources import (
    ElasticsearchResource,
    IndexingResource,
)
from gitlab_es_pipeline.defs.retries import step_failure
from gitlab_es_pipeline.indexing.step import (
    FAILURES_SHOWN,
    Step,
)
from gitlab_es_pipeline.memory import peak_rss_mb, use_returning_memory_pool
from gitlab_es_pipeline.runs.claims import (
    begin_writing,
    fence,
    last_writer,
    note_writer,
    release,
    run_works,
    take_project,
)
from gitlab_es_pipeline.runs.indexed import STAGED, last_indexed, written_since_read
from gitlab_es_pipeline.runs.leases import Lease


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


def cannot_reach(elasticsearch: ElasticsearchResource, exc: EngineUnreachable) -> str:
    """The cluster, where, and why: what the run's log says when it does not answer."""
    return f"cannot reach the cluster at {elasticsearch.shown_url()}: {unreachable_reason(exc)}"


@contextmanager
def failing_if_unreachable(elasticsearch: ElasticsearchResource, key: str) -> Iterator[None]:
    """A cluster that did not answer (after the client's own retries) fails the step, to be
    retried, with the repository, the cluster's URL and the reason in its message."""
    try:
        yield
    except EngineUnreachable as exc:
        raise step_failure(f"{key}: {cannot_reach(elasticsearch, exc)}", permanent=False) from exc


def check_before_reading(step: Step, elasticsearch: ElasticsearchResource, where: str) -> None:
    """A cluster this installation cannot write to (its client not installed, a refused
    setting) fails the run before GitLab is read, not after every repository was read. One
    that does not answer is only said: the write waits for it, and is retried."""
    try:
        elasticsearch.search_engine()
    except EngineSetupError as exc:
        raise step_failure(f"{where}: {exc.reason}; nothing read", permanent=True) from None
    except EngineUnreachable as exc:
        step.log.warning(f"{where}: {cannot_reach(elasticsearch, exc)}; reading anyway")


def open_index(
    step: Step, elasticsearch: ElasticsearchResource, key: str
) -> tuple[LineIndex, bool]:
    """The line index, created or checked once (for a batch: once for all its repositories);
    True when it was created now (its first load then runs with the bulk-load settings)."""
    try:
        with failing_if_unreachable(elasticsearch, key):
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
    with failing_if_unreachable(elasticsearch, key):
        if step.lease is None:
            return _write(
                step, key, elasticsearch, indexing, store, manifest, line_documents, opened
            )
        project = take_project(step, ManifestHeader.of(manifest).snapshot.project_id)
        try:
            if not step.instance.has_dynamic_partition(REPOSITORIES_PARTITION, key):
                # Removed (renamed or moved: its new path may be written already): writing
                # would overwrite the new path's documents, which have the same ids.
                raise step_failure(
                    f"{key}: discovery removed this repository before the run wrote; nothing "
                    "written, nothing recorded",
                    permanent=True,
                )
            header = ManifestHeader.of(manifest)
            writer, writes = last_writer(step, header.snapshot.project_id)
            if writer != key and header.writes_seen not in (None, writes):
                raise step_failure(
                    f"{key}: project {header.snapshot.project_id} was written under {writer} "
                    "after this read (renamed or moved?): nothing written, nothing recorded; "
                    "the next run reads it again",
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
    words = outcome_in_words(
        snapshot.commit_sha,
        header.base_commit,
        outcome["documents_written"],
        outcome["documents_deleted"],
        summary.changes,
    )
    return _result(elasticsearch, manifest, words, outcome, in_index, started)


def _result(
    elasticsearch: ElasticsearchResource,
    manifest: pa.Table,
    words: str,
    outcome: dict[str, int],
    in_index: int,
    started: float,
) -> WriteResult:
    """What es_index records: the manifest of what the index holds, and its metadata."""
    header = ManifestHeader.of(manifest)
    snapshot, summary = header.snapshot, summarize(manifest)
    return WriteResult(
        commit_sha=snapshot.commit_sha,
        present=present_rows(manifest),
        metadata={
            "outcome": words,
            "commit": MetadataValue.url(f"{snapshot.web_url}/-/commit/{snapshot.commit_sha}"),
            "commit_sha": snapshot.commit_sha,
            "project_id": snapshot.project_id,
            "branch": snapshot.branch,
            "visibility": snapshot.visibility,  # with branch and project: the identity indexed
            "project": MetadataValue.url(snapshot.web_url),
            "mode": header.mode.value,
            "base_commit": header.base_commit or "",
            "index": elasticsearch.index,
            # The tree's entries and why those not indexed are not, as on file_manifest: the
            # page of the index explains its own file count.
            "tree_entries": summary.files,
            "files_indexed": summary.indexed_files,
            "tree_entries_skipped": summary.files - summary.indexed_files,
            **{f"skipped_{r.value}": summary.skipped.get(r.value, 0) for r in Skipped},
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


def held_already(
    step: Step,
    key: str,
    elasticsearch: ElasticsearchResource,
    store: ParquetStore,
    manifest: pa.Table,
    opened: tuple[LineIndex, bool] | None = None,
) -> WriteResult | None:
    """es_index alone (a run that does not read): when the index already holds what the last
    read stored, nothing is sent, and the index's count is still checked; None otherwise.

    It holds it when the last write was recorded after the last read, at that read's commit;
    the write's stored value (withdrawn before any write, so missing after one that failed
    part-way) carries the very header of the stored read (its commit, identity, mode, base
    and settings: a read stored but never recorded, e.g. a batch killed between the two, has
    another); no dead letters are kept; and the index counts as many of the repository's
    documents as the manifest has lines."""
    started = time.monotonic()
    header = ManifestHeader.of(manifest)
    snapshot = header.snapshot
    state = last_indexed(step.instance, key)
    written = store.partition_path(ES_INDEX, key)
    if (
        state is None
        or state.commit_sha != snapshot.commit_sha
        or not written_since_read(step.instance, key)
        or not written.exists()
        or ManifestHeader.of(ParquetFile(written).schema) != header
        or store.partition_path(DEAD_LETTERS, key).exists()
    ):
        return None
    index, _ = opened or open_index(step, elasticsearch, key)
    with failing_if_unreachable(elasticsearch, key):
        in_index = index.count(snapshot.project_id, snapshot.repository_name)
    if in_index != summarize(manifest).lines:  # documents lost since (deleted by hand?)
        return None  # written again from the stored read
    words = (
        f"up to date at {snapshot.commit_sha[:12]}: the index holds the last read already "
        "(es_index alone sends what the last read stored; a run with file_manifest reads HEAD)"
    )
    outcome = dict.fromkeys(
        ("documents_written", "documents_deleted", "documents_failed", "dead_letters_retried"), 0
    )
    outcome.update(items_retried=0, bulk_requests=0, bulk_bytes=0)
    step.log.info(f"{key}: {words}")
    return _result(elasticsearch, manifest, words, outcome, in_index, started)
