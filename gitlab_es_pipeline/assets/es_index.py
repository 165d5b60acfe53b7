"""es_index: the repository's documents in Elasticsearch, and the manifest of what is there."""

import time
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    DataVersion,
    MetadataValue,
    Output,
    ResourceParam,
    asset,
)

from gitlab_es_pipeline.clients.elasticsearch import IndexSetupError, SweepError
from gitlab_es_pipeline.clients.engines import EngineSetupError
from gitlab_es_pipeline.core.bulk import delete_operations, index_operations
from gitlab_es_pipeline.core.dead_letters import dead_letter_table
from gitlab_es_pipeline.core.manifest import (
    BuildMode,
    ManifestHeader,
    entries_of,
    present_rows,
    stale_document_ids,
    summarize,
)
from gitlab_es_pipeline.core.progress import Progress
from gitlab_es_pipeline.io_managers import ParquetFile, ParquetStore
from gitlab_es_pipeline.memory import peak_rss_mb, use_returning_memory_pool
from gitlab_es_pipeline.partitions import REPOSITORIES_PARTITION, repository_partitions
from gitlab_es_pipeline.pools import ELASTICSEARCH_POOL
from gitlab_es_pipeline.resources import ElasticsearchResource, IndexingResource
from gitlab_es_pipeline.retries import step_failure, step_retry_policy
from gitlab_es_pipeline.state import DEAD_LETTERS, ES_INDEX, LINE_DOCUMENTS, STAGED

DOCUMENT_COUNT_CHECK = "document_count_matches_manifest"
_FAILURES_SHOWN = 20


@asset(
    ins={"file_manifest": AssetIn(), "line_documents": AssetIn()},
    partitions_def=repository_partitions,
    io_manager_key="parquet_io_manager",
    group_name="elasticsearch",
    kinds={"elasticsearch", "parquet"},
    owners=["team:data-platform"],
    pool=ELASTICSEARCH_POOL,
    retry_policy=step_retry_policy(),
    check_specs=[
        AssetCheckSpec(
            DOCUMENT_COUNT_CHECK,
            asset="es_index",
            description="Documents in Elasticsearch for the repository = lines in its manifest",
        )
    ],
)
def es_index(
    context: AssetExecutionContext,
    elasticsearch: ElasticsearchResource,
    indexing: IndexingResource,
    file_manifest: ParquetFile,
    line_documents: ParquetFile,
    parquet_io_manager: ResourceParam[ParquetStore],
) -> Iterator[Any]:
    """Writes the new documents, deletes exactly the stale ones, records the indexed commit.

    Its stored value is the manifest of what the index now holds for the repository: the base
    that the next incremental run compares against. That manifest is withdrawn before the
    first write: a run that dies or fails part-way leaves documents no manifest describes, and
    the missing manifest makes the next run rebuild in full instead of trusting a stale base.
    """
    started = time.monotonic()
    use_returning_memory_pool()
    manifest = file_manifest.read()
    header = ManifestHeader.of(manifest)
    snapshot = header.snapshot
    summary = summarize(manifest)
    parquet_io_manager.withdraw_partition(ES_INDEX, context.partition_key)
    dead_before = parquet_io_manager.read_partition(DEAD_LETTERS, context.partition_key)
    try:
        index = elasticsearch.line_index()
        new_index = index.ensure() == "created"
    except (IndexSetupError, EngineSetupError) as exc:
        reason = exc.reason if isinstance(exc, EngineSetupError) else exc
        raise step_failure(f"{snapshot.repository_name}: {reason}", permanent=True) from exc
    for name, settings in index.restored_after_interrupted_load.items():
        context.log.warning(
            f"index {name}: its first load was cut short (the run killed?); settings restored: "
            + ", ".join(f"{k}={v}" for k, v in settings.items())
        )
    total = line_documents.num_rows
    progress = Progress(
        f"{snapshot.repository_name}: write",
        "documents",
        context.log.info,
        indexing.progress_seconds,
    )
    with index.bulk_load() if new_index else nullcontext():
        written = index.write(
            map(index_operations, line_documents.iter_batches()),
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
                f"{snapshot.repository_name}: removing documents of other commits: {exc}"
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
    partition = context.partition_key
    if failed:
        failures = [*written.failures, *deleted.failures]
        kept = parquet_io_manager.store_partition(
            DEAD_LETTERS, partition, dead_letter_table(snapshot, failures)
        )
        shown = "\n".join(f"- {f}" for f in failures[:_FAILURES_SHOWN])
        yield AssetCheckResult(
            check_name=DOCUMENT_COUNT_CHECK,
            passed=False,
            severity=AssetCheckSeverity.ERROR,
            metadata={"documents_rejected": failed, "dead_letters": MetadataValue.path(kept)},
        )
        raise step_failure(
            f"{snapshot.repository_name}: Elasticsearch rejected {failed} "
            f"operations; commit {snapshot.commit_sha} is not marked indexed, and the next run "
            f"rebuilds the repository and sends them again. Kept in {kept}:\n{shown}",
            permanent=True,
            metadata={
                **outcome,
                "failures": MetadataValue.md(shown),
                "dead_letters": MetadataValue.path(kept),
            },
        )
    if not context.instance.has_dynamic_partition(REPOSITORIES_PARTITION, partition):
        # Discovery removed the repository while this run wrote: what the run wrote after
        # discovery's sweep would stay forever. Swept again, and nothing recorded.
        try:
            removed = index.delete_repository(snapshot.project_id, snapshot.repository_name)
        except SweepError as exc:
            raise step_failure(
                f"{snapshot.repository_name}: removed by discovery while the run wrote, and "
                f"removing its documents again failed: {exc}"
            ) from exc
        parquet_io_manager.forget_partition(STAGED, partition)
        raise step_failure(
            f"{snapshot.repository_name}: discovery removed this repository while the run "
            f"wrote; its {removed} documents were deleted again and nothing is recorded",
            permanent=True,
        )
    parquet_io_manager.withdraw_partition(DEAD_LETTERS, partition)
    if not indexing.keep_line_documents:  # a copy of the source, no longer needed
        parquet_io_manager.withdraw_partition(LINE_DOCUMENTS, partition)
    yield Output(
        present_rows(manifest),
        data_version=DataVersion(snapshot.commit_sha),
        metadata={
            "commit": MetadataValue.url(f"{snapshot.web_url}/-/commit/{snapshot.commit_sha}"),
            "commit_sha": snapshot.commit_sha,
            "project_id": snapshot.project_id,
            "branch": snapshot.branch,
            "project": MetadataValue.url(snapshot.web_url),
            "mode": header.mode.value,
            "base_commit": header.base_commit or "",
            "index": elasticsearch.index,
            "files": summary.indexed_files,
            "lines": summary.lines,
            "bytes": summary.indexed_bytes,
            **{f"files_{change}": n for change, n in summary.changes.items()},
            "duration_seconds": round(time.monotonic() - started, 3),
            "peak_rss_mb": peak_rss_mb(),
            **outcome,
        },
    )
    index.refresh()
    in_index = index.count(snapshot.project_id, snapshot.repository_name)
    yield AssetCheckResult(
        check_name=DOCUMENT_COUNT_CHECK,
        passed=in_index == summary.lines,
        severity=AssetCheckSeverity.ERROR,
        metadata={"documents_in_index": in_index, "lines_in_manifest": summary.lines},
    )
