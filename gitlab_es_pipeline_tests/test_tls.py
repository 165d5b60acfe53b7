"""TLS: certificates are checked by default, against a CA bundle when one is given; turning
the check off works and is said out loud in the run's log."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance

from gitlab_es_pipeline_tests.pipeline import INDEX, Pipeline
from gitlab_es_pipeline_tests.repos import commit_files, init_repo
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn
from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn


@pytest.fixture
def tls_pipeline(instance: DagsterInstance, tmp_path: Path) -> Iterator[tuple[Pipeline, str]]:
    """Both stand-ins over HTTPS with a self-signed certificate for 127.0.0.1."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    gitlab = GitLabStandIn().use_tls(str(cert), str(key)).start()
    es = ElasticsearchStandIn(api_key="es-key").use_tls(str(cert), str(key)).start()
    repo = init_repo(tmp_path / "app")
    commit_files(repo, {"a.py": "one\ntwo\nthree\n"})
    gitlab.add_project("team/app", str(repo))
    try:
        yield Pipeline(gitlab, es, instance, tmp_path / "parquet"), str(cert)
    finally:
        gitlab.stop()
        es.stop()


def _log_messages(pipeline: Pipeline) -> list[str]:
    return [
        entry.user_message
        for run in pipeline.instance.get_runs()
        for entry in pipeline.instance.all_logs(run.run_id)
    ]


def test_certificates_are_checked_against_the_given_ca_bundle(
    tls_pipeline: tuple[Pipeline, str],
) -> None:
    pipeline, cert = tls_pipeline
    assert pipeline.gitlab.url.startswith("https://") and pipeline.es.url.startswith("https://")
    pipeline.gitlab_options.update(ca_bundle=cert)
    pipeline.es_options.update(ca_certs=cert)
    assert pipeline.discover().success
    assert pipeline.index("team/app").success
    assert sorted(d["line_content"] for d in pipeline.es.documents(INDEX).values()) == [
        "one",
        "three",
        "two",
    ]
    assert not any("verification" in m for m in _log_messages(pipeline))


def test_an_unknown_certificate_is_refused_by_default(tls_pipeline: tuple[Pipeline, str]) -> None:
    pipeline, _ = tls_pipeline
    pipeline.gitlab_options.update(max_retries=0)
    result = pipeline.discover(raise_on_error=False)
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    text = ""
    while error is not None:
        text += error.message
        error = error.cause or error.context
    assert "CERTIFICATE_VERIFY_FAILED" in text
    assert pipeline.gitlab.requests == []  # no request got through


def test_turning_verification_off_works_and_is_logged(tls_pipeline: tuple[Pipeline, str]) -> None:
    pipeline, _ = tls_pipeline
    pipeline.gitlab_options.update(verify_tls=False)
    pipeline.es_options.update(verify_certs=False)
    assert pipeline.discover().success
    assert pipeline.index("team/app").success
    assert len(pipeline.es.documents(INDEX)) == 3
    messages = _log_messages(pipeline)
    for service in ("GitLab", "Elasticsearch"):
        assert any(f"TLS certificate verification of {service} is OFF" in m for m in messages)
