"""Which files are indexed."""

import pytest

from gitlab_es_pipeline.core.filtering import (
    DEFAULT_EXCLUDED_PATHS,
    Skipped,
    compile_globs,
    content_skip_reason,
    is_excluded,
    tree_skip_reason,
)


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("node_modules/x/index.js", True),
        ("web/node_modules/x/index.js", True),
        ("dist/app.min.js", True),
        ("app.min.js", True),
        ("styles/site.min.css", True),
        ("src/app.js.map", True),
        ("src/app.js", False),
        ("src/node_modules.py", False),
        ("minify.js", False),
    ],
)
def test_default_exclusions(path: str, excluded: bool) -> None:
    assert is_excluded(path, DEFAULT_EXCLUDED_PATHS) is excluded


def test_glob_semantics() -> None:
    assert is_excluded("docs/a.md", ["docs/*.md"])
    assert not is_excluded("docs/sub/a.md", ["docs/*.md"])
    assert is_excluded("docs/sub/a.md", ["docs/**/*.md"])
    assert is_excluded("docs/a.md", ["docs/**/*.md"])
    assert is_excluded("a/generated/b.py", ["**/generated/**"])
    assert is_excluded("x/file1.txt", ["file?.txt"])
    assert is_excluded("x/fileA.txt", ["file[A-C].txt"])
    assert not is_excluded("x/fileD.txt", ["file[A-C].txt"])
    assert is_excluded("x/fileD.txt", ["file[!A-C].txt"])
    assert is_excluded("/rooted.txt".lstrip("/"), ["/rooted.txt"])
    assert compile_globs(()) is None
    assert not is_excluded("anything", [])


def test_tree_skip_reasons() -> None:
    regex = compile_globs(DEFAULT_EXCLUDED_PATHS)
    assert tree_skip_reason("vendor/x", "commit", "160000", regex) is Skipped.SUBMODULE
    assert tree_skip_reason("link", "blob", "120000", regex) is Skipped.SYMLINK
    assert tree_skip_reason("a.min.js", "blob", "100644", regex) is Skipped.EXCLUDED
    assert tree_skip_reason("run.sh", "blob", "100755", regex) is None


def test_content_skip_reasons_size_before_binary() -> None:
    assert content_skip_reason(11, b"\x00binary", 10) is Skipped.TOO_LARGE
    assert content_skip_reason(10, b"\x00binary", 10) is Skipped.BINARY
    assert content_skip_reason(10, b"text", 10) is None
