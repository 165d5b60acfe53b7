"""The search request a person's options become (core.search), and the grep-style line."""

import pytest

from gitlab_es_pipeline.core.search import (
    SearchError,
    SearchOptions,
    grep_line,
    search_body,
    verify,
    wildcard_literal,
)


def test_an_exact_substring_is_matched_as_typed() -> None:
    assert wildcard_literal(r"a*b?c\d") == r"a\*b\?c\\d"
    body = search_body(SearchOptions(text="f(*args)", exact=True, ignore_case=True))
    (text,) = body["query"]["bool"]["must"]
    assert text == {
        "wildcard": {"line_content.wildcard": {"value": r"*f(\*args)*", "case_insensitive": True}}
    }


def test_words_must_all_match_and_results_come_in_grep_order() -> None:
    body = search_body(SearchOptions(text="parse config", limit=5))
    assert body["query"]["bool"]["must"] == [
        {"match": {"line_content": {"query": "parse config", "operator": "and"}}}
    ]
    assert body["query"]["bool"]["filter"] == []
    assert body["size"] == 5
    assert [next(iter(s)) for s in body["sort"]] == ["repository_name", "file_path", "line_number"]


def test_filters_for_repositories_paths_and_languages() -> None:
    body = search_body(
        SearchOptions(
            text="x",
            repositories=("acme/api", "tools/*"),
            path="src/*.go",
            extensions=(".PY",),
            language="go",
        )
    )
    repos, path, extensions = body["query"]["bool"]["filter"]
    assert repos["bool"]["should"] == [
        {"term": {"repository_name": "acme/api"}},
        {"wildcard": {"repository_name": {"value": "tools/*"}}},
    ]
    assert path == {"wildcard": {"file_path": {"value": "src/*.go"}}}
    values = [w["wildcard"]["file_path"]["value"] for w in extensions["bool"]["should"]]
    assert values == ["*.py", "*.go"]


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (SearchOptions(text="  "), "nothing to search for"),
        (SearchOptions(text="x", limit=0), "at least 1"),
        (SearchOptions(text="x", language="cobol"), "unknown language 'cobol'"),
    ],
)
def test_impossible_searches_say_what_to_change(options: SearchOptions, problem: str) -> None:
    with pytest.raises(SearchError, match=problem):
        search_body(options)


def test_grep_line() -> None:
    source = {
        "repository_name": "acme/api",
        "file_path": "a b/c.py",
        "line_number": 7,
        "line_content": "\tx = 1",
    }
    assert grep_line(source) == "acme/api:a b/c.py:7: \tx = 1"


@pytest.mark.parametrize(
    ("text", "asked", "checked"),
    [
        ("\\n", "*\\\\n*", False),  # a backslash before other characters is asked as it is
        ("a\\b", "*a\\\\b*", False),
        ("x = '\\", "*x = '*", True),  # ... a trailing one is left out, and lines checked
        ("\\*y", "*\\*y*", True),
    ],
)
def test_backslashes_the_engine_mishandles_are_left_out_and_checked(
    text: str, asked: str, checked: bool
) -> None:
    options = SearchOptions(text, exact=True)
    query = search_body(options)["query"]["bool"]["must"][0]
    assert query["wildcard"]["line_content.wildcard"]["value"] == asked
    check = verify(options)
    assert (check is not None) == checked
    if check is not None:
        assert check(f"before {text} after") and not check(text.replace("\\", ""))


def test_a_text_of_backslashes_only_asks_for_any_backslash_and_checks() -> None:
    options = SearchOptions("\\\\", exact=True, ignore_case=True)
    query = search_body(options)["query"]["bool"]["must"][0]
    assert query == {"regexp": {"line_content.wildcard": {"value": ".*[\\\\].*"}}}
    check = verify(options)
    assert check is not None and check("a \\\\ b") and not check("a \\ b")
