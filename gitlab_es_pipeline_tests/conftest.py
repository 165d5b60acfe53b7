"""Fixtures: the two stand-ins over real HTTP, a corpus of real git repositories, Dagster."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import DagsterInstance, instance_for_test

from gitlab_es_pipeline_tests.corpus import build_corpus
from gitlab_es_pipeline_tests.pipeline import Pipeline
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn
from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn


@pytest.fixture
def gitlab_server() -> Iterator[GitLabStandIn]:
    server = GitLabStandIn().start()
    yield server
    server.stop()


@pytest.fixture
def es_server() -> Iterator[ElasticsearchStandIn]:
    server = ElasticsearchStandIn(api_key="es-stand-in-key").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def corpus_repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    with instance_for_test(temp_dir=str(home)) as inst:
        yield inst


@dataclass
class Services:
    gitlab: GitLabStandIn
    es: ElasticsearchStandIn


@pytest.fixture
def pipeline(
    gitlab_server: GitLabStandIn,
    es_server: ElasticsearchStandIn,
    instance: DagsterInstance,
    tmp_path: Path,
) -> Pipeline:
    return Pipeline(gitlab_server, es_server, instance, tmp_path / "parquet")
