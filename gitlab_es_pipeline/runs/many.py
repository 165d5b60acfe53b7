"""Many repositories in one run: a run's fixed cost paid once for all of them.

A run's own cost (its process, imports, the code location loaded, a few dozen event writes)
is seconds; indexing a small repository is hundredths. Two kinds of run index many
repositories: the sensor's batches (job `index_repositories`, op `index_batch`) and the
partition-range runs of a backfill (the assets' `BackfillPolicy`). Both go through
`index_each` here, which indexes each repository exactly as its own run would (`indexing/`)
and records in Dagster's storage what that run's steps would have: each partition's
`file_manifest`, `line_documents` and `es_index` materializations (the commit as data
version, the repository's own metadata) and check results, or an observation naming why it
was not indexed. Status, the sensor and the next incremental run read them as they read a run
of one repository; a backfill counts them per partition.

Why the range step records per partition instead of returning its outputs: a range run's
outputs are one value for every partition of the range, so one repository that fails would
fail or falsely succeed its whole range.
"""

import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    AssetRecordsFilter,
    DagsterLogManager,
    Failure,
    MetadataValue,
    OpExecutionContext,
)

from gitlab_es_pipeline.clients.elasticsearch import LineIndex
from gitlab_es_pipeline.clients.gitlab import GitLabSource
from gitlab_es_pipeline.dagster_private import record_planned, versioned
from gitlab_es_pipeline.defs.asset_keys import (
    DOCUMENT_COUNT_CHECK,
    ES_INDEX,
    FILE_MANIFEST,
    LINE_DOCUMENTS,
    MANIFEST_CHECK,
)
from gitlab_es_pipeline.defs.io_managers import ParquetFile, ParquetStore
from gitlab_es_pipeline.defs.partitions import REPOSITORIES_PARTITION
from gitlab_es_pipeline.defs.resources import (
    ElasticsearchResource,
    GitLabResource,
    IndexingResource,
)
from gitlab_es_pipeline.indexing.read import ReadResult, read_repository
from gitlab_es_pipeline.indexing.step import FAILURES_SHOWN, Step
from gitlab_es_pipeline.indexing.write import (
    DocumentsRejected,
    check_before_reading,
    held_already,
    open_index,
    write_repository,
)
from gitlab_es_pipeline.runs.claims import (
    confirm,
    release,
    run_is_alive,
    settle,
    try_take,
)
from gitlab_es_pipeline.runs.leases import Lease

TAKEN = "indexing it in this batch"  # said once the repository is the batch's alone
OUTCOME = "batch_outcome"  # failed, left (another run has it), or indexed (since then)
_ASSETS = (FILE_MANIFEST, LINE_DOCUMENTS, ES_INDEX)


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

    def error(self, msg: str) -> None:
        self._say()
        self._log.error(msg)

    def _say(self) -> None:
        if self._lines:
            self._log.info("\n".join(self._lines))
            self._lines.clear()

    def __enter__(self) -> "_GatheredLog":
        return self

    def __exit__(self, *_: object) -> None:
        """Said also when the repository fails, before its error."""
        self._say()


def _record_outcome(context: OpExecutionContext, key: str, outcome: str, reason: str) -> None:
    """A repository the run did not index: an observation of its file_manifest partition
    says why (Dagster's open-source storages keep no failed-materialization events). It also
    ends the run's claim on the repository (runs/claims.py)."""
    context.log_event(
        AssetObservation(
            asset_key=FILE_MANIFEST,
            partition=key,
            metadata={OUTCOME: outcome, "reason": MetadataValue.md(reason[:4000])},
        )
    )


def mend_outcome(context: OpExecutionContext, key: str) -> None:
    """A repository read at HEAD and written after a batch or range failed it: its
    file_manifest partition's latest word says so, so that the UI does not show the old
    failure as its state. Called under the repository's lease (a failure is recorded under
    it too, so none can come between); read first (a lookup, cheaper than a write), written
    only then."""
    only = AssetRecordsFilter(asset_key=FILE_MANIFEST, asset_partitions=[key])
    try:
        for record in context.instance.fetch_observations(only, limit=10).records:
            observed = record.asset_observation
            said = observed.metadata.get(OUTCOME) if observed is not None else None
            if said is not None:
                if said.value == "failed":
                    _record_outcome(context, key, "indexed", f"indexed since run {record.run_id}")
                return
    except Exception as exc:  # a word for the UI: never the repository's failure
        context.log.warning(f"{key}: the earlier failure not marked as mended: {exc}")


@dataclass(frozen=True)
class Services:
    """What indexing many repositories uses; a step that only writes (es_index alone in a
    backfill) has no GitLab, one that only reads (file_manifest alone) no Elasticsearch."""

    gitlab: GitLabResource | None
    elasticsearch: ElasticsearchResource | None
    indexing: IndexingResource
    store: ParquetStore


@dataclass
class Outcome:
    """What became of each repository a run was given, and its checks' results."""

    total: int
    indexed: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    left: dict[str, str] = field(default_factory=dict)  # to another run, or gone
    checks: dict[str, dict[str, bool]] = field(default_factory=dict)  # name -> key -> passed

    def summary(self) -> str:
        return (
            f"{self.total} repositories: {len(self.indexed)} indexed, {len(self.failures)} "
            f"failed, {len(self.left)} left to other runs"
            + "".join(f"\n- {k}: {why}" for k, why in list(self.left.items())[:FAILURES_SHOWN])
        )

    def failure(self, then: str, count_left: bool) -> Failure | None:
        """The run's failure naming the repositories it did not index (none: it succeeds).
        count_left: those left to other runs count too (a backfill must see them as not done
        by it, or it would wait for them for ever)."""
        missed = {**self.failures, **(self.left if count_left else {})}
        if not missed:
            return None
        shown = "\n".join(
            f"- {m}" if m.startswith(f"{k}:") else f"- {k}: {m}"
            for k, m in list(missed.items())[:FAILURES_SHOWN]
        )
        return Failure(
            description=f"{len(missed)} of {self.total} repositories not indexed "
            f"({len(self.indexed)} indexed; {then}):\n{shown}",
            metadata={
                "repositories_failed": len(self.failures),
                "repositories_left": len(self.left),
                "repositories_indexed": len(self.indexed),
            },
            allow_retries=False,
        )

    def check_result(self, asset_key: AssetKey, check_name: str) -> AssetCheckResult:
        """A range step's own result of a check: its repositories' results in one (each
        partition's own is recorded as it is evaluated). A range in which no repository got as
        far as the check has not passed it."""
        results = self.checks.get(check_name, {})
        failing = sorted(k for k, passed in results.items() if not passed)
        return AssetCheckResult(
            asset_key=asset_key,
            check_name=check_name,
            passed=bool(results) and not failing,
            severity=AssetCheckSeverity.ERROR,
            description=f"{len(results)} of the range's {self.total} repositories checked, "
            f"{len(failing)} failing",
            metadata={
                "repositories_checked": len(results),
                "repositories_failing": len(failing),
                "failing": MetadataValue.md(
                    "\n".join(f"- {k}" for k in failing[:FAILURES_SHOWN]) or "none"
                ),
            },
        )


@dataclass
class _ManyRepositories:
    """One step's work over many repositories: what each one's own run's steps would do."""

    context: OpExecutionContext
    services: Services
    full_refresh: bool
    outcome: Outcome
    opened: list[tuple[LineIndex, bool]] = field(default_factory=list)  # by the first write

    def index(self, step: Step, key: str, source: GitLabSource | None) -> None:
        """One repository, as its own run's steps would index it."""
        if source is not None:
            manifest = self._read(step, key, source).manifest
        else:  # es_index alone: from the manifest the last read stored, as its own step would
            stored = self.services.store.read_partition(FILE_MANIFEST, key)
            if stored is None:
                raise Failure(
                    f"{key}: no file_manifest is stored to write from; materialize "
                    "file_manifest and line_documents first",
                    allow_retries=False,
                )
            manifest = stored
        if self.services.elasticsearch is not None:
            self._write(step, key, manifest, alone=source is None)

    def _check(
        self,
        asset_key: AssetKey,
        check_name: str,
        key: str,
        passed: bool,
        metadata: dict[str, Any],
    ) -> None:
        self.context.log_event(
            # log_event takes check evaluations too; its UserEvent annotation leaves them out.
            AssetCheckEvaluation(  # type: ignore[arg-type]
                asset_key=asset_key,
                check_name=check_name,
                passed=passed,
                severity=AssetCheckSeverity.ERROR,
                metadata=metadata,
                partition=key,
            )
        )
        self.outcome.checks.setdefault(check_name, {})[key] = passed

    def _record(
        self, step: Step, asset_key: AssetKey, key: str, commit: str, metadata: dict
    ) -> None:
        """Recorded only while the run holds the repository's lease (runs/claims.py)."""
        if step.lease is not None:
            confirm(step, step.lease)
        self.context.log_event(
            AssetMaterialization(
                asset_key=asset_key, partition=key, metadata=metadata, tags=versioned(commit)
            )
        )

    def _read(self, step: Step, key: str, source: GitLabSource) -> ReadResult:
        """file_manifest and line_documents, stored and recorded as the asset's step would."""
        gitlab, store = self.services.gitlab, self.services.store
        assert gitlab is not None
        with tempfile.TemporaryDirectory(prefix="line_documents-") as staging:
            read = read_repository(
                step, key, self.full_refresh, source, gitlab, self.services.indexing, store, staging
            )
            if step.lease is not None:  # the stored read is the lease holder's alone
                confirm(step, step.lease)
            store.store_partition(FILE_MANIFEST, key, read.manifest)
            store.store_partition(LINE_DOCUMENTS, key, read.documents)
        self._record(step, FILE_MANIFEST, key, read.commit_sha, read.manifest_metadata)
        self._record(step, LINE_DOCUMENTS, key, read.commit_sha, read.documents_metadata)
        self._check(FILE_MANIFEST, MANIFEST_CHECK, key, not read.problems, read.check_metadata)
        if read.problems:  # the check blocks: an incomplete manifest must not decide deletes
            raise Failure(
                f"{key}: the manifest does not account for the tree: " + "; ".join(read.problems),
                allow_retries=False,
            )
        return read

    def _write(self, step: Step, key: str, manifest: pa.Table, alone: bool) -> None:
        """es_index, written, stored and recorded as the asset's step would (alone: nothing
        sent when the index holds the stored read already)."""
        elasticsearch, store = self.services.elasticsearch, self.services.store
        assert elasticsearch is not None
        if not self.opened:  # once for the run; the first load of a new index, once
            self.opened.append(open_index(step, elasticsearch, key))
        else:
            self.opened[0] = (self.opened[0][0], False)
        try:
            written = (
                alone and held_already(step, key, elasticsearch, store, manifest, self.opened[0])
            ) or write_repository(
                step,
                key,
                elasticsearch,
                self.services.indexing,
                store,
                manifest,
                ParquetFile(store.partition_path(LINE_DOCUMENTS, key)),
                self.opened[0],
            )
        except DocumentsRejected as rejected:
            self._check(ES_INDEX, DOCUMENT_COUNT_CHECK, key, False, rejected.check_metadata)
            raise rejected.failure from None
        store.store_partition(ES_INDEX, key, written.present)
        self._record(step, ES_INDEX, key, written.commit_sha, written.metadata)
        self._check(
            ES_INDEX, DOCUMENT_COUNT_CHECK, key, written.count_matches, written.count_metadata
        )


def index_each(
    context: OpExecutionContext,
    keys: list[str],
    services: Services,
    full_refresh: bool,
    record_plans: bool,
) -> Outcome:
    """Each repository in turn, as its own run would index it; one that fails is its own.

    Each is taken under its lease first (runs/claims.py): one that another run holds is left to it.
    record_plans: record each repository's planned materializations as it is taken (a batch;
    Dagster records a range run's when it makes the run), for the UI's partition status.
    """
    instance = context.instance
    step = Step(context.log, instance, context.run.run_id)
    run_is_alive(step)
    step_key = context.get_step_execution_context().step.key
    partitions = set(instance.get_dynamic_partitions(REPOSITORIES_PARTITION))
    source = services.gitlab.source() if services.gitlab is not None else None
    if services.gitlab is not None and services.elasticsearch is not None:
        check_before_reading(step, services.elasticsearch, f"{len(keys)} repositories")
    outcome = Outcome(len(keys))
    work = _ManyRepositories(context, services, full_refresh, outcome)
    for number, key in enumerate(keys, start=1):
        if key not in partitions:
            outcome.left[key] = "no longer a partition (removed by discovery)"
            continue
        lease: Lease | str | None = None
        try:
            lease = try_take(step, key)
            if isinstance(lease, str):
                outcome.left[key] = f"run {lease} has it"
                _record_outcome(context, key, "left", outcome.left[key])
                continue
            if record_plans:
                record_planned(
                    instance, context.run.run_id, context.job_name, step_key, key, _ASSETS
                )
            taken = f"{key}: {TAKEN} ({number} of {len(keys)})"
            with _GatheredLog(context.log, taken, services.indexing.progress_seconds) as gathered:
                work.index(replace(step, log=gathered, lease=lease), key, source)
            if services.elasticsearch is not None:
                if source is not None:  # read at HEAD and written: a failure before is history
                    mend_outcome(context, key)
                settle(step, lease)  # its state is recorded
            else:
                release(step, lease)  # read only: a half-done write stays marked
        except Exception as exc:  # one repository's failure is its own
            message = (
                exc.description
                if isinstance(exc, Failure) and exc.description
                else f"{key}: {type(exc).__name__}: {exc}"
            )
            if not isinstance(exc, Failure):
                context.log.error(traceback.format_exc())
            context.log.error(message)
            outcome.failures[key] = message
            # Said while the lease still holds: no later run's success can come before it.
            _record_outcome(context, key, "failed", message)
            if isinstance(lease, Lease):
                release(step, lease)
            continue
        outcome.indexed.append(key)
    context.log.info(outcome.summary())
    return outcome


def index_range(context: OpExecutionContext, services: Services, full_refresh: bool) -> Outcome:
    """A backfill's partition-range run, in the step of the first selected asset of the range.
    The step yields its checks' results (`Outcome.check_result`), then `fail_range`."""
    return index_each(
        context, list(context.partition_keys), services, full_refresh, record_plans=False
    )


def fail_range(outcome: Outcome) -> None:
    """A range run fails naming the repositories it did not index: the backfill marks as failed
    the range minus what the run recorded, and takes a run that succeeded as complete."""
    failure = outcome.failure(
        "re-execute the backfill's failed partitions, or the sensor indexes them as any "
        "repository not at its HEAD",
        count_left=True,
    )
    if failure is not None:
        raise failure
