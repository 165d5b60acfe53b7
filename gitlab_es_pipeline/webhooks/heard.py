"""What the hook receiver heard, kept in Dagster's storage until the sensor reads it.

Each event is a runless observation of the `repositories` asset: written before the receiver
acknowledges the delivery, so a restart of the receiver, the daemon or the sensor loses
nothing acknowledged; read by the HEAD-commit sensor from its cursor on (a storage id). No
other store: the receiver keeps nothing but a short memory of delivery ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dagster import AssetObservation, AssetRecordsFilter, DagsterInstance

from gitlab_es_pipeline.core.webhooks import HookEvent
from gitlab_es_pipeline.defs.asset_keys import REPOSITORIES

HEARD = "heard"  # the metadata key that marks an observation as a hook's


def hear(instance: DagsterInstance, events: Iterable[HookEvent], hook: str = "") -> None:
    """hook: which hook delivered them (its kind and X-Gitlab-Webhook-UUID), for `status`."""
    for event in events:
        instance.report_runless_asset_event(
            AssetObservation(
                asset_key=REPOSITORIES,
                metadata={HEARD: True, "hook": hook, **event.as_metadata()},
            )
        )


DELIVERED = "delivered"  # the metadata key of a delivery that brought nothing new


def note_delivery(instance: DagsterInstance, hook: str) -> None:
    """A hook delivered only what was recorded before (a duplicate): `status` still sees the
    hook alive. The receiver notes it at most once a minute per hook."""
    instance.report_runless_asset_event(
        AssetObservation(asset_key=REPOSITORIES, metadata={DELIVERED: True, "hook": hook})
    )


def last_deliveries(instance: DagsterInstance, look_back: int = 10_000) -> dict[str, float]:
    """Each hook's last recorded delivery (unix time), among the newest events: a hook not
    heard from in that many events shows as not heard."""
    page = instance.fetch_observations(
        AssetRecordsFilter(asset_key=REPOSITORIES), limit=look_back, ascending=False
    )
    last: dict[str, float] = {}
    for record in page.records:
        observation = record.asset_observation
        if observation is None or not ({HEARD, DELIVERED} & observation.metadata.keys()):
            continue
        hook = observation.metadata.get("hook")
        name = str(hook.value) if hook is not None and hook.value else "(unnamed hook)"
        last.setdefault(name, record.timestamp)
    return last


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
