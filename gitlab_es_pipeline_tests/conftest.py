"""Fixtures: the two stand-ins over real HTTP, a corpus of real git repositories, Dagster."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import DagsterInstance, instance_for_test
from dagster._core.storage.defs_state.base import set_defs_state_storage

from gitlab_es_pipeline_tests.corpus import build_corpus
from gitlab_es_pipeline_tests.opensearch_node import OpenSearchNode
from gitlab_es_pipeline_tests.pipeline import Pipeline
from gitlab_es_pipeline_tests.postgres import TempPostgres
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn
from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn

ROOT = Path(__file__).resolve().parents[1]

# A killed run's repositories are free after a lease (runs/leases.py; 300 s in production): the
# tests that kill runs wait that long, and the processes they start inherit it.
os.environ.setdefault("LEASE_SECONDS", "10")


@pytest.fixture(autouse=True)
def _no_leftover_definitions_state() -> Iterator[None]:
    """Dagster keeps the current instance's definitions-state storage in a context variable.
    An instance that an earlier test opened in-process (the command line's `status` does) can
    leave it pointing at a disposed instance, and the next definitions load then fails with
    "Attempted to resolve undefined DagsterInstance weakref". Each test starts without it."""
    with set_defs_state_storage(None):
        yield


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


@pytest.fixture(scope="session")
def postgres() -> Iterator[TempPostgres]:
    # Not under pytest's tmp_path: that is private to root, and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="gitlab-es-pipeline-pg-"))
    server = TempPostgres(root).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    with instance_for_test(temp_dir=str(home)) as inst:
        yield inst


@pytest.fixture
def project_instance(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DagsterInstance]:
    """An instance from the project's own dagster.yaml, on SQLite or on a real PostgreSQL."""
    home = tmp_path / "dagster_home_project"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    monkeypatch.delenv("DAGSTER_PG_HOST", raising=False)
    if request.param == "postgres":
        server: TempPostgres = request.getfixturevalue("postgres")
        url = server.new_database(f"t{abs(hash(request.node.nodeid)) % 10**9}")
        monkeypatch.setenv("DAGSTER_PG_URL", url)
    inst = DagsterInstance.from_config(str(home))
    try:
        yield inst
    finally:
        inst.dispose()


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


@pytest.fixture
def project_pipeline(
    gitlab_server: GitLabStandIn,
    es_server: ElasticsearchStandIn,
    project_instance: DagsterInstance,
    tmp_path: Path,
) -> Pipeline:
    """A pipeline whose instance runs in other processes open too (DAGSTER_HOME)."""
    return Pipeline(gitlab_server, es_server, project_instance, tmp_path / "parquet")


@pytest.fixture(scope="session")
def opensearch_node() -> Iterator[OpenSearchNode]:
    """One real OpenSearch node for the session (started in about 10 s once built)."""
    root = Path(tempfile.mkdtemp(prefix="gitlab-es-pipeline-opensearch-"))
    node = OpenSearchNode(root / "node").start()
    yield node
    node.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def opensearch(opensearch_node: OpenSearchNode) -> OpenSearchNode:
    """The session's node, without the indices an earlier test made."""
    opensearch_node.delete_all_indices()
    return opensearch_node
