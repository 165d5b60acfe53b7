"""Runs the real Dagster definitions in-process against the stand-ins."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, ExecuteInProcessResult, materialize

from gitlab_es_pipeline.assets import es_index, manifest_and_line_documents, repositories
from gitlab_es_pipeline.io_managers import ParquetIOManager
from gitlab_es_pipeline.partitions import REPOSITORIES_PARTITION
from gitlab_es_pipeline.resources import ElasticsearchResource, GitLabResource, IndexingResource
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn
from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn

INDEX = "gitlab-lines"


@dataclass
class Pipeline:
    gitlab: GitLabStandIn
    es: ElasticsearchStandIn
    instance: DagsterInstance
    storage: Path
    groups: str = ""
    indexing: dict[str, Any] = field(default_factory=dict)

    def resources(self) -> dict[str, Any]:
        return {
            "gitlab": GitLabResource(
                url=self.gitlab.url, token=self.gitlab.token, groups=self.groups
            ),
            "elasticsearch": ElasticsearchResource(
                url=self.es.url, api_key=self.es.api_key, index=INDEX, bulk_max_docs=50
            ),
            "indexing": IndexingResource(**self.indexing),
            "parquet_io_manager": ParquetIOManager(base_path=str(self.storage)),
        }

    def discover(self) -> ExecuteInProcessResult:
        return materialize([repositories], instance=self.instance, resources=self.resources())

    def partitions(self) -> list[str]:
        return sorted(self.instance.get_dynamic_partitions(REPOSITORIES_PARTITION))

    def index(self, partition: str, raise_on_error: bool = True) -> ExecuteInProcessResult:
        return materialize(
            [manifest_and_line_documents, es_index, repositories],
            selection=[manifest_and_line_documents, es_index],
            partition_key=partition,
            instance=self.instance,
            resources=self.resources(),
            raise_on_error=raise_on_error,
        )

    def index_all(self) -> None:
        for key in self.partitions():
            self.index(key)
