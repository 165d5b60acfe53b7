"""The Elasticsearch side: index setup and bulk writes that retry exactly what failed."""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from elastic_transport import JsonSerializer, NdjsonSerializer
from elasticsearch import (
    ApiError,
    ConnectionError,
    ConnectionTimeout,
    Elasticsearch,
    __versionstr__,
)
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from gitlab_es_pipeline.core.bulk import BulkOperations, ItemFailure, chunk_operations
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


class AcceptedBulk(dict[str, Any]):
    """A bulk response whose items all succeeded, read by counting instead of decoding.

    Decoding the 10,000 items of a bulk response costs a microsecond each, as much as a
    tenth of all the CPU the pipeline spends per line; with no errors, all the writer needs
    is how many items got which status. `items` is still there, decoded on first access.
    """

    _ACTIONS = (b"index", b"create", b"update", b"delete")
    _STATUSES = (200, 201, 404)

    def __init__(self, raw: bytes) -> None:
        super().__init__(errors=False)
        self.raw = raw

    def __missing__(self, key: str) -> Any:
        decoded = JsonSerializer().loads(self.raw)
        self.update(decoded)
        return decoded[key]

    def status_counts(self) -> Counter[tuple[str, int]] | None:
        """(action, status) -> items, or None when the compact form is not recognised."""
        counts: Counter[tuple[str, int]] = Counter()
        for action in self._ACTIONS:
            for status in self._STATUSES:
                n = self.raw.count(b'{"%s":{"status":%d' % (action, status))
                if n:
                    counts[(action.decode(), status)] = n
        return counts if counts.total() == self.raw.count(b'"status":') else None


class BulkResponseSerializer(JsonSerializer):
    """JSON, except that a bulk response without errors is handed over undecoded."""

    def loads(self, data: bytes) -> Any:
        items_at = data.find(b'"items":[')
        if items_at != -1 and b'"errors":false' in data[:items_at]:
            return AcceptedBulk(data)
        return super().loads(data)


class BulkBodySerializer(NdjsonSerializer):
    """NDJSON, except that a body already built as bytes goes out as it is, not copied."""

    def dumps(self, data: Any) -> bytes:
        if isinstance(data, bytes) and data.endswith(b"\n"):
            return data
        return super().dumps(data)


# The client's serializers for the bulk writer: bodies not copied, accepted responses counted.
SERIALIZERS = {
    JsonSerializer.mimetype: BulkResponseSerializer(),
    NdjsonSerializer.mimetype: BulkBodySerializer(),
}


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
    if isinstance(exc, (ConnectionError, ConnectionTimeout)):
        return True
    return isinstance(exc, ApiError) and exc.meta.status in RETRYABLE_ITEM_STATUSES


def client_mismatch(exc: ApiError) -> str | None:
    """What to do when the cluster refuses this client's major version, else None.

    Each client sends `compatible-with=<its major>`; a cluster accepts its own major and the
    one before, so a 9.x client is refused by 8.x clusters (400 media_type_header_exception).
    """
    if exc.meta.status != 400 or exc.error != "media_type_header_exception":
        return None
    major = int(__versionstr__.split(".")[0])
    return (
        f"the cluster refuses Elasticsearch client {__versionstr__} (an older cluster): the "
        f"client's major version must match the cluster's; for {major - 1}.x clusters install "
        f"'elasticsearch>={major - 1}.13,<{major}' (see the README's Deployment)"
    )


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return f"{error.get('type')}: {error.get('reason')}"
    return str(error)


class LineIndex:
    """The index (or alias) that searches use, and the bulk writer that fills it."""

    def __init__(
        self,
        client: Elasticsearch,
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
        self.client = client
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
            return bool(self.client.indices.exists(index=self.name))
        except ApiError as exc:
            if exc.meta.status != 400:
                raise
            try:  # a HEAD answer has no body: ask again with GET to learn why
                self.client.indices.get(index=self.name)
            except ApiError as detailed:
                reason = client_mismatch(detailed) or f"{detailed.error}: {detailed.message}"
                raise IndexSetupError(reason) from detailed
            raise

    def ensure(self) -> str:
        """Create `<name>-v<N>` with our mapping and `<name>` as its alias, unless it exists.

        An existing index or alias is checked: it must carry every field of our mapping (those
        added by later versions are put in), and an alias must point at one index. One whose
        first load was cut short (the process killed inside bulk_load) gets back the settings
        it had before (`restored_after_interrupted_load` says which).
        """
        if self._exists():
            mappings = self.client.indices.get_mapping(index=self.name)
            self._finish_interrupted_load(mappings.body)
            if len(mappings.body) > 1:
                raise IndexSetupError(
                    f"{self.name!r} is an alias of several indices "
                    f"({', '.join(sorted(mappings.body))}): stale documents are deleted by id, "
                    "which needs one index behind it; point the alias at one of them"
                )
            for index, body in mappings.body.items():
                properties = body.get("mappings", {}).get("properties", {})
                problems = missing_or_conflicting_fields(properties)
                if problems:
                    raise IndexSetupError(
                        f"index {index!r} behind {self.name!r} has an incompatible mapping: "
                        + "; ".join(problems)
                    )
                added = fields_to_add(properties)
                if added:  # an index made by an earlier version: new fields go in place
                    self.client.indices.put_mapping(index=index, properties=added)
            return "existing"
        concrete = concrete_index_name(self.name)
        try:
            self.client.indices.create(
                index=concrete,
                **index_body(),
                aliases={self.name: {"is_write_index": True}},
            )
        except ApiError as exc:
            if exc.meta.status == 400 and "already_exists" in str(exc.error):
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
                return self.client.bulk(
                    index=self.name, operations=body, filter_path=BULK_FILTER_PATH
                ).body
        raise AssertionError("unreachable")  # pragma: no cover

    def _write_chunk(self, chunk: BulkOperations) -> BulkReport:
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

        While they wait for Elasticsearch, this thread builds the next chunk; at most `workers`
        chunks are in flight plus the one being built, so memory is bounded by chunk size x
        (workers + 1).
        Items rejected for a while are re-sent alone, by the worker that sent them.
        `progress` is told the operations done so far after each chunk.
        """
        report = BulkReport()
        chunks = chunk_operations(operations, self.max_chunk_bytes, self.max_chunk_docs)
        in_flight: deque[Future[BulkReport]] = deque()

        def collect_oldest() -> None:
            report.merge(in_flight.popleft().result())
            if progress is not None:
                progress(report.succeeded + report.failed)

        with ThreadPoolExecutor(self.workers, thread_name_prefix="bulk") as pool:
            try:
                for chunk in chunks:
                    in_flight.append(pool.submit(self._write_chunk, chunk))
                    if len(in_flight) >= self.workers:
                        collect_oldest()
                while in_flight:
                    collect_oldest()
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
        current = self.client.indices.get_settings(index=self.name).body
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
        self.client.indices.put_settings(
            index=self.name, settings={"index": {"refresh_interval": "-1", "number_of_replicas": 0}}
        )
        try:
            yield
        finally:
            for index, settings in previous.items():
                # None resets a setting to the cluster's default.
                self.client.indices.put_settings(index=index, settings={"index": settings})
                self._note_load(index, None)

    def _note_load(self, index: str, settings: dict[str, Any] | None) -> None:
        note = {LOAD_NOTE: {"restore": settings}} if settings is not None else {}
        self.client.indices.put_mapping(index=index, meta=note)

    def _finish_interrupted_load(self, mappings: dict[str, Any]) -> None:
        """Puts back the settings of indices whose first load never ended; notes them."""
        restored = {}
        for index, body in mappings.items():
            note = (body.get("mappings", {}).get("_meta") or {}).get(LOAD_NOTE)
            if note is None:
                continue
            settings = note.get("restore") or {}
            self.client.indices.put_settings(index=index, settings={"index": settings})
            self._note_load(index, None)
            restored[index] = settings
        self.restored_after_interrupted_load = restored

    def refresh(self) -> None:
        self.client.indices.refresh(index=self.name)

    def count(self, project_id: int | None, repository_name: str | None = None) -> int:
        return int(
            self.client.count(
                index=self.name, query=_repository_query(project_id, repository_name)
            )["count"]
        )

    def _delete_by_query(self, query: dict[str, Any]) -> int:
        """For whole-repository sweeps only (removal, full refresh); never for ordinary updates.

        Done only when a count finds nothing left: documents changed under it (version
        conflicts) are swept again after a refresh; shard failures fail it.
        """
        deleted = 0
        for attempt in range(self.max_retries + 1):
            self.refresh()  # the sweep must see what this run just wrote
            response = self.client.delete_by_query(
                index=self.name, query=query, conflicts="proceed", refresh=True, slices="auto"
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
        left = int(self.client.count(index=self.name, query=query)["count"])
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
