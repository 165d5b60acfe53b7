"""Which engine a cluster is, from its answers over HTTP (the stand-in playing each case);
the real OpenSearch node's own answer is checked in test_opensearch.py."""

from __future__ import annotations

import pytest

from gitlab_es_pipeline.clients.engines import (
    Connection,
    EngineError,
    EngineUnreachable,
    detect_engine,
)
from gitlab_es_pipeline_tests.processes import free_port
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn
from gitlab_es_pipeline_tests.standins.http import Request, Response


def _answering(server: ElasticsearchStandIn, response: Response) -> None:
    """The root answers this (sent as it is: no X-Elastic-Product unless given)."""

    def root(request: Request) -> Response | None:
        return response if request.raw_path.split("?")[0] in ("", "/") else None

    server.faults.append(root)


def test_elasticsearch_is_told_by_its_header_even_when_the_root_is_forbidden(
    es_server: ElasticsearchStandIn,
) -> None:
    connection = Connection(es_server.url, api_key=es_server.api_key)
    assert detect_engine(connection) == "elasticsearch"
    forbidden = Response(403, {"error": {"type": "security_exception"}, "status": 403})
    forbidden.headers["X-Elastic-Product"] = "Elasticsearch"
    _answering(es_server, forbidden)
    assert detect_engine(connection) == "elasticsearch"


def test_a_forbidden_root_without_the_header_needs_the_setting(
    es_server: ElasticsearchStandIn,
) -> None:
    _answering(es_server, Response(403, {"error": "no permissions for [cluster:monitor/main]"}))
    connection = Connection(es_server.url, api_key=es_server.api_key)
    with pytest.raises(EngineError, match=r"GET / answered 403\); set ELASTICSEARCH_ENGINE"):
        detect_engine(connection)
    assert detect_engine(connection, "opensearch") == "opensearch"


@pytest.mark.parametrize(
    ("number", "refused"), [("2.11.1", True), ("2.15.0", False), ("3.2.0", False)]
)
def test_an_opensearch_without_the_wildcard_field_is_refused(
    es_server: ElasticsearchStandIn, number: str, refused: bool
) -> None:
    root = {"version": {"distribution": "opensearch", "number": number}}
    _answering(es_server, Response(200, root))
    connection = Connection(es_server.url, api_key=es_server.api_key)
    if refused:
        with pytest.raises(EngineError, match=f"OpenSearch {number}: the pipeline needs 2.15"):
            detect_engine(connection)
    else:
        assert detect_engine(connection) == "opensearch"


@pytest.mark.parametrize("status", [429, 502, 503])
def test_a_root_answer_of_a_passing_fault_is_waited_out_not_a_setup_error(
    es_server: ElasticsearchStandIn, status: int
) -> None:
    """A proxy's 502, a node starting (503), throttling: no engine header, nothing to set."""
    _answering(es_server, Response(status, {"error": "try later"}))
    with pytest.raises(EngineUnreachable, match=f"^GET / answered HTTP {status}$"):
        detect_engine(Connection(es_server.url, api_key=es_server.api_key))


def test_refused_credentials_are_said_as_such_not_as_an_unknown_engine(
    es_server: ElasticsearchStandIn,
) -> None:
    """Elasticsearch leaves X-Elastic-Product off an unauthenticated answer; OpenSearch never
    sends it: a 401 without it is about the credentials, whichever the engine."""
    _answering(es_server, Response(401, {"error": "unauthorized"}))
    with pytest.raises(EngineError) as refused:
        detect_engine(Connection(es_server.url, api_key="wrong"))
    assert refused.value.status == 401 and "refused the credentials" in refused.value.reason
    assert "ELASTICSEARCH_ENGINE" not in str(refused.value)


def test_an_unknown_setting_and_an_unreachable_cluster_are_said_plainly() -> None:
    with pytest.raises(EngineError, match="ELASTICSEARCH_ENGINE must be one of auto"):
        detect_engine(Connection("http://127.0.0.1:1"), "solr")
    with pytest.raises(EngineUnreachable, match="Connection refused"):
        detect_engine(Connection(f"http://127.0.0.1:{free_port()}", password="secret"))


def test_the_connection_never_shows_its_credentials() -> None:
    connection = Connection("https://es:9200", api_key="k3y", username="u", password="pw")
    assert "k3y" not in repr(connection) and "pw" not in repr(connection)
