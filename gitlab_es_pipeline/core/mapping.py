"""The Elasticsearch index: analyzers made for code, and the line document mapping."""

from __future__ import annotations

import copy
from typing import Any

# Bumped when the mapping changes in a way that needs a new concrete index behind the alias.
MAPPING_VERSION = 1

INDEX_SETTINGS: dict[str, Any] = {
    "analysis": {
        "filter": {
            "code_word_parts": {
                # Splits camelCase, snake_case, digits, punctuation; keeps the whole token too.
                "type": "word_delimiter_graph",
                "preserve_original": True,
                "split_on_case_change": True,
                "split_on_numerics": True,
                "stem_english_possessive": False,
            }
        },
        "tokenizer": {
            "path_parts": {"type": "pattern", "pattern": "[/._\\-\\s]+"},
        },
        "analyzer": {
            "code": {
                "type": "custom",
                "tokenizer": "whitespace",
                "filter": [
                    "code_word_parts",
                    "flatten_graph",
                    "lowercase",
                    "asciifolding",
                    "remove_duplicates",
                ],
            },
            "path_parts": {
                "type": "custom",
                "tokenizer": "path_parts",
                "filter": ["lowercase", "asciifolding"],
            },
            "path_prefixes": {"type": "custom", "tokenizer": "path_hierarchy"},
        },
    }
}

LINE_DOCUMENT_MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "project_id": {"type": "long"},
        "visibility": {"type": "keyword"},
        "repository_name": {"type": "keyword"},
        "branch": {"type": "keyword"},
        "commit_sha": {"type": "keyword"},
        "file_path": {
            "type": "keyword",
            "ignore_above": 8191,
            "fields": {
                "parts": {"type": "text", "analyzer": "path_parts"},
                "tree": {"type": "text", "analyzer": "path_prefixes", "search_analyzer": "keyword"},
            },
        },
        "blob_sha": {"type": "keyword"},
        "line_number": {"type": "integer"},
        "line_content": {
            "type": "text",
            "analyzer": "code",
            "fields": {"wildcard": {"type": "wildcard"}},
        },
        "line_truncated": {"type": "boolean"},
        "web_url": {"type": "keyword", "index": False, "doc_values": False},
    },
}


def concrete_index_name(alias: str) -> str:
    """The versioned index behind the name searches use, so a reindex can swap it atomically."""
    return f"{alias}-v{MAPPING_VERSION}"


def index_body() -> dict[str, Any]:
    """A copy: whoever sends or changes it cannot change the module's mapping."""
    return copy.deepcopy({"settings": INDEX_SETTINGS, "mappings": LINE_DOCUMENT_MAPPING})


# Fields added to the mapping after the first release: an index made before lacks them, and
# they are added to it in place (Elasticsearch allows new fields in an existing mapping).
ADDED_FIELDS = ("visibility",)


def missing_or_conflicting_fields(existing_properties: dict[str, Any]) -> list[str]:
    """Fields of our mapping that an existing index lacks or types differently; an index that
    lacks only fields added since is not this list's business (see fields_to_add)."""
    problems = []
    for name, spec in LINE_DOCUMENT_MAPPING["properties"].items():
        have = existing_properties.get(name)
        if have is None and name not in ADDED_FIELDS:
            problems.append(f"{name}: missing")
        elif have is not None and have.get("type", "object") != spec["type"]:
            problems.append(f"{name}: {have.get('type')} instead of {spec['type']}")
    return problems


def fields_to_add(existing_properties: dict[str, Any]) -> dict[str, Any]:
    """The later fields an index from an earlier version lacks."""
    properties = LINE_DOCUMENT_MAPPING["properties"]
    return {name: properties[name] for name in ADDED_FIELDS if name not in existing_properties}
