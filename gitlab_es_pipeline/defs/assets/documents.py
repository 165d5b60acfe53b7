"""file_manifest and line_documents: one step, because both come from one read of the repository."""

import tempfile
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetOut,
    Config,
    DataVersion,
    Output,
    ResourceParam,
    multi_asset,
)
from pydantic import Field

from gitlab_es_pipeline.defs.asset_keys import (
    ES_INDEX,
    FILE_MANIFEST,
    LINE_DOCUMENTS,
    MANIFEST_CHECK,
    REPOSITORIES,
)
from gitlab_es_pipeline.defs.io_managers import ParquetStore
from gitlab_es_pipeline.defs.partitions import (
    is_range_run,
    repository_backfill_policy,
    repository_partitions,
)
from gitlab_es_pipeline.defs.pools import GITLAB_POOL
from gitlab_es_pipeline.defs.resources import (
    ElasticsearchResource,
    GitLabResource,
    IndexingResource,
)
from gitlab_es_pipeline.defs.retries import step_retry_policy
from gitlab_es_pipeline.indexing.read import read_repository
from gitlab_es_pipeline.indexing.step import Step
from gitlab_es_pipeline.indexing.write import check_before_reading
from gitlab_es_pipeline.runs.claims import confirm, release, run_is_alive, take
from gitlab_es_pipeline.runs.many import Services, fail_range, index_range


class IndexRunConfig(Config):
    full_refresh: bool = Field(
        default=False,
        description="Rebuild this repository's documents from scratch and remove everything "
        "stale, instead of updating only what changed since the last indexed commit.",
    )


@multi_asset(
    outs={
        "file_manifest": AssetOut(
            key=FILE_MANIFEST,
            io_manager_key="parquet_io_manager",
            kinds={"gitlab", "parquet"},
            owners=["team:data-platform"],
            description="Every file at the default branch's HEAD: blob, mode, size, lines, "
            "why it is skipped if it is, and how it changed since the last indexed commit.",
            is_required=False,  # a backfill's range run records each partition itself
        ),
        "line_documents": AssetOut(
            key=LINE_DOCUMENTS,
            io_manager_key="parquet_io_manager",
            kinds={"gitlab", "parquet"},  # its lines are read from GitLab
            owners=["team:data-platform"],
            description="One document per line of every added, modified or renamed file "
            "(every file on a full load), as Elasticsearch gets it.",
            is_required=False,
        ),
    },
    internal_asset_deps={
        "file_manifest": {REPOSITORIES},
        "line_documents": {FILE_MANIFEST},
    },
    deps=[REPOSITORIES],
    partitions_def=repository_partitions,
    backfill_policy=repository_backfill_policy(),  # runs of many repositories: docs/runs.md
    group_name="code_search",  # one group: the lineage page opens on the whole pipeline
    can_subset=False,
    check_specs=[
        AssetCheckSpec(
            MANIFEST_CHECK,
            asset=FILE_MANIFEST,
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
    elasticsearch: ElasticsearchResource,
    indexing: IndexingResource,
    parquet_io_manager: ResourceParam[ParquetStore],
) -> Iterator[Output[Any] | AssetCheckResult]:
    """Tree listing (blob ids), then only the files that changed since the indexed commit.

    A backfill's run of many partitions indexes each one here as its own run would, es_index
    included when the run selected it (its own step then has no inputs and is skipped).
    """
    if is_range_run(context.run.tags):
        # es_index is in the run's job when the run selected it (the job is the selection)
        writes = ES_INDEX in context.job_def.asset_layer.selected_asset_keys
        services = Services(gitlab, elasticsearch if writes else None, indexing, parquet_io_manager)
        outcome = index_range(context.op_execution_context, services, config.full_refresh)
        if writes:  # Dagster's next word on es_index would read like a problem otherwise
            context.log.info(
                "es_index was written in this step, for each repository of the range; "
                "Dagster's 'Skipping step es_index due to skipped dependencies' says only that "
                "its own step has nothing left to do"
            )
        yield outcome.check_result(FILE_MANIFEST, MANIFEST_CHECK)
        fail_range(outcome)
        return
    key = context.partition_key
    step = Step(context.log, context.instance, context.run.run_id)
    run_is_alive(step)
    if ES_INDEX in context.job_def.asset_layer.selected_asset_keys:
        check_before_reading(step, elasticsearch, key)  # e.g. the cluster's client missing
    lease = take(step, key)  # kept for this run's es_index step, or released below
    step = replace(step, lease=lease)
    try:
        with tempfile.TemporaryDirectory(prefix="line_documents-") as staging:
            # Documents go to a staged Parquet file as they are read; the IO manager moves it.
            read = read_repository(
                step,
                key,
                config.full_refresh,
                gitlab.source(),
                gitlab,
                indexing,
                parquet_io_manager,
                staging,
            )
            version = DataVersion(read.commit_sha)
            confirm(step, lease)  # the stored read is this lease holder's alone
            yield Output(
                read.manifest,
                output_name="file_manifest",
                data_version=version,
                metadata=read.manifest_metadata,
            )
            yield Output(
                read.documents,
                output_name="line_documents",
                data_version=version,
                metadata=read.documents_metadata,
            )
        yield AssetCheckResult(
            check_name=MANIFEST_CHECK,
            asset_key=FILE_MANIFEST,
            passed=not read.problems,
            severity=AssetCheckSeverity.ERROR,
            metadata=read.check_metadata,
        )
    except BaseException:
        release(step, lease)
        raise
    if read.problems or ES_INDEX not in context.job_def.asset_layer.selected_asset_keys:
        release(step, lease)  # no es_index step follows in this run
