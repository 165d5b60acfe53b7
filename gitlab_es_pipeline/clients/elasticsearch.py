"""The search cluster side: index setup and bulk writes that retry exactly what failed.

Engine-neutral: the calls go through clients.engines (Elasticsearch or OpenSearch)."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from gitlab_es_pipeline.clients.engines import (
    AcceptedBulk,
    EngineError,
    EngineUnreachable,
    SearchEngine,
)
from gitlab_es_pipeline.core.bulk import BulkChunk, BulkOperations, ItemFailure, chunk_operations
from gitlab_es_pipeline.core.mapping import (
    concrete_index_name,
    fields_to_add,
    index_body,
    missing_or_conflicting_fields,
)

# The mapping's _meta key under which a first load notes the settings to restore.
LOAD_NOTE = "gitlab_es_pipeline_first_load"

# Item statuses worth another try: the cluster is busy, not the document wrong.
RETRYABLE_ITEM_STATUSES = frozenset({429, 502, 503, 504})

# A bulk response repeats index, id, version, shards and sequence numbers for every item; the
# writer needs only these, and decoding the rest costs as much as encoding the documents. The
# status says all `result` would: 201 created, 200 updated or deleted, 404 not found.
BULK_FILTER_PATH = "errors,items.*.status,items.*.error"

_RESULTS = {("index", 201): "created", ("index", 200): "updated", ("delete", 200): "deleted"}
_RESULTS[("delete", 404)] = "not_found"


class IndexSetupError(Exception):
    """The target index exists but cannot hold line documents."""


class SweepError(Exception):
    """A delete by query left documents behind or failed; nothing may be recorded as gone."""


@dataclass
class BulkReport:
    succeeded: int = 0
    retried_items: int = 0
    requests: int = 0
    bytes_sent: int = 0
    results: Counter[str] = field(default_factory=Counter)
    failures: list[ItemFailure] = field(default_factory=list)
    failed: int = 0

    def merge(self, other: BulkReport) -> None:
        self.succeeded += other.succeeded
        self.retried_items += other.retried_items
        self.requests += other.requests
        self.bytes_sent += other.bytes_sent
        self.results.update(other.results)
        self.failures.extend(other.failures)
        self.failed += other.failed


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, EngineUnreachable):
        return True
    return isinstance(exc, EngineError) and exc.status in RETRYABLE_ITEM_STATUSES


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return f"{error.get('type')}: {error.get('reason')}"
    return str(error)


class LineIndex:
    """The index (or alias) that searches use, and the bulk writer that fills it."""

    def __init__(
        self,
        engine: SearchEngine,
        name: str,
        *,
        max_chunk_bytes: int = 8 * 1024 * 1024,
        max_chunk_docs: int = 5000,
        max_retries: int = 8,
        initial_backoff: float = 1.0,
        max_backoff: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        keep_failures: int = 100,
        workers: int = 2,
    ) -> None:
        self.engine = engine
        self.name = name
        self.max_chunk_bytes = max_chunk_bytes
        self.max_chunk_docs = max_chunk_docs
        self.max_retries = max_retries
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.keep_failures = keep_failures
        self.workers = max(1, workers)
        self._sleep = sleep
        self.restored_after_interrupted_load: dict[str, dict[str, Any]] = {}

    def _exists(self) -> bool:
        try:
            return self.engine.index_exists(self.name)
        except EngineError as exc:
            if exc.status != 400:
                raise
            raise IndexSetupError(exc.reason) from None

    def ensure(self) -> str:
        """Create `<name>-v<N>` with our mapping and `<name>` as its alias, unless it exists.

        An existing index or alias is checked: it must carry every field of our mapping (those
        added by later versions are put in), and an alias must point at one index. One whose
        first load was cut short (the process killed inside bulk_load) gets back the settings
        it had before (`restored_after_interrupted_load` says which).
        """
        if self._exists():
            mappings = self.engine.get_mapping(self.name)
            self._finish_interrupted_load(mappings)
            if len(mappings) > 1:
                raise IndexSetupError(
                    f"{self.name!r} is an alias of several indices "
                    f"({', '.join(sorted(mappings))}): stale documents are deleted by id, "
                    "which needs one index behind it; point the alias at one of them"
                )
            for index, body in mappings.items():
                properties = body.get("mappings", {}).get("properties", {})
                problems = missing_or_conflicting_fields(properties)
                if problems:
                    raise IndexSetupError(
                        f"index {index!r} behind {self.name!r} has an incompatible mapping: "
                        + "; ".join(problems)
                    )
                added = fields_to_add(properties)
                if added:  # an index made by an earlier version: new fields go in place
                    self.engine.put_mapping(index, properties=added)
            return "existing"
        concrete = concrete_index_name(self.name)
        try:
            self.engine.create_index(
                concrete, {**index_body(), "aliases": {self.name: {"is_write_index": True}}}
            )
        except EngineError as exc:
            if exc.status == 400 and "already_exists" in exc.error:
                return "existing"  # a concurrent run created it first
            raise
        return "created"

    def _send(self, body: bytes) -> dict[str, Any]:
        for attempt in Retrying(
            retry=retry_if_exception(_is_transient),
            wait=wait_exponential_jitter(initial=self.initial_backoff, max=self.max_backoff),
            stop=stop_after_attempt(self.max_retries + 1),
            sleep=self._sleep,
            reraise=True,
        ):
            with attempt:
                return self.engine.bulk(self.name, body, BULK_FILTER_PATH)
        raise AssertionError("unreachable")  # pragma: no cover

    def _write_chunk(self, chunk: BulkChunk) -> BulkReport:
        report = BulkReport()
        pending = chunk
        for attempt in range(self.max_retries + 1):
            body = pending.body()
            report.requests += 1
            report.bytes_sent += len(body)
            response = self._send(body)
            counts = response.status_counts() if isinstance(response, AcceptedBulk) else None
            if counts is not None and counts.total() == len(pending):
                for (action, status), n in counts.items():
                    report.succeeded += n
                    report.results[_RESULTS.get((action, status), action)] += n
                break
            items = response["items"]
            if len(items) != len(pending):
                raise ValueError(
                    f"Elasticsearch answered {len(items)} of {len(pending)} operations"
                )
            retry: list[int] = []
            for position, item in enumerate(items):
                ((action, result),) = item.items()
                status = int(result.get("status", 500))
                if status < 300 or (action == "delete" and status == 404):
                    report.succeeded += 1
                    report.results[_RESULTS.get((action, status), action)] += 1
                elif status in RETRYABLE_ITEM_STATUSES and attempt < self.max_retries:
                    retry.append(position)
                else:
                    report.failed += 1
                    if len(report.failures) < self.keep_failures:
                        report.failures.append(
                            ItemFailure(
                                pending.origin(position), status, _error_text(result.get("error"))
                            )
                        )
            if not retry:
                break
            report.retried_items += len(retry)
            delay = min(self.max_backoff, self.initial_backoff * 2**attempt)
            self._sleep(delay * random.uniform(0.5, 1.0))
            pending = pending.take(retry)
        return report

    def write(
        self,
        operations: Iterable[BulkOperations],
        progress: Callable[[int], None] | None = None,
    ) -> BulkReport:
        """Send operations in byte-bounded chunks by `workers` concurrent senders.

        While they wait for the cluster, this thread builds the next chunk; at most `workers`
        chunks are in flight plus the one built, so memory is bounded by chunk size x
        (workers + 1).
        Items rejected for a while are re-sent alone, by the worker that sent them.
        `progress` is told the operations done so far after each chunk.
        """
        report = BulkReport()
        chunks = chunk_operations(operations, self.max_chunk_bytes, self.max_chunk_docs)
        in_flight: set[Future[BulkReport]] = set()

        def collect(done: set[Future[BulkReport]]) -> None:
            for future in done:  # a report per chunk, as each is answered
                in_flight.discard(future)
                report.merge(future.result())
                if progress is not None:
                    progress(report.succeeded + report.failed)

        with ThreadPoolExecutor(self.workers, thread_name_prefix="bulk") as pool:
            try:
                # The next chunk is built while `workers` chunks are at the cluster, and sent
                # the moment one of them is answered: the cluster never waits for this thread.
                for chunk in chunks:
                    while len(in_flight) >= self.workers:
                        collect(wait(in_flight, return_when=FIRST_COMPLETED).done)
                    in_flight.add(pool.submit(self._write_chunk, chunk))
                while in_flight:
                    collect(wait(in_flight, return_when=FIRST_COMPLETED).done)
            except BaseException:
                for future in in_flight:
                    future.cancel()
                raise
        return report

    @contextmanager
    def bulk_load(self) -> Iterator[None]:
        """No refreshes and no replicas while a new index is filled; restored even on failure.

        Elasticsearch's advice for initial loads: each refresh makes a segment, each replica
        indexes everything again.
        """
        current = self.engine.get_settings(self.name)
        previous = {
            index: {
                "refresh_interval": body["settings"]["index"].get("refresh_interval"),
                "number_of_replicas": body["settings"]["index"].get("number_of_replicas"),
            }
            for index, body in current.items()
        }
        # Written down in the index itself first: a process killed before the end cannot
        # restore them, so the next run that finds this note does (ensure()).
        for index, settings in previous.items():
            self._note_load(index, settings)
        self.engine.put_settings(
            self.name, {"index": {"refresh_interval": "-1", "number_of_replicas": 0}}
        )
        try:
            yield
        finally:
            for index, settings in previous.items():
                # None resets a setting to the cluster's default.
                self.engine.put_settings(index, {"index": settings})
                self._note_load(index, None)

    def _note_load(self, index: str, settings: dict[str, Any] | None) -> None:
        note = {LOAD_NOTE: {"restore": settings}} if settings is not None else {}
        self.engine.put_mapping(index, meta=note)

    def _finish_interrupted_load(self, mappings: dict[str, Any]) -> None:
        """Puts back the settings of indices whose first load never ended; notes them."""
        restored = {}
        for index, body in mappings.items():
            note = (body.get("mappings", {}).get("_meta") or {}).get(LOAD_NOTE)
            if note is None:
                continue
            settings = note.get("restore") or {}
            self.engine.put_settings(index, {"index": settings})
            self._note_load(index, None)
            restored[index] = settings
        self.restored_after_interrupted_load = restored

    def refresh(self) -> None:
        self.engine.refresh(self.name)

    def count(self, project_id: int | None, repository_name: str | None = None) -> int:
        return self.engine.count(self.name, _repository_query(project_id, repository_name))

    def _delete_by_query(self, query: dict[str, Any]) -> int:
        """For whole-repository sweeps only (removal, full refresh); never for ordinary updates.

        Done only when a count finds nothing left: documents changed under it (version
        conflicts) are swept again after a refresh; shard failures fail it.
        """
        deleted = 0
        for attempt in range(self.max_retries + 1):
            self.refresh()  # the sweep must see what this run just wrote
            response = self.engine.delete_by_query(
                self.name, query, conflicts="proceed", refresh=True, slices="auto"
            )
            deleted += int(response.get("deleted", 0))
            failures = response.get("failures") or []
            if failures:
                raise SweepError(
                    f"delete by query failed on {len(failures)} shards or documents "
                    f"({_error_text(failures[0].get('cause', failures[0]))}); "
                    f"{deleted} documents deleted so far"
                )
            if not response.get("version_conflicts"):
                break
            if attempt < self.max_retries:
                delay = min(self.max_backoff, self.initial_backoff * 2**attempt)
                self._sleep(delay * random.uniform(0.5, 1.0))
        self.refresh()
        left = self.engine.count(self.name, query)
        if left:
            raise SweepError(
                f"{left} documents still match after deleting {deleted} (written meanwhile, or "
                "conflicting past every retry)"
            )
        return deleted

    def delete_other_commits(self, project_id: int, commit_sha: str) -> int:
        """After a full refresh: everything of the project not written at this commit is stale."""
        query = {
            "bool": {
                "filter": [{"term": {"project_id": project_id}}],
                "must_not": [{"term": {"commit_sha": commit_sha}}],
            }
        }
        return self._delete_by_query(query)

    def delete_repository(self, project_id: int | None, repository_name: str) -> int:
        """Every document of a repository that left the fleet (deleted, archived, moved)."""
        return self._delete_by_query(_repository_query(project_id, repository_name))


def _repository_query(project_id: int | None, repository_name: str | None) -> dict[str, Any]:
    terms: list[dict[str, Any]] = []
    if project_id is not None:
        terms.append({"term": {"project_id": project_id}})
    if repository_name is not None:
        terms.append({"term": {"repository_name": repository_name}})
    return {"bool": {"filter": terms}}
