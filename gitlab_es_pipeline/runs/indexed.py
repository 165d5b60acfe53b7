"""The indexed state of a repository, read from Dagster's own storage.

The last indexed commit is the newest `es_index` materialization of the partition (its data
version and `commit_sha` metadata). There is no other store of it. When a repository leaves
the fleet, its documents are deleted and an `es_index` *observation* with `removed: true` is
recorded: a materialization older than that observation no longer counts, so a repository
that comes back starts over. (Dagster's open-source storages cannot wipe one partition.)
"""

from dataclasses import dataclass, field
from typing import cast

from dagster import (
    AssetObservation,
    AssetPartitionStatus,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
)

from gitlab_es_pipeline.defs.asset_keys import DEAD_LETTERS, ES_INDEX, FILE_MANIFEST, LINE_DOCUMENTS
from gitlab_es_pipeline.defs.partitions import repository_partitions

# Everything kept on disk for a partition: all of it goes when its repository leaves.
STAGED = [FILE_MANIFEST, LINE_DOCUMENTS, ES_INDEX, DEAD_LETTERS]


@dataclass(frozen=True)
class IndexedState:
    commit_sha: str
    project_id: int | None
    storage_id: int
    timestamp: float
    lines: int | None = None  # line documents the manifest of that commit says it holds
    files: int | None = None  # files indexed at that commit


def last_indexed(instance: DagsterInstance, partition: str) -> IndexedState | None:
    only = AssetRecordsFilter(asset_key=ES_INDEX, asset_partitions=[partition])
    records = instance.fetch_materializations(only, limit=1).records
    if not records:
        return None
    record = records[0]
    removals = instance.fetch_observations(only, limit=1).records
    if removals and removals[0].storage_id > record.storage_id:
        return None
    metadata = record.asset_materialization.metadata if record.asset_materialization else {}
    commit = metadata.get("commit_sha")
    if commit is None:
        return None
    project = metadata.get("project_id")
    lines = metadata.get("lines")
    files = metadata.get("files_indexed", metadata.get("files"))  # "files" before the rename
    # Integer entries, all three (a metadata value's type is the union of every kind).
    return IndexedState(
        commit_sha=str(commit.value),
        project_id=int(cast(int, project.value)) if project is not None else None,
        storage_id=record.storage_id,
        timestamp=record.timestamp,
        lines=int(cast(int, lines.value)) if lines is not None else None,
        files=int(cast(int, files.value)) if files is not None else None,
    )


def written_since_read(instance: DagsterInstance, partition: str) -> bool:
    """The repository's last write (es_index) was recorded after its last read (file_manifest):
    what the read stored is what the index holds, and es_index alone has nothing to send."""
    latest = {
        key: instance.fetch_materializations(
            AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
        ).records
        for key in (FILE_MANIFEST, ES_INDEX)
    }
    read, written = latest[FILE_MANIFEST], latest[ES_INDEX]
    return bool(read and written and written[0].storage_id > read[0].storage_id)


@dataclass(frozen=True)
class FleetState:
    indexed: set[str]  # partitions with a materialization newer than any removal
    removed_at: dict[str, int]  # partition -> storage id of its newest removal
    latest: dict[str, int] = field(default_factory=dict)  # partition -> newest es_index record

    def epoch(self, partition: str) -> str:
        """Changes each time a repository is removed, so that its comeback is a new run."""
        removed = self.removed_at.get(partition)
        return f"r{removed}" if removed else ""


def fleet_state(instance: DagsterInstance) -> FleetState:
    """Which partitions are indexed, for the whole fleet in two queries."""
    latest = instance.get_latest_storage_id_by_partition(
        ES_INDEX, DagsterEventType.ASSET_MATERIALIZATION
    )
    removed_at: dict[str, int] = {}
    cursor = None
    while True:
        page = instance.fetch_observations(
            AssetRecordsFilter(asset_key=ES_INDEX), limit=1000, cursor=cursor
        )
        for record in page.records:
            key = record.partition_key
            if key is not None:
                removed_at[key] = max(removed_at.get(key, 0), record.storage_id)
        if not page.has_more:
            break
        cursor = page.cursor
    indexed = {key for key, sid in latest.items() if sid > removed_at.get(key, 0)}
    return FleetState(indexed, removed_at, dict(latest))


# The metadata key of a `file_manifest` observation that says the repository must be indexed
# again (and why), whatever its indexed commit says: its identity changed (discovery), or a
# hook heard of it. The HEAD-commit sensor reads these from its cursor on.
WANTED = "wanted"


def want(instance: DagsterInstance, partition: str, reason: str) -> None:
    """Ask the sensor to index the repository again, through Dagster's storage."""
    instance.report_runless_asset_event(
        AssetObservation(asset_key=FILE_MANIFEST, partition=partition, metadata={WANTED: reason})
    )


def forget(instance: DagsterInstance, partition: str, documents_deleted: int) -> None:
    """Record that the repository's documents are gone, so its old state no longer counts."""
    instance.report_runless_asset_event(
        AssetObservation(
            asset_key=ES_INDEX,
            partition=partition,
            metadata={"removed": True, "documents_deleted": documents_deleted},
        )
    )


def failing_partitions(instance: DagsterInstance, partitions: list[str]) -> list[str]:
    """Repositories whose latest attempt failed (reading or writing), as the UI shows them."""
    failing: set[str] = set()
    for asset_key in (FILE_MANIFEST, ES_INDEX):
        statuses = instance.get_status_by_partition(asset_key, partitions, repository_partitions)
        failing.update(
            key for key, status in (statuses or {}).items() if status == AssetPartitionStatus.FAILED
        )
    return sorted(failing)
