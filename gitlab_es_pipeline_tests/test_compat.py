"""Elasticsearch 8 and 9: the client's major must match the cluster's.

CI runs this file (with the bulk writer and pipeline tests) once with the 9.x client of the
main environment and once with an 8.x client (`.ci/run`). Each client indexes exactly into a
cluster of its own major, and into a 9.x cluster the 8.x client still works (REST
compatibility); a 9.x client against an 8.x cluster fails at once, saying what to install.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import elasticsearch
import pytest
from dagster import DagsterInstance

from gitlab_es_pipeline.cli.main import main
from gitlab_es_pipeline_tests.corpus import expected_after_runs
from gitlab_es_pipeline_tests.pipeline import INDEX, Pipeline
from gitlab_es_pipeline_tests.repos import commit_files, init_repo
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn
from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn

CLIENT_MAJOR = int(elasticsearch.__versionstr__.split(".")[0])
FILES = {"src/app.py": "def main():\n    return 42\n", "README.md": "# App\n"}


@dataclass
class OneRepository:
    pipeline: Pipeline
    repo: Path
    commit: str
    project: Any


def _one_repository(
    gitlab_server: GitLabStandIn, instance: DagsterInstance, tmp_path: Path, major: int
) -> OneRepository:
    es = ElasticsearchStandIn(api_key="es-stand-in-key", major=major).start()
    pipeline = Pipeline(gitlab_server, es, instance, tmp_path / "parquet")
    repo = init_repo(tmp_path / "app")
    commit = commit_files(repo, FILES)
    project = gitlab_server.add_project("team/app", str(repo))
    pipeline.discover()
    return OneRepository(pipeline, repo, commit, project)


@pytest.mark.parametrize("server_major", sorted({CLIENT_MAJOR, 9}))
def test_the_client_indexes_into_a_cluster_that_accepts_it(
    gitlab_server: GitLabStandIn, instance: DagsterInstance, tmp_path: Path, server_major: int
) -> None:
    one = _one_repository(gitlab_server, instance, tmp_path, server_major)
    pipeline, project = one.pipeline, one.project
    try:
        pipeline.index("team/app")
        expected = expected_after_runs(
            one.repo,
            [one.commit],
            project.id,
            "team/app",
            project.default_branch_name,
            f"{pipeline.gitlab.url}/team/app",
            known_text={},
        ).documents
        assert pipeline.es.documents(INDEX) == expected
    finally:
        pipeline.es.stop()


@pytest.mark.skipif(CLIENT_MAJOR < 9, reason="only a client newer than the cluster is refused")
def test_a_newer_client_than_the_cluster_fails_saying_what_to_install(
    gitlab_server: GitLabStandIn,
    instance: DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pipeline = _one_repository(gitlab_server, instance, tmp_path, CLIENT_MAJOR - 1).pipeline
    try:
        result = pipeline.index("team/app", raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        message = failure.step_failure_data.error.message
        assert f"elasticsearch>={CLIENT_MAJOR - 1}.13,<{CLIENT_MAJOR}" in message
        assert pipeline.es.documents(INDEX) == {}
        # Failed for good: Dagster's RetryPolicy does not try again.
        attempts = [e for e in result.all_events if e.event_type_value == "STEP_START"]
        assert len([e for e in attempts if e.step_key == failure.step_key]) == 1

        monkeypatch.setenv("ELASTICSEARCH_URL", pipeline.es.url)
        monkeypatch.setenv("ELASTICSEARCH_API_KEY", pipeline.es.api_key or "")
        assert main(["search", "main"], out=io.StringIO()) == 2
        assert f"elasticsearch>={CLIENT_MAJOR - 1}.13,<{CLIENT_MAJOR}" in capsys.readouterr().err
    finally:
        pipeline.es.stop()
