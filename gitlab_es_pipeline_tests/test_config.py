"""Configuration mistakes get one clear sentence when a run sets up, not a trace deep in it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterInvalidConfigError, EnvVar, materialize
from pydantic import ValidationError

from gitlab_es_pipeline.core.mapping import index_body
from gitlab_es_pipeline.defs.assets import repositories
from gitlab_es_pipeline.defs.io_managers import ParquetIOManager
from gitlab_es_pipeline.defs.resources import ElasticsearchResource, GitLabResource
from gitlab_es_pipeline_tests.pipeline import INDEX, Pipeline
from gitlab_es_pipeline_tests.repos import commit_files, init_repo

SECRET = "glpat-do-not-echo-me"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("gitlab.example.com", "GITLAB_URL must be a URL with a scheme"),
        ("ftp://gitlab.example.com", "GITLAB_URL must be a URL with a scheme"),
        ("https://gitlab.example.com/api/v4", "GITLAB_URL is the base URL, without /api/v4"),
    ],
)
def test_a_malformed_gitlab_url_is_refused_in_one_sentence(url: str, expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        GitLabResource(url=url, token=SECRET)


@pytest.mark.parametrize(
    ("token", "expected"),
    [("", "GITLAB_TOKEN is empty"), (f"{SECRET}\n", "GITLAB_TOKEN contains whitespace")],
)
def test_a_malformed_token_is_refused_without_echoing_it(token: str, expected: str) -> None:
    with pytest.raises(ValidationError, match=expected) as raised:
        GitLabResource(url="https://gitlab.example.com", token=token)
    assert SECRET not in str(raised.value)


def test_a_malformed_elasticsearch_url_is_refused() -> None:
    with pytest.raises(ValidationError, match="ELASTICSEARCH_URL must be a URL with a scheme"):
        ElasticsearchResource(url="localhost:9200")
    assert ElasticsearchResource(url="https://es.example.com:9200/").url == (
        "https://es.example.com:9200"
    )


def _setup_error(instance: DagsterInstance, tmp_path: Path) -> str:
    result = materialize(
        [repositories],
        instance=instance,
        raise_on_error=False,
        resources={
            "gitlab": GitLabResource(url=EnvVar("GITLAB_URL"), token=EnvVar("GITLAB_TOKEN")),
            "elasticsearch": ElasticsearchResource(url=EnvVar("ELASTICSEARCH_URL")),
            "parquet_io_manager": ParquetIOManager(base_path=str(tmp_path)),
        },
    )
    assert not result.success
    texts = []
    for event in result.all_events:
        error = getattr(event.event_specific_data, "error", None)
        while error is not None:
            texts.append(error.message)
            error = error.cause or error.context
    return "\n".join(texts)


def test_variables_are_checked_once_resolved_when_a_run_starts(
    instance: DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITLAB_URL", "gitlab.example.com")
    monkeypatch.setenv("GITLAB_TOKEN", SECRET)
    monkeypatch.setenv("ELASTICSEARCH_URL", "https://es.example.com:9200")
    text = _setup_error(instance, tmp_path)
    assert "GITLAB_URL must be a URL with a scheme" in text and SECRET not in text
    # A variable that is not set at all: Dagster refuses the run's configuration, by name.
    monkeypatch.delenv("GITLAB_URL")
    with pytest.raises(
        DagsterInvalidConfigError, match='environment variable "GITLAB_URL" which is not set'
    ):
        _setup_error(instance, tmp_path)


def test_an_alias_over_several_indices_is_refused_at_once(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    repo = init_repo(tmp_path / "app")
    commit_files(repo, {"a.py": "x = 1\n"})
    pipeline.gitlab.add_project("team/app", str(repo))
    pipeline.discover()
    client = pipeline.resources()["elasticsearch"].client()
    for name in ("gitlab-lines-v1", "gitlab-lines-v2"):
        client.indices.create(index=name, **index_body(), aliases={INDEX: {}})
    result = pipeline.index("team/app", raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data
    assert failure.user_failure_data is not None
    assert failure.user_failure_data.description == (
        "team/app: 'gitlab-lines' is an alias of several indices (gitlab-lines-v1, "
        "gitlab-lines-v2): stale documents are deleted by id, which needs one index behind it; "
        "point the alias at one of them"
    )
    assert pipeline.es.bulk_requests == 0


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            lambda **o: ElasticsearchResource(url="http://es.internal:9200", api_key=SECRET, **o),
            "ELASTICSEARCH_URL is plain http:// to es.internal: the API key or password",
        ),
        (
            lambda **o: ElasticsearchResource(
                url="http://es.internal:9200", username="u", password=SECRET, **o
            ),
            "ELASTICSEARCH_URL is plain http:// to es.internal: the API key or password",
        ),
        (
            lambda **o: GitLabResource(url="http://gitlab.internal", token=SECRET, **o),
            "GITLAB_URL is plain http:// to gitlab.internal: the token would cross",
        ),
    ],
)
def test_credentials_over_plain_http_are_refused_unless_allowed(
    make: Callable[..., object], expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValidationError, match=expected) as raised:
        make()
    assert SECRET not in str(raised.value)
    with caplog.at_level("WARNING"):
        make(allow_insecure_http=True)
    assert "ALLOW_INSECURE_HTTP" in caplog.text and SECRET not in caplog.text


def test_plain_http_is_fine_without_credentials_over_https_or_on_loopback() -> None:
    ElasticsearchResource(url="http://es.internal:9200")  # no credentials: nothing to expose
    ElasticsearchResource(url="https://es.internal:9200", api_key=SECRET)
    ElasticsearchResource(url="http://127.0.0.1:9200", api_key=SECRET)
    ElasticsearchResource(url="http://localhost:9200", api_key=SECRET)
    GitLabResource(url="http://[::1]:8080", token=SECRET)


def test_a_url_with_credentials_in_it_is_never_echoed() -> None:
    with pytest.raises(ValidationError) as raised:
        ElasticsearchResource(url=f"ftp://elastic:{SECRET}@es.internal:9200")
    assert SECRET not in str(raised.value) and "***@es.internal:9200" in str(raised.value)
    with pytest.raises(ValidationError) as raised:
        GitLabResource(url=f"https://oauth2:{SECRET}@gitlab.example.com/api/v4", token="t")
    assert SECRET not in str(raised.value) and "***@gitlab.example.com" in str(raised.value)
