"""Runs the real Dagster definitions in-process against the stand-ins."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    ExecuteInProcessResult,
    RunsFilter,
    materialize,
)

from gitlab_es_pipeline.core.sensor_cursor import SensorCursor
from gitlab_es_pipeline.defs.assets import es_index, manifest_and_line_documents, repositories
from gitlab_es_pipeline.defs.io_managers import ParquetIOManager
from gitlab_es_pipeline.defs.jobs import BATCH_OP, batch_run_key, index_repositories_job
from gitlab_es_pipeline.defs.partitions import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    REPOSITORIES_PARTITION,
)
from gitlab_es_pipeline.defs.resources import (
    ElasticsearchResource,
    GitLabResource,
    IndexingResource,
)
from gitlab_es_pipeline.defs.sensors import COMMIT_TAG, SensorLimits, Tick, evaluate_tick
from gitlab_es_pipeline.runs.claims import BATCH_TAG, BATCH_TAG_VALUE
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn
from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn

INDEX = "gitlab-lines"
RUN_KEY_TAG = "dagster/run_key"  # Dagster's own tag; the daemon never launches one twice


@dataclass
class Pipeline:
    gitlab: GitLabStandIn
    es: ElasticsearchStandIn
    instance: DagsterInstance
    storage: Path
    groups: str = ""
    indexing: dict[str, Any] = field(default_factory=dict)
    gitlab_options: dict[str, Any] = field(default_factory=dict)
    es_options: dict[str, Any] = field(default_factory=dict)
    sensor_cursor: str | None = None

    def resources(self) -> dict[str, Any]:
        return {
            "gitlab": GitLabResource(
                url=self.gitlab.url,
                token=self.gitlab.token,
                groups=self.groups,
                **{"archive_retry_seconds": 0.05, **self.gitlab_options},
            ),
            "elasticsearch": ElasticsearchResource(
                **{
                    "url": self.es.url,
                    "api_key": self.es.api_key,
                    "index": INDEX,
                    "bulk_max_docs": 50,
                    **self.es_options,
                }
            ),
            "indexing": IndexingResource(**self.indexing),
            "parquet_io_manager": ParquetIOManager(base_path=str(self.storage)),
        }

    def discover(
        self, raise_on_error: bool = True, allow_mass_removal: bool = False
    ) -> ExecuteInProcessResult:
        return materialize(
            [repositories],
            instance=self.instance,
            resources=self.resources(),
            raise_on_error=raise_on_error,
            run_config={
                "ops": {"repositories": {"config": {"allow_mass_removal": allow_mass_removal}}}
            },
        )

    def latest_metadata(self, asset: str, partition: str | None = None) -> dict[str, Any]:
        """The metadata of an asset's latest materialization (of one partition), as values."""
        partitions = [partition] if partition is not None else None
        records = self.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=partitions), limit=1
        ).records
        materialization = records[0].asset_materialization
        assert materialization is not None
        return {k: v.value for k, v in materialization.metadata.items()}

    def latest_count_check(self) -> Any:
        """The newest evaluation of es_index's document-count check (passed, metadata)."""
        check = AssetCheckKey(AssetKey("es_index"), "document_count_matches_manifest")
        storage = self.instance.event_log_storage
        execution = storage.get_latest_asset_check_execution_by_key([check])[check]
        return execution.event.dagster_event.event_specific_data

    def partitions(self) -> list[str]:
        return sorted(self.instance.get_dynamic_partitions(REPOSITORIES_PARTITION))

    def index(
        self,
        partition: str,
        raise_on_error: bool = True,
        full_refresh: bool = False,
        tags: dict[str, str] | None = None,
    ) -> ExecuteInProcessResult:
        return materialize(
            [manifest_and_line_documents, es_index, repositories],
            selection=[manifest_and_line_documents, es_index],
            partition_key=partition,
            instance=self.instance,
            resources=self.resources(),
            raise_on_error=raise_on_error,
            tags=tags,
            run_config={
                "ops": {"manifest_and_line_documents": {"config": {"full_refresh": full_refresh}}}
            },
        )

    def write_alone(self, partition: str, raise_on_error: bool = False) -> ExecuteInProcessResult:
        """es_index alone for one partition, as its page's Materialize launches it: from what
        the last read stored."""
        return materialize(
            [manifest_and_line_documents, es_index, repositories],
            selection=[es_index],
            partition_key=partition,
            instance=self.instance,
            resources=self.resources(),
            raise_on_error=raise_on_error,
        )

    def _evaluate(self, limits: SensorLimits | None) -> Tick:
        """One evaluation of the HEAD-commit sensor; its cursor is kept between calls."""
        tick = evaluate_tick(
            self.instance,
            self.resources()["gitlab"].source(),
            self.resources()["gitlab"].group_paths(),
            SensorCursor.from_json(self.sensor_cursor),
            limits or SensorLimits(recheck_seconds=0),
            time.time(),
        )
        self.sensor_cursor = tick.cursor.to_json()
        return tick

    def sensor_tick(self, limits: SensorLimits | None = None) -> list[tuple[str, str, str]]:
        """One evaluation of the HEAD-commit sensor: what it asked for."""
        return self._evaluate(limits).requested

    def run_sensor_requests(
        self, limits: SensorLimits | None = None, raise_on_error: bool = True
    ) -> list[str]:
        """A tick, then the runs it asked for, as the daemon launches them: with the sensor's
        tags, and never a run key that a run already had."""
        launched = []
        for key, commit, run_key in self.sensor_tick(limits):
            if self.instance.get_run_records(RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1):
                continue
            tags = {RUN_KEY_TAG: run_key, COMMIT_TAG: commit}
            self.index(key, raise_on_error=raise_on_error, tags=tags)
            launched.append(key)
        return launched

    def run_tick(
        self, limits: SensorLimits | None = None, before_launch: Callable[[], Any] | None = None
    ) -> list[str]:
        """A tick, then every run it asked for (batches too) as the daemon launches them: with
        the sensor's tags, and never a run key that a run already had. The repositories of
        the runs launched, in order. before_launch: what happens between the two."""
        tick = self._evaluate(limits)
        if tick.added:  # as Dagster applies a SensorResult's partition requests: first
            self.instance.add_dynamic_partitions(REPOSITORIES_PARTITION, tick.added)
        if before_launch is not None:
            before_launch()
        launched: list[str] = []
        if tick.discover is not None:
            self.discover()
            launched.append("(discovery)")
        for request in [*([run] for run in tick.runs), *tick.batches]:
            run_key = (
                request[0][2] if len(request) == 1 else batch_run_key([k for *_, k in request])
            )
            if self.instance.get_run_records(RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1):
                continue
            if len(request) == 1:
                key, commit, _ = request[0]
                self.index(
                    key, raise_on_error=False, tags={RUN_KEY_TAG: run_key, COMMIT_TAG: commit}
                )
            else:
                self.index_batch(
                    {k: c for k, c, _ in request},
                    tags={RUN_KEY_TAG: run_key, BATCH_TAG: BATCH_TAG_VALUE},
                )
            launched.extend(k for k, _, _ in request)
        return launched

    def index_batch(
        self,
        repositories: dict[str, str] | list[str],
        raise_on_error: bool = False,
        full_refresh: bool = False,
        tags: dict[str, str] | None = None,
    ) -> ExecuteInProcessResult:
        """A run of index_repositories, as the sensor asks for one (commits: informational)."""
        members = (
            repositories
            if isinstance(repositories, dict)
            else dict.fromkeys(repositories, "0" * 40)
        )
        return index_repositories_job.execute_in_process(
            run_config={
                "ops": {
                    BATCH_OP: {"config": {"repositories": members, "full_refresh": full_refresh}}
                }
            },
            instance=self.instance,
            resources=self.resources(),
            raise_on_error=raise_on_error,
            tags=tags,
        )

    def index_range(
        self, first: str, last: str, es_index_only: bool = False, raise_on_error: bool = False
    ) -> ExecuteInProcessResult:
        """A backfill's run of the partitions from `first` to `last` (in the order discovery
        added them), tagged as the backfill daemon tags one (its BackfillPolicy)."""
        return materialize(
            [manifest_and_line_documents, es_index, repositories],
            selection=[es_index] if es_index_only else [manifest_and_line_documents, es_index],
            instance=self.instance,
            resources=self.resources(),
            raise_on_error=raise_on_error,
            tags={RANGE_START_TAG: first, RANGE_END_TAG: last},
        )

    def index_all(self) -> None:
        for key in self.partitions():
            self.index(key)
