"""es_index: the repository's documents in Elasticsearch, and the manifest of what is there."""

from collections.abc import Iterator
from dataclasses import replace
from typing import Any, cast

from dagster import Any as DagsterAny
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    DataVersion,
    Output,
    ResourceParam,
    asset,
)

from gitlab_es_pipeline.defs.asset_keys import (
    DOCUMENT_COUNT_CHECK,
    ES_INDEX,
    FILE_MANIFEST,
    LINE_DOCUMENTS,
)
from gitlab_es_pipeline.defs.io_managers import ParquetFile, ParquetStore
from gitlab_es_pipeline.defs.partitions import (
    is_range_run,
    repository_backfill_policy,
    repository_partitions,
)
from gitlab_es_pipeline.defs.pools import ELASTICSEARCH_POOL
from gitlab_es_pipeline.defs.resources import ElasticsearchResource, IndexingResource
from gitlab_es_pipeline.defs.retries import step_retry_policy
from gitlab_es_pipeline.indexing.step import Step
from gitlab_es_pipeline.indexing.write import DocumentsRejected, held_already, write_repository
from gitlab_es_pipeline.runs.claims import confirm, release, run_is_alive, settle, take
from gitlab_es_pipeline.runs.many import Services, fail_range, index_range, mend_outcome


@asset(
    key=ES_INDEX,
    # A range's inputs are one file per partition (a dict), which Dagster's type from the
    # annotation cannot say: its `Any` instead.
    ins={
        "file_manifest": AssetIn(key=FILE_MANIFEST, dagster_type=DagsterAny),
        "line_documents": AssetIn(key=LINE_DOCUMENTS, dagster_type=DagsterAny),
    },
    partitions_def=repository_partitions,
    backfill_policy=repository_backfill_policy(),  # as the manifest's, so they share runs
    output_required=False,  # a backfill's range run records each partition itself
    io_manager_key="parquet_io_manager",
    group_name="code_search",  # one group: the lineage page opens on the whole pipeline
    kinds={"elasticsearch", "parquet"},
    owners=["team:data-platform"],
    pool=ELASTICSEARCH_POOL,
    retry_policy=step_retry_policy(),
    check_specs=[
        AssetCheckSpec(
            DOCUMENT_COUNT_CHECK,
            asset=ES_INDEX,
            description="Documents in Elasticsearch for the repository = lines in its manifest",
        )
    ],
)
def es_index(
    context: AssetExecutionContext,
    elasticsearch: ElasticsearchResource,
    indexing: IndexingResource,
    file_manifest: ParquetFile | dict[str, ParquetFile],  # a range's inputs: one per partition
    line_documents: ParquetFile | dict[str, ParquetFile],
    parquet_io_manager: ResourceParam[ParquetStore],
) -> Iterator[Any]:
    """Writes the new documents, deletes exactly the stale ones, records the indexed commit.
    Selected alone (no read in the run), it brings the index to what the last read stored,
    and sends nothing when the index holds that already.

    Its stored value is the manifest of what the index now holds for the repository: the base
    that the next incremental run compares against. A backfill's run of many partitions that
    selected es_index alone writes each one here from its stored manifest and documents.
    """
    if is_range_run(context.run.tags):
        services = Services(None, elasticsearch, indexing, parquet_io_manager)
        outcome = index_range(context.op_execution_context, services, full_refresh=False)
        yield outcome.check_result(ES_INDEX, DOCUMENT_COUNT_CHECK)
        fail_range(outcome)
        return
    step = Step(context.log, context.instance, context.run.run_id)
    run_is_alive(step)
    # This run's own lease from its manifest step, or (es_index alone) taken now: the stored
    # manifest and documents are read under it, so they are one read's pair.
    lease = take(step, context.partition_key)
    step = replace(step, lease=lease)
    key = context.partition_key
    alone = FILE_MANIFEST not in context.job_def.asset_layer.selected_asset_keys
    try:
        manifest = cast(ParquetFile, file_manifest).read()  # one partition: a file, not a dict
        # Alone, the step writes what the last read stored: nothing, if the index holds it.
        written = (
            alone and held_already(step, key, elasticsearch, parquet_io_manager, manifest)
        ) or write_repository(
            step,
            key,
            elasticsearch,
            indexing,
            parquet_io_manager,
            manifest,
            cast(ParquetFile, line_documents),
        )
    except DocumentsRejected as rejected:
        release(step, lease)
        yield AssetCheckResult(
            check_name=DOCUMENT_COUNT_CHECK,
            passed=False,
            severity=AssetCheckSeverity.ERROR,
            metadata=rejected.check_metadata,
        )
        raise rejected.failure from None
    except BaseException:
        release(step, lease)
        raise
    try:
        confirm(step, lease)
        yield Output(
            written.present, data_version=DataVersion(written.commit_sha), metadata=written.metadata
        )
        if not alone:  # read at HEAD and written: a batch's failure of it is history
            mend_outcome(context.op_execution_context, key)
    except BaseException:
        release(step, lease)
        raise
    settle(step, lease)
    yield AssetCheckResult(
        check_name=DOCUMENT_COUNT_CHECK,
        passed=written.count_matches,
        severity=AssetCheckSeverity.ERROR,
        metadata=written.count_metadata,
    )
