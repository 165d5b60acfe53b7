"""The search cluster side: index setup and bulk writes that retry exactly what failed.

Engine-neutral: the calls go through clients.engines (Elasticsearch or OpenSearch)."""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
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

# The mapping's _meta key under which a first load notes the settings to restore, who loads
# (`owner`) and when that loader last said it was alive (`heartbeat`, Unix time).
LOAD_NOTE = "gitlab_es_pipeline_first_load"
# A loader renews its heartbeat at most this often, as its chunks are answered...
LOAD_HEARTBEAT_SECONDS = 60.0
# ...and, when no `load_alive` predicate is given, a note not renewed for this long is taken
# for a load whose process is gone. Well above the longest pause between two chunks (a
# chunk's retries back off up to a few minutes) and any clock skew between hosts.
LOAD_STALE_AFTER_SECONDS = 600.0

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


def default_load_owner() -> str:
    """Who loads, when the caller does not say: this host and process, made unique."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class _Load:
    """A first load that this LineIndex runs now."""

    owner: str
    restore: dict[str, dict[str, Any]]  # concrete index -> the settings to put back
    heartbeat: float  # when the notes last said the loader was alive

    def note(self, index: str) -> dict[str, Any]:
        return {"restore": self.restore[index], "owner": self.owner, "heartbeat": self.heartbeat}


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
        heartbeat_seconds: float = LOAD_HEARTBEAT_SECONDS,
        clock: Callable[[], float] = time.time,
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
        self.heartbeat_seconds = heartbeat_seconds
        self._sleep = sleep
        self._clock = clock
        self._load: _Load | None = None
        # What the last ensure() found: first loads it finished for a dead loader (index ->
        # the settings put back), and those it left to a live one (index -> owner).
        self.restored_after_interrupted_load: dict[str, dict[str, Any]] = {}
        self.loads_in_progress: dict[str, str] = {}
        # Called before every request that changes documents (each bulk attempt, each sweep):
        # raises when the writer may no longer write (its lease on the repository is gone).
        self.fence: Callable[[], None] | None = None

    def _exists(self) -> bool:
        try:
            return self.engine.index_exists(self.name)
        except EngineError as exc:
            if exc.status != 400:
                raise
            raise IndexSetupError(exc.reason) from None

    def ensure(
        self,
        load_alive: Callable[[str], bool] | None = None,
        stale_after_seconds: float = LOAD_STALE_AFTER_SECONDS,
    ) -> str:
        """Create `<name>-v<N>` with our mapping and `<name>` as its alias, unless it exists.

        An existing index or alias is checked: it must carry every field of our mapping (those
        added by later versions are put in), and an alias must point at one index. One whose
        first load was cut short (the process killed inside bulk_load) gets back the settings
        it had before (`restored_after_interrupted_load` says which); a first load still
        running is left alone (`loads_in_progress`). Which is which: `load_alive(owner)`, given
        the owner its bulk_load() was given; without it, a load whose heartbeat is older than
        `stale_after_seconds` is taken for dead.
        """
        if self._exists():
            mappings = self.engine.get_mapping(self.name)
            self._finish_interrupted_load(mappings, load_alive, stale_after_seconds)
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
                if self.fence is not None:
                    self.fence()
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
        `progress` is told the operations done so far after each chunk; inside bulk_load(),
        the load's heartbeat is renewed as chunks are answered.
        """
        report = BulkReport()
        chunks = chunk_operations(operations, self.max_chunk_bytes, self.max_chunk_docs)
        in_flight: set[Future[BulkReport]] = set()

        def collect(done: set[Future[BulkReport]]) -> None:
            for future in done:  # a report per chunk, as each is answered
                in_flight.discard(future)
                report.merge(future.result())
                self._renew_heartbeat()
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
    def bulk_load(self, owner: str | None = None) -> Iterator[None]:
        """No refreshes and no replicas while a new index is filled; restored even on failure.

        Elasticsearch's advice for initial loads: each refresh makes a segment, each replica
        indexes everything again. `owner` says who loads (a run id: what ensure()'s
        `load_alive` is asked about); by default this host and process.
        """
        current = self.engine.get_settings(self.name)
        load = _Load(
            owner or default_load_owner(),
            {
                index: {
                    "refresh_interval": body["settings"]["index"].get("refresh_interval"),
                    "number_of_replicas": body["settings"]["index"].get("number_of_replicas"),
                }
                for index, body in current.items()
            },
            self._clock(),
        )
        # Written down in the index itself first: a process killed before the end cannot
        # restore them, so the next run that finds this note, its loader dead, does (ensure()).
        for index in load.restore:
            self._note_load(index, load.note(index))
        self._load = load
        try:
            self.engine.put_settings(
                self.name, {"index": {"refresh_interval": "-1", "number_of_replicas": 0}}
            )
            yield
        finally:
            self._load = None
            for index, settings in load.restore.items():
                # None resets a setting to the cluster's default.
                self.engine.put_settings(index, {"index": settings})
                self._note_load(index, None)

    def _renew_heartbeat(self) -> None:
        """Inside bulk_load, at most every `heartbeat_seconds`: the notes say we are alive."""
        load = self._load
        now = self._clock()
        if load is None or now - load.heartbeat < self.heartbeat_seconds:
            return
        load.heartbeat = now
        try:
            for index in load.restore:
                self._note_load(index, load.note(index))
        except (EngineError, EngineUnreachable):
            pass  # the load goes on; the next heartbeat tries again

    def _note_load(self, index: str, note: dict[str, Any] | None) -> None:
        """Sets (None: removes) the LOAD_NOTE entry of the index's mapping `_meta`.

        A mapping update replaces `_meta` whole, so the other entries are read and sent back.
        (Not atomic: an entry someone else changes between the two requests is lost.)
        """
        mappings = self.engine.get_mapping(index)
        body: dict[str, Any] = mappings.get(index) or next(iter(mappings.values()), {})
        meta = dict(body.get("mappings", {}).get("_meta") or {})
        if note is not None:
            meta[LOAD_NOTE] = note
        elif meta.pop(LOAD_NOTE, None) is None:
            return
        self.engine.put_mapping(index, meta=meta)

    def _loader_alive(
        self,
        note: dict[str, Any],
        load_alive: Callable[[str], bool] | None,
        stale_after_seconds: float,
    ) -> bool:
        owner = note.get("owner")
        if self._load is not None and owner == self._load.owner:
            return True  # our own load
        if load_alive is not None:
            return isinstance(owner, str) and load_alive(owner)
        heartbeat = note.get("heartbeat")
        if not isinstance(heartbeat, (int, float)):
            return False  # noted by a version without heartbeats: long gone
        return self._clock() - heartbeat <= stale_after_seconds

    def _finish_interrupted_load(
        self,
        mappings: dict[str, Any],
        load_alive: Callable[[str], bool] | None,
        stale_after_seconds: float,
    ) -> None:
        """Puts back the settings of indices whose first load died; says which, and which
        loads still run."""
        restored, in_progress = {}, {}
        for index, body in mappings.items():
            note = (body.get("mappings", {}).get("_meta") or {}).get(LOAD_NOTE)
            if not isinstance(note, dict):
                continue
            if self._loader_alive(note, load_alive, stale_after_seconds):
                in_progress[index] = str(note.get("owner"))
                continue
            settings = note.get("restore") or {}
            self.engine.put_settings(index, {"index": settings})
            self._note_load(index, None)
            restored[index] = settings
        self.restored_after_interrupted_load = restored
        self.loads_in_progress = in_progress

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
            if self.fence is not None:
                self.fence()
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

    def repositories_in_index(self, page_size: int = 1000) -> list[tuple[str, int, int]] | None:
        """Every (repository_name, project_id, documents) the index holds, in that order: a
        `composite` aggregation of the two fields (keyword and long, both with doc values),
        paged with its `after_key`, no hits (size 0). None when there is no index yet.

        Each page is one search that reads the two fields' doc values of every document, so
        the cost follows the documents, not the pages: keep pages large.
        """
        sources = [
            {"repository_name": {"terms": {"field": "repository_name"}}},
            {"project_id": {"terms": {"field": "project_id"}}},
        ]
        found: list[tuple[str, int, int]] = []
        after: dict[str, Any] | None = None
        while True:
            composite: dict[str, Any] = {"size": page_size, "sources": sources}
            if after is not None:
                composite["after"] = after
            aggs = {"pairs": {"composite": composite}}
            body = {"size": 0, "track_total_hits": False, "aggs": aggs}
            try:
                response = self.engine.search(self.name, body)
            except EngineError as exc:
                if exc.status == 404:
                    return None
                raise
            aggregation = response["aggregations"]["pairs"]
            buckets = aggregation.get("buckets") or []
            found.extend(
                (str(key["repository_name"]), int(key["project_id"]), int(b["doc_count"]))
                for b in buckets
                for key in [b["key"]]
            )
            after = aggregation.get("after_key")
            if after is None or len(buckets) < page_size:
                return found


def _repository_query(project_id: int | None, repository_name: str | None) -> dict[str, Any]:
    terms: list[dict[str, Any]] = []
    if project_id is not None:
        terms.append({"term": {"project_id": project_id}})
    if repository_name is not None:
        terms.append({"term": {"repository_name": repository_name}})
    return {"bool": {"filter": terms}}
