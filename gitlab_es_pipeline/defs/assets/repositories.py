"""Discovery: the projects to index, one partition per project, and the index kept in step."""

import os
import time
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
from dagster import (
    AssetExecutionContext,
    AssetRecordsFilter,
    Config,
    DagsterEventType,
    DagsterInstance,
    Failure,
    MetadataValue,
    ResourceParam,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)
from pydantic import Field

from gitlab_es_pipeline.clients.elasticsearch import LineIndex, SweepError
from gitlab_es_pipeline.clients.engines import EngineError, EngineUnreachable
from gitlab_es_pipeline.clients.gitlab import GitLabError, GitLabSource
from gitlab_es_pipeline.core.projects import Project, is_indexable, projects_table
from gitlab_es_pipeline.core.reconcile import (
    IndexedIdentity,
    Orphan,
    ReconcileSettings,
    RoundState,
    identity_changes,
    identity_reason,
    orphans,
    plan_round,
    replaced_projects,
    run_round,
)
from gitlab_es_pipeline.core.removals import RemovalGuard
from gitlab_es_pipeline.defs.asset_keys import ES_INDEX, FILE_MANIFEST, REPOSITORIES
from gitlab_es_pipeline.defs.io_managers import ParquetStore
from gitlab_es_pipeline.defs.partitions import REPOSITORIES_PARTITION
from gitlab_es_pipeline.defs.pools import GITLAB_POOL, ensure_pools
from gitlab_es_pipeline.defs.resources import ElasticsearchResource, GitLabResource
from gitlab_es_pipeline.runs.indexed import (
    STAGED,
    WANTED,
    failing_partitions,
    fleet_state,
    forget,
    want,
)

_PREVIEW_ROWS = 200  # the full list is the asset's Parquet file
_IDS_PER_QUERY = 500  # storage ids or partitions in one query of Dagster's storage


class DiscoveryConfig(Config):
    allow_mass_removal: bool = Field(
        default=False,
        description="Remove the repositories that are gone even when they are more than "
        "discovery removes on its own (GitLabResource removal_guard_share / _count): set it "
        "from the launchpad once you know they are really gone.",
    )


@asset(
    key=REPOSITORIES,
    io_manager_key="parquet_io_manager",
    group_name="code_search",  # one group: the lineage page opens on the whole pipeline
    kinds={"gitlab", "parquet"},
    owners=["team:data-platform"],
    pool=GITLAB_POOL,
)
def repositories(
    context: AssetExecutionContext,
    config: DiscoveryConfig,
    gitlab: GitLabResource,
    elasticsearch: ElasticsearchResource,
    parquet_io_manager: ResourceParam[ParquetStore],
) -> pa.Table:
    """Every non-archived, non-empty project (in GITLAB_GROUPS if set), one partition each.

    A repository that is gone (deleted, archived, emptied, renamed, moved out of the groups)
    loses its partition, its documents and its indexed state, in that order of safety: the
    documents go first, so a failure leaves the partition to be removed again next hour.
    Documents of repositories that are no partition (orphans) go too. More removals at once
    than the guard allows fail the run with nothing changed, until a person confirms them
    (`allow_mass_removal`). Then the index is brought in step (docs/runs.md, *Convergence*):
    a repository whose identity changed, or whose HEAD the round finds moved, is wanted.
    """
    instance = context.instance
    ensure_pools(instance)
    source = gitlab.source()
    projects, left_out = _list_projects(source, gitlab.group_paths())
    found = {key: p.project_id for key, p in projects.items()}
    existing = set(instance.get_dynamic_partitions(REPOSITORIES_PARTITION))
    added, removed = sorted(found.keys() - existing), sorted(existing - found.keys())
    indexed = _indexed_identities(instance, existing)
    replaced = replaced_projects(found, indexed)
    index = elasticsearch.line_index()
    in_index, index_exists = _repositories_in_index(index, context)
    removing = {k: indexed[k].project_id if k in indexed else None for k in removed} | replaced
    orphaned = orphans(in_index or [], found, removing)
    _guard(context, config, gitlab, len(existing), [*removing, *(o.label for o in orphaned)])
    if added:
        instance.add_dynamic_partitions(REPOSITORIES_PARTITION, added)
    documents_deleted = _remove(
        context, index if index_exists else None, parquet_io_manager, removing, set(removed)
    )
    orphans_removed, orphan_documents = _remove_orphans(context, index, orphaned)
    kept = {k: r for k, r in indexed.items() if k in found and k not in replaced}
    convergence = _converge(context, source, projects, kept)
    table = projects_table(list(projects.values()))
    failing = failing_partitions(instance, sorted(found))
    context.log.info(
        f"{len(found)} repositories: {len(added)} added, {len(removed)} removed, "
        f"{len(replaced)} replaced, {orphans_removed} orphans removed"
    )
    context.add_output_metadata(
        {
            "dagster/row_count": table.num_rows,
            "partitions_added": len(added),
            "partitions_removed": len(removed),
            "removed": MetadataValue.md(_listed(removed)),
            "documents_deleted": documents_deleted,
            # Paths that now name another project: old documents and state gone, indexed anew.
            "partitions_replaced": MetadataValue.md(_listed(sorted(replaced))),
            "orphans_removed": orphans_removed,
            "orphan_documents_deleted": orphan_documents,
            "orphans": MetadataValue.md(_listed([o.label for o in orphaned])),
            "index_listed": in_index is not None,
            "projects_left_out": MetadataValue.int(left_out),
            # Repositories whose latest run failed; the UI marks their partitions failed too.
            "repositories_failing": len(failing),
            "failing": MetadataValue.md("\n".join(f"- {k}" for k in failing[:_PREVIEW_ROWS])),
            **convergence,
            "gitlab_requests": MetadataValue.json(dict(source.requests)),
            "projects": MetadataValue.table(
                records=[TableRecord(row) for row in table.slice(0, _PREVIEW_ROWS).to_pylist()],
                schema=TableSchema(
                    columns=[TableColumn(f.name, str(f.type)) for f in table.schema]
                ),
            ),
        }
    )
    return table


def _list_projects(source: GitLabSource, groups: list[str]) -> tuple[dict[str, Project], int]:
    """The indexable projects by partition key (groups may overlap: one entry per project)."""
    by_id: dict[int, Project] = {}
    left_out = 0
    for attrs in source.list_projects(groups):
        if is_indexable(attrs):
            project = Project.from_api(attrs)
            by_id[project.project_id] = project
        else:
            left_out += 1
    return {p.partition_key: p for p in by_id.values()}, left_out


def _indexed_identities(
    instance: DagsterInstance, partitions: set[str]
) -> dict[str, IndexedIdentity]:
    """The last es_index record of every indexed partition among these, in a few queries: the
    newest record's storage id per partition (one query), then the records by id in chunks."""
    fleet = fleet_state(instance)
    wanted = {fleet.latest[k]: k for k in partitions & fleet.indexed}
    ids = sorted(wanted)
    out: dict[str, IndexedIdentity] = {}
    for start in range(0, len(ids), _IDS_PER_QUERY):
        chunk = ids[start : start + _IDS_PER_QUERY]
        only = AssetRecordsFilter(asset_key=ES_INDEX, storage_ids=chunk)
        for record in instance.fetch_materializations(only, limit=len(chunk)).records:
            materialization = record.asset_materialization
            if materialization is None or record.storage_id not in wanted:
                continue
            values = {k: v.value for k, v in materialization.metadata.items()}
            identity = IndexedIdentity.from_metadata(values, record.storage_id)
            if identity is not None:
                out[wanted[record.storage_id]] = identity
    return out


def _repositories_in_index(
    index: LineIndex, context: AssetExecutionContext
) -> tuple[list[tuple[str, int, int]] | None, bool]:
    """What the index holds (None when it could not be listed), and whether it exists. A
    cluster that does not answer does not stop discovery: orphans wait for the next one."""
    try:
        listed = index.repositories_in_index()
    except (EngineError, EngineUnreachable) as exc:
        context.log.warning(f"could not list the repositories in the index ({exc}); orphans wait")
        return None, True
    return (listed or []), listed is not None


def _guard(
    context: AssetExecutionContext,
    config: DiscoveryConfig,
    gitlab: GitLabResource,
    partitions: int,
    removing: list[str],
) -> None:
    guard = RemovalGuard(gitlab.removal_guard_share, gitlab.removal_guard_count)
    refusal = guard.refusal(partitions, removing)
    if refusal is not None and not config.allow_mass_removal:
        raise Failure(
            description=refusal,
            metadata={
                "partitions_to_remove": len(removing),
                "partitions": partitions,
                "to_remove": MetadataValue.md(_listed(removing)),
            },
            allow_retries=False,
        )
    if refusal is not None:
        context.log.warning(f"removing {len(removing)} repositories, confirmed by run config")


def _remove(
    context: AssetExecutionContext,
    index: LineIndex | None,
    store: ParquetStore,
    removing: dict[str, int | None],
    gone: set[str],
) -> int:
    """Documents (by path, and by project id when known: a first load that failed left some
    with no indexed state), state and files of each repository removed; the partitions of
    those gone from GitLab, last. No index (None): no documents to delete."""
    documents_deleted = 0
    for key, project_id in removing.items():
        try:
            deleted = index.delete_repository(project_id, key) if index is not None else 0
        except SweepError as exc:  # the partition stays, to be removed again next time
            raise Failure(f"{key}: removing its documents: {exc}") from exc
        except EngineError as exc:
            if exc.status != 404:  # no index: nothing of it was ever written
                raise
            deleted = 0
        forget(context.instance, key, deleted)
        store.forget_partition(STAGED, key)  # its copies of the source too
        documents_deleted += deleted
        if key in gone:
            context.instance.delete_dynamic_partition(REPOSITORIES_PARTITION, key)
            context.log.info(f"{key}: gone from GitLab; partition, documents and files removed")
        else:
            context.log.info(
                f"{key}: now another project than {project_id}; its documents and state "
                "removed, indexed anew"
            )
    return documents_deleted


def _remove_orphans(
    context: AssetExecutionContext, index: LineIndex, orphaned: list[Orphan]
) -> tuple[int, int]:
    """Documents of repositories that are no partition; one that fails is found again next
    time (it has no state in Dagster to keep in step)."""
    removed = documents = 0
    for orphan in orphaned:
        try:
            deleted = index.delete_repository(orphan.project_id, orphan.repository_name)
        except SweepError as exc:
            context.log.warning(f"{orphan.label}: removing its documents: {exc}; next time")
            continue
        removed += 1
        documents += deleted
        context.log.info(f"{orphan.label}: {deleted} documents removed")
    return removed, documents


def _converge(
    context: AssetExecutionContext,
    source: GitLabSource,
    projects: dict[str, Project],
    indexed: dict[str, IndexedIdentity],
) -> dict[str, Any]:
    """Identity changes and the round's slice of HEAD lookups; each repository found out of
    step is wanted (runs/indexed.want), unless a want of it is already waiting."""
    settings = ReconcileSettings.from_env(os.environ)
    now = time.time()
    identity = {
        key: identity_reason(changes)
        for key, record in indexed.items()
        if (changes := identity_changes(record, projects[key]))
    }
    plan = plan_round(indexed, _previous_round(context), now, settings)

    def head(key: str) -> str | None:
        project = projects[key]
        try:
            return source.head_commit(project.project_id, project.default_branch or "")
        except GitLabError as exc:
            context.log.warning(f"{key}: reconciliation could not look up HEAD ({exc}); next time")
            return None

    outcome = run_round([k for k in plan.keys if k not in identity], indexed, head)
    wants = {**outcome.wanted, **identity}
    pending = _pending_wants(context.instance, {k: indexed[k].storage_id for k in wants})
    for key in sorted(wants.keys() - pending):
        want(context.instance, key, wants[key])
        context.log.info(f"{key}: wanted: {wants[key]}")
    return {
        "identity_changed": len(identity),
        "identity_changes": MetadataValue.md(_listed([f"{k}: {r}" for k, r in identity.items()])),
        "reconciled": outcome.reconciled + sum(1 for k in plan.keys if k in identity),
        "reconcile_lookups": outcome.lookups,
        "reconcile_wanted": len(outcome.wanted),
        "reconcile_failed": len(outcome.failed),
        "reconcile_slice": plan.size,
        "wants_recorded": len(wants.keys() - pending),
        "wants_already_waiting": len(pending),
        # The round's position, read back by the next discovery.
        "reconcile_after": plan.after,
        "reconciled_at": MetadataValue.timestamp(now),
        "reconcile_retry": MetadataValue.json(outcome.failed),
    }


def _previous_round(context: AssetExecutionContext) -> RoundState:
    event = context.instance.get_latest_materialization_event(context.asset_key)
    materialization = event.asset_materialization if event is not None else None
    if materialization is None:
        return RoundState()
    return RoundState.from_metadata({k: v.value for k, v in materialization.metadata.items()})


def _pending_wants(instance: DagsterInstance, indexed_at: dict[str, int]) -> set[str]:
    """Partitions with a want newer than their last es_index record (storage ids): asking
    again would index them twice for one change."""
    keys = sorted(indexed_at)
    newer: list[str] = []
    for start in range(0, len(keys), _IDS_PER_QUERY):
        latest = instance.get_latest_storage_id_by_partition(
            FILE_MANIFEST,
            DagsterEventType.ASSET_OBSERVATION,
            partitions=set(keys[start : start + _IDS_PER_QUERY]),
        )
        newer.extend(k for k, sid in latest.items() if sid > indexed_at[k])
    pending = set()
    for key in newer:  # few: only those observed since their last record
        only = AssetRecordsFilter(
            asset_key=FILE_MANIFEST, asset_partitions=[key], after_storage_id=indexed_at[key]
        )
        records = instance.fetch_observations(only, limit=100).records
        if any(r.asset_observation and WANTED in r.asset_observation.metadata for r in records):
            pending.add(key)
    return pending


def _listed(keys: Iterable[str]) -> str:
    keys = list(keys)
    shown = "\n".join(f"- {k}" for k in keys[:_PREVIEW_ROWS])
    more = len(keys) - _PREVIEW_ROWS
    return shown + (f"\n- ... and {more} more" if more > 0 else "") if keys else "none"
