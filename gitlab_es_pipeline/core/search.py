"""Searches of the line index as a person types them: words, an exact substring, filters.

The query is built here, without a client, so that what `gitlab-es-pipeline search` asks
Elasticsearch is tested directly; the command line only sends it and prints the hits.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# A few common languages by file extension; `--ext` names any other directly.
LANGUAGE_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "c": ("c", "h"),
    "cpp": ("cc", "cpp", "cxx", "hh", "hpp", "hxx"),
    "csharp": ("cs",),
    "css": ("css", "scss", "sass", "less"),
    "go": ("go",),
    "html": ("html", "htm"),
    "java": ("java",),
    "javascript": ("js", "jsx", "mjs", "cjs"),
    "kotlin": ("kt", "kts"),
    "markdown": ("md", "markdown"),
    "php": ("php",),
    "python": ("py", "pyi"),
    "ruby": ("rb",),
    "rust": ("rs",),
    "scala": ("scala",),
    "shell": ("sh", "bash", "zsh"),
    "sql": ("sql",),
    "swift": ("swift",),
    "typescript": ("ts", "tsx"),
    "yaml": ("yaml", "yml"),
}

# Matches come in the order grep would print them, not by score: the same query gives the
# same lines in the same order.
SORT = [
    {"repository_name": "asc"},
    {"file_path": "asc"},
    {"line_number": "asc"},
]


@dataclass(frozen=True)
class SearchOptions:
    text: str
    exact: bool = False  # text is a substring to find as typed, not words
    ignore_case: bool = False  # for exact substrings; word search ignores case anyway
    repositories: tuple[str, ...] = ()  # names or wildcard patterns (`acme/*`)
    path: str | None = None  # wildcard pattern on the file path (`*` also crosses `/`)
    extensions: tuple[str, ...] = ()
    language: str | None = None
    visibilities: tuple[str, ...] = ()  # of the projects: private, internal, public
    limit: int = 20


VISIBILITIES = frozenset({"private", "internal", "public"})


class SearchError(ValueError):
    """A search that cannot be asked: the message says what to change."""


def wildcard_literal(text: str) -> str:
    """Text to be matched as typed inside an Elasticsearch wildcard pattern."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")


# Backslashes that OpenSearch 2.x's wildcard field mishandles: before `*`, `?` or the end of
# the text. Its query finds nothing when a literal's last character before a wildcard is an
# escaped backslash (`*a\\\\*`; found by test_conformance.py, Elasticsearch does not).
_UNSAFE_BACKSLASHES = re.compile(r"\\+(?=[*?]|$)")


def _asked_substring(text: str) -> str | None:
    """What to ask the engine for: the text itself, or, where it holds backslashes that the
    engine mishandles, its longest piece without them (more lines, checked by `verify`);
    None when no piece is left (the text is backslashes only)."""
    pieces = [piece for piece in _UNSAFE_BACKSLASHES.split(text) if piece]
    if pieces == [text]:
        return text
    return max(pieces, key=len) if pieces else None


def _substring(text: str, ignore_case: bool) -> dict[str, Any]:
    """The line holds `text` as typed, asked of the wildcard subfield (made for this)."""
    asked = _asked_substring(text)
    if asked is None:  # any line with a backslash (a character class does not trip it up)
        return {"regexp": {"line_content.wildcard": {"value": ".*[\\\\].*"}}}
    return {
        "wildcard": {
            "line_content.wildcard": {
                "value": f"*{wildcard_literal(asked)}*",
                "case_insensitive": ignore_case,
            }
        }
    }


def verify(options: SearchOptions) -> Callable[[str], bool] | None:
    """A check of each line the engine returns, where it was asked for more (see
    _asked_substring); None where its answer is exact."""
    if not options.exact or _asked_substring(options.text) == options.text:
        return None
    if options.ignore_case:
        wanted = options.text.casefold()
        return lambda line: wanted in line.casefold()
    return lambda line: options.text in line


def _patterned(field_name: str, value: str) -> dict[str, Any]:
    if "*" in value or "?" in value:
        return {"wildcard": {field_name: {"value": value}}}
    return {"term": {field_name: value}}


def _extensions(options: SearchOptions) -> list[str]:
    wanted = [e.lstrip(".").lower() for e in options.extensions]
    if options.language:
        language = options.language.lower()
        if language not in LANGUAGE_EXTENSIONS:
            known = ", ".join(sorted(LANGUAGE_EXTENSIONS))
            raise SearchError(f"unknown language {options.language!r}; known: {known} (or --ext)")
        wanted += LANGUAGE_EXTENSIONS[language]
    return wanted


def search_body(options: SearchOptions) -> dict[str, Any]:
    """The `_search` body: the text as a query, everything else as filters."""
    if not options.text.strip():
        raise SearchError("nothing to search for")
    if options.limit < 1:
        raise SearchError("the result count must be at least 1")
    text: dict[str, Any]
    if options.exact:
        text = _substring(options.text, options.ignore_case)
    else:
        text = {"match": {"line_content": {"query": options.text, "operator": "and"}}}
    filters: list[dict[str, Any]] = []
    if options.repositories:
        filters.append(
            {
                "bool": {
                    "should": [_patterned("repository_name", r) for r in options.repositories],
                    "minimum_should_match": 1,
                }
            }
        )
    if options.visibilities:
        unknown = sorted(set(options.visibilities) - VISIBILITIES)
        if unknown:
            raise SearchError(
                f"unknown visibility {', '.join(map(repr, unknown))}; known: "
                + ", ".join(sorted(VISIBILITIES))
            )
        filters.append({"terms": {"visibility": sorted(set(options.visibilities))}})
    if options.path:
        filters.append(_patterned("file_path", options.path))
    extensions = _extensions(options)
    if extensions:
        filters.append(
            {
                "bool": {
                    "should": [
                        {
                            "wildcard": {
                                "file_path": {
                                    "value": f"*.{wildcard_literal(e)}",
                                    "case_insensitive": True,
                                }
                            }
                        }
                        for e in extensions
                    ],
                    "minimum_should_match": 1,
                }
            }
        )
    return {
        "query": {"bool": {"must": [text], "filter": filters}},
        "sort": SORT,
        "size": options.limit,
        "track_total_hits": True,
    }


def grep_line(source: Mapping[str, Any]) -> str:
    """`repository:path:line: content`, as grep -n prints a match with its file."""
    return (
        f"{source['repository_name']}:{source['file_path']}:{source['line_number']}: "
        f"{source['line_content']}"
    )
