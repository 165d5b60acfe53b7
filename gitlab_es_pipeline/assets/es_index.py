"""es_index: the line documents of one repository, written to Elasticsearch."""

import time

from dagster import (
    AssetExecutionContext,
    AssetIn,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from gitlab_es_pipeline.core.bulk import index_operations
from gitlab_es_pipeline.core.manifest import snapshot_of, summarize
from gitlab_es_pipeline.io_managers import ParquetFile
from gitlab_es_pipeline.partitions import repository_partitions
from gitlab_es_pipeline.resources import ElasticsearchResource

_FAILURES_SHOWN = 20


@asset(
    ins={"file_manifest": AssetIn(), "line_documents": AssetIn()},
    partitions_def=repository_partitions,
    group_name="elasticsearch",
    kinds={"elasticsearch"},
    owners=["team:data-platform"],
)
def es_index(
    context: AssetExecutionContext,
    elasticsearch: ElasticsearchResource,
    file_manifest: ParquetFile,
    line_documents: ParquetFile,
) -> MaterializeResult:
    """The repository's line documents in Elasticsearch; the indexed commit is the data version."""
    started = time.monotonic()
    manifest = file_manifest.read()
    snapshot = snapshot_of(manifest)
    summary = summarize(manifest)
    index = elasticsearch.line_index()
    index.ensure()
    operations = (op for batch in line_documents.iter_batches() for op in index_operations(batch))
    report = index.write(operations)
    outcome = {
        "documents_written": report.succeeded,
        "documents_failed": report.failed,
        "items_retried": report.retried_items,
        "bulk_requests": report.requests,
        "bulk_bytes": report.bytes_sent,
        "results": MetadataValue.json(dict(report.results)),
    }
    if report.failed:
        shown = "\n".join(f"- {f}" for f in report.failures[:_FAILURES_SHOWN])
        raise Failure(
            description=f"{snapshot.repository_name}: Elasticsearch rejected {report.failed} of "
            f"{report.failed + report.succeeded} line documents; commit {snapshot.commit_sha} "
            f"is not marked indexed.\n{shown}",
            metadata={**outcome, "failures": MetadataValue.md(shown)},
        )
    return MaterializeResult(
        data_version=DataVersion(snapshot.commit_sha),
        metadata={
            "commit": MetadataValue.url(f"{snapshot.web_url}/-/commit/{snapshot.commit_sha}"),
            "commit_sha": snapshot.commit_sha,
            "branch": snapshot.branch,
            "project": MetadataValue.url(snapshot.web_url),
            "index": elasticsearch.index,
            "files": summary.indexed_files,
            "lines": summary.lines,
            "bytes": summary.indexed_bytes,
            "duration_seconds": round(time.monotonic() - started, 3),
            **outcome,
        },
    )
