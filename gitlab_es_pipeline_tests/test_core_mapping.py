"""The index mapping, and that the core stays free of Dagster."""

import ast
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from gitlab_es_pipeline.clients.elasticsearch import IndexSetupError, LineIndex
from gitlab_es_pipeline.clients.engines import Connection, ElasticsearchEngine
from gitlab_es_pipeline.core.documents import LINE_DOCUMENT_SCHEMA, NON_SOURCE_COLUMNS
from gitlab_es_pipeline.core.mapping import (
    INDEX_SETTINGS,
    LINE_DOCUMENT_MAPPING,
    concrete_index_name,
    fields_to_add,
    index_body,
    missing_or_conflicting_fields,
)
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn

CORE = Path(__file__).resolve().parents[1] / "gitlab_es_pipeline" / "core"


def test_every_document_field_is_mapped_with_its_type() -> None:
    props = LINE_DOCUMENT_MAPPING["properties"]
    source_fields = {f.name for f in LINE_DOCUMENT_SCHEMA} - set(NON_SOURCE_COLUMNS)
    assert set(props) == source_fields
    assert LINE_DOCUMENT_MAPPING["dynamic"] == "strict"
    types = {name: spec["type"] for name, spec in props.items()}
    assert types == {
        "project_id": "long",
        "visibility": "keyword",
        "repository_name": "keyword",
        "branch": "keyword",
        "commit_sha": "keyword",
        "file_path": "keyword",
        "blob_sha": "keyword",
        "line_number": "integer",
        "line_content": "text",
        "line_truncated": "boolean",
        "web_url": "keyword",
    }
    assert props["web_url"]["index"] is False
    assert props["line_content"]["analyzer"] == "code"
    assert props["line_content"]["fields"]["wildcard"]["type"] == "wildcard"
    assert props["file_path"]["fields"]["parts"]["type"] == "text"


def test_code_analyzer_splits_identifiers_and_keeps_the_original() -> None:
    analysis = INDEX_SETTINGS["analysis"]
    code = analysis["analyzer"]["code"]
    assert code["tokenizer"] == "whitespace"
    assert code["filter"][:2] == ["code_word_parts", "flatten_graph"]
    assert {"lowercase", "asciifolding", "remove_duplicates"} <= set(code["filter"])
    delimiter = analysis["filter"]["code_word_parts"]
    assert delimiter["type"] == "word_delimiter_graph"
    assert delimiter["preserve_original"] and delimiter["split_on_case_change"]
    # Every analyzer a field names is defined.
    named = {spec.get("analyzer") for spec in LINE_DOCUMENT_MAPPING["properties"].values()} | {
        sub.get("analyzer")
        for spec in LINE_DOCUMENT_MAPPING["properties"].values()
        for sub in spec.get("fields", {}).values()
    }
    assert named - {None} <= set(analysis["analyzer"])


def test_incompatible_mappings_are_named() -> None:
    props = dict(LINE_DOCUMENT_MAPPING["properties"])
    assert missing_or_conflicting_fields(props) == []
    props.pop("blob_sha")
    props["line_number"] = {"type": "keyword"}
    assert missing_or_conflicting_fields(props) == [
        "blob_sha: missing",
        "line_number: keyword instead of integer",
    ]
    assert concrete_index_name("gitlab-lines") == "gitlab-lines-v1"


def _engine(server: ElasticsearchStandIn) -> ElasticsearchEngine:
    return ElasticsearchEngine(Connection(server.url, api_key=server.api_key))


def test_an_index_from_an_earlier_version_gains_the_later_fields_in_place(
    es_server: ElasticsearchStandIn,
) -> None:
    client = Elasticsearch(es_server.url, api_key=es_server.api_key)
    body = index_body()
    del body["mappings"]["properties"]["visibility"]  # as version 1 made it
    client.indices.create(index="gitlab-lines-v1", **body, aliases={"gitlab-lines": {}})
    assert fields_to_add(body["mappings"]["properties"]) == {"visibility": {"type": "keyword"}}
    assert LineIndex(_engine(es_server), "gitlab-lines").ensure() == "existing"
    mapping = client.indices.get_mapping(index="gitlab-lines")["gitlab-lines-v1"]["mappings"]
    assert mapping["properties"]["visibility"] == {"type": "keyword"}
    assert fields_to_add(mapping["properties"]) == {}


def test_an_existing_index_with_another_mapping_is_refused(es_server: ElasticsearchStandIn) -> None:
    client = Elasticsearch(es_server.url, api_key=es_server.api_key)
    client.indices.create(index="other", mappings={"properties": {"title": {"type": "text"}}})
    with pytest.raises(IndexSetupError, match=r"incompatible mapping.*project_id: missing"):
        LineIndex(_engine(es_server), "other").ensure()
    index = LineIndex(_engine(es_server), "fresh")
    assert index.ensure() == "created"
    assert index.ensure() == "existing"
    assert list(client.indices.get_alias(name="fresh").body) == ["fresh-v1"]


def test_the_core_has_no_dagster_imports() -> None:
    for path in CORE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "dagster" for n in names), path
