"""Many small repositories in one run: a run's fixed cost paid once for the batch.

A run's own cost (its process, imports, the code location loaded, a few dozen event writes)
is seconds; indexing a small repository is hundredths. The batch step indexes each
repository exactly as its own run would (`indexing.py`) and records in Dagster's storage
what that run's steps would have: each partition's `file_manifest`, `line_documents` and
`es_index` materializations (the commit as data version, the repository's own metadata)
and check results, or a failed materialization naming the problem. Status, the sensor and
the next incremental run read them as they read a run of one repository.

Why not partition-range runs (BackfillPolicy): a range run's outputs are one value for every
partition of the range, so one repository that fails fails its whole range, and a range is a
run of adjacent partition keys while the sensor's changed repositories are scattered.
"""

import hashlib
import tempfile
import time
import traceback
from dataclasses import replace

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetMaterialization,
    AssetObservation,
    Config,
    DagsterLogManager,
    Failure,
    MetadataValue,
    OpExecutionContext,
    ResourceParam,
    job,
    op,
)
from dagster._core.definitions.data_version import (
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    DATA_VERSION_TAG,
)
from pydantic import Field

from gitlab_es_pipeline.claims import BATCH_TAG, BATCH_TAG_VALUE, claim
from gitlab_es_pipeline.clients.elasticsearch import LineIndex
from gitlab_es_pipeline.clients.gitlab import GitLabSource
from gitlab_es_pipeline.indexing import (
    DOCUMENT_COUNT_CHECK,
    MANIFEST_CHECK,
    DocumentsRejected,
    Step,
    open_index,
    read_repository,
    write_repository,
)
from gitlab_es_pipeline.io_managers import ParquetFile, ParquetStore
from gitlab_es_pipeline.partitions import REPOSITORIES_PARTITION
from gitlab_es_pipeline.pools import GITLAB_POOL
from gitlab_es_pipeline.resources import ElasticsearchResource, GitLabResource, IndexingResource
from gitlab_es_pipeline.state import ES_INDEX, FILE_MANIFEST, LINE_DOCUMENTS

BATCH_OP = "index_batch"
TAKEN = "indexing it in this batch"  # said once the repository is the batch's alone
OUTCOME = "batch_outcome"  # failed, or left (another run has the repository)
_ASSETS = (FILE_MANIFEST, LINE_DOCUMENTS, ES_INDEX)
_FAILURES_SHOWN = 20


class BatchConfig(Config):
    repositories: dict[str, str] = Field(
        description="The repositories (partition keys) to index, each with the HEAD commit "
        "it had when the run was asked for (the run indexes HEAD as it is when it gets there)."
    )
    full_refresh: bool = Field(
        default=False, description="Rebuild each repository's documents from scratch."
    )


class _GatheredLog:
    """A repository's info lines in a batch, said as one line when it is done. Each log line is
    an event write (about 10 ms on SQLite), and a small repository says four of them (taken,
    read plan, read, write): the gathering makes them one and loses nothing. A repository
    that takes longer than `patience` seconds is said as it goes, from then on, so that the
    log shows what a long batch is busy with. Warnings are said at once."""

    def __init__(self, log: DagsterLogManager, taken: str, patience: float) -> None:
        self._log = log
        self._lines = [taken]
        self._patience = patience
        self._since = time.monotonic()

    def info(self, msg: str) -> None:
        self._lines.append(msg)
        if time.monotonic() - self._since >= self._patience:
            self._say()
            self._patience = 0.0

    def warning(self, msg: str) -> None:
        self._say()
        self._log.warning(msg)

    def _say(self) -> None:
        if self._lines:
            self._log.info("\n".join(self._lines))
            self._lines.clear()

    def __enter__(self) -> "_GatheredLog":
        return self

    def __exit__(self, *_: object) -> None:
        """Said also when the repository fails, before its error."""
        self._say()


def _versioned(commit: str) -> dict[str, str]:
    """The tags with which Dagster stores an output's user-provided data version."""
    return {DATA_VERSION_TAG: commit, DATA_VERSION_IS_USER_PROVIDED_TAG: "true"}


def _record_outcome(context: OpExecutionContext, key: str, outcome: str, reason: str) -> None:
    """A repository the batch did not index: an observation of its file_manifest partition
    says why (Dagster's open-source storages keep no failed-materialization events). It also
    ends the batch's claim on the repository (claims.py)."""
    context.log_event(
        AssetObservation(
            asset_key=FILE_MANIFEST,
            partition=key,
            metadata={OUTCOME: outcome, "reason": MetadataValue.md(reason[:4000])},
        )
    )


def _index_repository(
    context: OpExecutionContext,
    step: Step,
    key: str,
    full_refresh: bool,
    services: tuple[GitLabResource, ElasticsearchResource, IndexingResource],
    store: ParquetStore,
    source: GitLabSource,
    opened: list[tuple[LineIndex, bool]],
) -> None:
    """One repository, as its own run's two steps would index it."""
    gitlab, elasticsearch, indexing = services
    with tempfile.TemporaryDirectory(prefix="line_documents-") as staging:
        read = read_repository(step, key, full_refresh, source, gitlab, indexing, store, staging)
        store.store_partition(FILE_MANIFEST, key, read.manifest)
        store.store_partition(LINE_DOCUMENTS, key, read.documents)
    for asset_key, metadata in (
        (FILE_MANIFEST, read.manifest_metadata),
        (LINE_DOCUMENTS, read.documents_metadata),
    ):
        context.log_event(
            AssetMaterialization(
                asset_key=asset_key,
                partition=key,
                metadata=metadata,
                tags=_versioned(read.commit_sha),
            )
        )
    context.log_event(
        AssetCheckEvaluation(
            asset_key=FILE_MANIFEST,
            check_name=MANIFEST_CHECK,
            passed=not read.problems,
            severity=AssetCheckSeverity.ERROR,
            metadata=read.check_metadata,
            partition=key,
        )
    )
    if read.problems:  # the check blocks: an incomplete manifest must not decide deletes
        raise Failure(
            f"{key}: the manifest does not account for the tree: " + "; ".join(read.problems),
            allow_retries=False,
        )
    if not opened:  # once for the batch; the first load of a new index, once
        opened.append(open_index(step, elasticsearch, key))
    else:
        opened[0] = (opened[0][0], False)
    try:
        written = write_repository(
            step,
            key,
            elasticsearch,
            indexing,
            store,
            read.manifest,
            ParquetFile(store.partition_path(LINE_DOCUMENTS, key)),
            opened[0],
        )
    except DocumentsRejected as rejected:
        context.log_event(
            AssetCheckEvaluation(
                asset_key=ES_INDEX,
                check_name=DOCUMENT_COUNT_CHECK,
                passed=False,
                severity=AssetCheckSeverity.ERROR,
                metadata=rejected.check_metadata,
                partition=key,
            )
        )
        raise rejected.failure from None
    store.store_partition(ES_INDEX, key, written.present)
    context.log_event(
        AssetMaterialization(
            asset_key=ES_INDEX,
            partition=key,
            metadata=written.metadata,
            tags=_versioned(written.commit_sha),
        )
    )
    context.log_event(
        AssetCheckEvaluation(
            asset_key=ES_INDEX,
            check_name=DOCUMENT_COUNT_CHECK,
            passed=written.count_matches,
            severity=AssetCheckSeverity.ERROR,
            metadata=written.count_metadata,
            partition=key,
        )
    )


@op(
    name=BATCH_OP,
    pool=GITLAB_POOL,
    description="Index each of the configured repositories as its own run would, recording "
    "each one's materializations; one that fails does not stop the others.",
)
def index_batch(
    context: OpExecutionContext,
    config: BatchConfig,
    gitlab: GitLabResource,
    elasticsearch: ElasticsearchResource,
    indexing: IndexingResource,
    parquet_io_manager: ResourceParam[ParquetStore],
) -> None:
    instance = context.instance
    step = Step(context.log, instance, context.run_id)
    step_key = context.get_step_execution_context().step.key
    partitions = set(instance.get_dynamic_partitions(REPOSITORIES_PARTITION))
    source = gitlab.source()
    failures: dict[str, str] = {}
    indexed: list[str] = []
    left: dict[str, str] = {}
    opened: list[tuple[LineIndex, bool]] = []  # the index, opened by the first write
    for number, key in enumerate(config.repositories, start=1):
        if key not in partitions:
            left[key] = "no longer a partition (removed by discovery)"
            continue
        holding = claim(step, context.job_name, step_key, key, _ASSETS)
        if holding:
            left[key] = f"run {holding[0]} has it"
            _record_outcome(context, key, "left", left[key])
            continue
        taken = f"{key}: {TAKEN} ({number} of {len(config.repositories)})"
        try:
            with _GatheredLog(context.log, taken, indexing.progress_seconds) as gathered:
                _index_repository(
                    context,
                    replace(step, log=gathered),
                    key,
                    config.full_refresh,
                    (gitlab, elasticsearch, indexing),
                    parquet_io_manager,
                    source,
                    opened,
                )
        except Exception as exc:  # one repository's failure is its own
            message = (
                exc.description
                if isinstance(exc, Failure) and exc.description
                else f"{key}: {type(exc).__name__}: {exc}"
            )
            if not isinstance(exc, Failure):
                context.log.error(traceback.format_exc())
            context.log.error(message)
            failures[key] = message
            _record_outcome(context, key, "failed", message)
            continue
        indexed.append(key)
    context.log.info(
        f"batch of {len(config.repositories)}: {len(indexed)} indexed, {len(failures)} failed, "
        f"{len(left)} left to other runs"
        + "".join(f"\n- {k}: {why}" for k, why in list(left.items())[:_FAILURES_SHOWN])
    )
    if failures:
        shown = "\n".join(f"- {m}" for m in list(failures.values())[:_FAILURES_SHOWN])
        raise Failure(
            description=f"{len(failures)} of {len(config.repositories)} repositories failed "
            f"(the others are indexed; the sensor asks for these again):\n{shown}",
            metadata={"repositories_failed": len(failures), "repositories_indexed": len(indexed)},
            allow_retries=False,
        )


@job(
    name="index_repositories",
    tags={BATCH_TAG: BATCH_TAG_VALUE},
    description="Index several small repositories in one run (the HEAD-commit sensor forms "
    "these; see docs/runs.md). Each repository keeps its own "
    "materializations, metadata and failures.",
)
def index_repositories_job() -> None:
    index_batch()


def batch_run_key(run_keys: list[str]) -> str:
    """Of the members' own run keys: the same batch asked for again is the same run."""
    digest = hashlib.sha256("\n".join(sorted(run_keys)).encode())
    return f"batch:{len(run_keys)}:{digest.hexdigest()[:24]}"
