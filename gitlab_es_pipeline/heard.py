"""What the hook receiver heard, kept in Dagster's storage until the sensor reads it.

Each event is a runless observation of the `repositories` asset: written before the receiver
acknowledges the delivery, so a restart of the receiver, the daemon or the sensor loses
nothing acknowledged; read by the HEAD-commit sensor from its cursor on (a storage id). No
other store: the receiver keeps nothing but a short memory of delivery ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dagster import AssetKey, AssetObservation, AssetRecordsFilter, DagsterInstance

from gitlab_es_pipeline.core.hooks import HookEvent

REPOSITORIES = AssetKey("repositories")
HEARD = "heard"  # the metadata key that marks an observation as a hook's


def hear(instance: DagsterInstance, events: Iterable[HookEvent]) -> None:
    for event in events:
        instance.report_runless_asset_event(
            AssetObservation(asset_key=REPOSITORIES, metadata={HEARD: True, **event.as_metadata()})
        )


@dataclass(frozen=True)
class Heard:
    events: list[HookEvent]
    after: int  # the storage id to read from next
    more: bool  # more are waiting: read again next tick


def heard_since(instance: DagsterInstance, after: int, limit: int = 5000) -> Heard:
    """The events recorded after this storage id, oldest first."""
    page = instance.fetch_observations(
        AssetRecordsFilter(asset_key=REPOSITORIES, after_storage_id=after or None),
        limit=limit,
        ascending=True,
    )
    events = []
    for record in page.records:
        after = max(after, record.storage_id)
        observation = record.asset_observation
        if observation is None or HEARD not in observation.metadata:
            continue
        meta = {k: v.value for k, v in observation.metadata.items()}
        try:
            events.append(HookEvent.from_metadata(meta))
        except (KeyError, ValueError):
            continue  # written by another version: the poll covers it
    return Heard(events, after, page.has_more)


def last_storage_id(instance: DagsterInstance) -> int:
    """Where a new cursor starts: events recorded before the sensor first ran are covered by
    its first listing."""
    page = instance.fetch_observations(
        AssetRecordsFilter(asset_key=REPOSITORIES), limit=1, ascending=False
    )
    return page.records[0].storage_id if page.records else 0
