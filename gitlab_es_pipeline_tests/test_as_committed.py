"""Exactly as committed: every text blob in the index byte for byte, whatever the archive does.

The repository's .gitattributes make `git archive` (what Gitaly runs) leave files out and
rewrite others; the expectation is computed from the blobs with `git cat-file` (corpus.py).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dagster import AssetCheckKey, AssetKey, ExecuteInProcessResult

from gitlab_es_pipeline.defs.asset_keys import MANIFEST_CHECK
from gitlab_es_pipeline.runs.indexed import last_indexed
from gitlab_es_pipeline_tests.corpus import (
    EXPORT_IGNORED_PREFIXES,
    LFS_TRACKED,
    REWRITTEN_BY_ARCHIVE,
    build_attributes_repo,
    expected_after_runs,
    expected_documents,
)
from gitlab_es_pipeline_tests.pipeline import INDEX, Pipeline
from gitlab_es_pipeline_tests.repos import (
    commit_files,
    fast_import,
    init_repo,
    real_source_files,
    real_source_roots,
    run_git,
)
from gitlab_es_pipeline_tests.standins.http import Request, Response

KEY = "team/attrs"


@pytest.fixture(scope="session")
def attributes_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_attributes_repo(tmp_path_factory.mktemp("attributes") / "repo")


@pytest.fixture
def attributes_repo(attributes_template: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "attrs"
    shutil.copytree(attributes_template, copy, symlinks=True)
    return copy


def _archive_against_tree(repo: Path, commit: str, lfs_objects: bool) -> tuple[set[str], set[str]]:
    """From git alone: the tree's files that `git archive` leaves out, and those whose archive
    bytes are not their blob's."""
    no_lfs = ["-c", "filter.lfs.smudge=", "-c", "filter.lfs.process="]
    no_lfs += ["-c", "filter.lfs.required=false"]
    tar_bytes = subprocess.run(
        ["git", "-C", str(repo), *([] if lfs_objects else no_lfs), "archive", commit],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        archived = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    missing, rewritten = set(), set()
    for path in run_git(repo, "ls-tree", "-r", "--name-only", commit).splitlines():
        blob = subprocess.run(
            ["git", "-C", str(repo), "cat-file", "blob", f"{commit}:{path}"],
            check=True,
            capture_output=True,
        ).stdout
        if path not in archived:
            missing.add(path)
        elif archived[path] != blob:
            rewritten.add(path)
    return missing, rewritten


def _slow_tree_pages(seconds: float) -> Callable[[Request, str], Response | None]:
    """Tree pages after the first arrive late: the archive is read to its end before the
    listing is (the order a large, slow instance gives)."""

    def fault(request: Request, path: str) -> Response | None:
        if path.endswith("/repository/tree") and request.query.get("page_token"):
            time.sleep(seconds)
        return None

    return fault


def _assert_index_is(pipeline: Pipeline, expected: dict[str, dict]) -> None:
    documents = pipeline.es.documents(INDEX)
    assert set(documents) == set(expected)
    for doc_id, doc in expected.items():
        assert documents[doc_id] == doc, doc_id


def _check_of(result: ExecuteInProcessResult) -> tuple[bool, dict]:
    (evaluation,) = [
        e
        for e in result.get_asset_check_evaluations()
        if e.asset_check_key == AssetCheckKey(AssetKey("file_manifest"), MANIFEST_CHECK)
    ]
    return evaluation.passed, {k: v.value for k, v in evaluation.metadata.items()}


def test_the_premise_git_archive_leaves_out_and_rewrites_files(attributes_repo: Path) -> None:
    commit = run_git(attributes_repo, "rev-parse", "HEAD").strip()
    missing, rewritten = _archive_against_tree(attributes_repo, commit, lfs_objects=False)
    assert rewritten == set(REWRITTEN_BY_ARCHIVE)
    assert missing and all(p.startswith(EXPORT_IGNORED_PREFIXES) for p in missing)
    assert {p.split("/")[0] for p in missing} == {
        "tests",
        "zz-ignored",
        "zzz-last.txt",
        "zzz-really-last.txt",
    }
    # Export-ignored entries come last in git's order, pages of 100 after the archive's last
    # file: a listing stopped when the archive ends would never see them.
    entries = run_git(attributes_repo, "ls-tree", "-r", "-t", "--name-only", commit).splitlines()
    assert len(entries) > 300 and entries[-1] == "zzz-really-last.txt"
    last_archived = max(i for i, p in enumerate(entries) if p == "windows.bat")
    assert all(entries.index(p) > last_archived for p in missing if p.startswith("zz"))
    assert len(entries) // 100 >= last_archived // 100 + 2
    _, with_lfs = _archive_against_tree(attributes_repo, commit, lfs_objects=True)
    assert with_lfs == {*REWRITTEN_BY_ARCHIVE, LFS_TRACKED}


def test_every_blob_is_indexed_as_committed_through_full_refresh_and_incremental_runs(
    pipeline: Pipeline, attributes_repo: Path
) -> None:
    repo = attributes_repo
    project = pipeline.gitlab.add_project(KEY, str(repo))
    pipeline.gitlab.faults.append(_slow_tree_pages(0.3))
    url = f"{pipeline.gitlab.url}/{KEY}"
    pipeline.discover()
    first = run_git(repo, "rev-parse", "HEAD").strip()
    missing, rewritten = _archive_against_tree(repo, first, lfs_objects=False)

    result = pipeline.index(KEY)
    expected = expected_documents(repo, project.id, KEY, "main", url)
    _assert_index_is(pipeline, expected.documents)
    assert expected.skipped == {LFS_TRACKED: "lfs_pointer"}
    assert _check_of(result)[0]
    meta = pipeline.latest_metadata("line_documents", KEY)
    assert meta["files_rewritten_by_archive"] == len(rewritten)
    assert meta["files_missing_from_archive"] == len(missing)
    assert meta["files_fetched_alone"] == len(rewritten) + len(missing)
    manifest_meta = pipeline.latest_metadata("file_manifest", KEY)
    assert manifest_meta["skipped_lfs_pointer"] == 1
    entries = int(run_git(repo, "ls-tree", "-r", "--name-only", first).count("\n"))
    assert manifest_meta["tree_entries"] == entries

    # A full read against the manifest of the first run: nothing counts as deleted.
    result = pipeline.index(KEY, full_refresh=True)
    _assert_index_is(pipeline, expected.documents)
    assert _check_of(result)[0]
    assert pipeline.latest_metadata("file_manifest", KEY)["tree_entries_deleted"] == 0
    assert pipeline.latest_metadata("es_index", KEY)["documents_deleted"] == 0

    # Incremental through GitLab's comparison: a few files, fetched alone by blob id.
    second = commit_files(
        repo,
        {
            "src/ident.c": "/* $Id$ */\nint main(void) { return 1; }\n",
            "version.txt": "commit: $Format:%H$\nnew line\n",
            "tests/test_new.py": "def test_new():\n    pass\n",
        },
        "change rewritten and ignored files",
        delete=("zzz-last.txt",),
    )
    assert pipeline.index(KEY).success
    assert pipeline.latest_metadata("file_manifest", KEY)["mode"] == "incremental"
    expected = expected_after_runs(repo, [first, second], project.id, KEY, "main", url)
    _assert_index_is(pipeline, expected.documents)

    # Incremental through the tree listing and the archive (more files than are fetched alone).
    pipeline.indexing["max_files_fetched_alone"] = 1
    third = commit_files(
        repo,
        {
            "utf16.txt": "\ufeffnouveau texte\n".encode("utf-16-le"),
            "windows.bat": "@echo off\necho changed\n",
            "zz-ignored/notes.md": "# changed\n",
            "src/pkg00/mod000.py": "VALUE_0 = 'changed'\n",
        },
        "change files the archive rewrites or leaves out",
    )
    result = pipeline.index(KEY)
    assert _check_of(result)[0]
    meta = pipeline.latest_metadata("line_documents", KEY)
    assert meta["files_from_archive"] == 1  # src/pkg00/mod000.py
    assert meta["files_rewritten_by_archive"] == 2 and meta["files_missing_from_archive"] == 1
    expected = expected_after_runs(repo, [first, second, third], project.id, KEY, "main", url)
    _assert_index_is(pipeline, expected.documents)


def test_lfs_objects_in_the_archive_are_noticed_and_the_pointer_is_skipped(
    pipeline: Pipeline, attributes_repo: Path
) -> None:
    """Older GitLab, or one that ignores include_lfs_blobs=false: the archive holds the LFS
    object; its bytes are not the blob, so the pointer is fetched and skipped."""
    project = pipeline.gitlab.add_project(KEY, str(attributes_repo))
    pipeline.gitlab.archive_always_includes_lfs_blobs = True
    pipeline.discover()
    assert pipeline.index(KEY).success
    url = f"{pipeline.gitlab.url}/{KEY}"
    expected = expected_documents(attributes_repo, project.id, KEY, "main", url)
    _assert_index_is(pipeline, expected.documents)
    meta = pipeline.latest_metadata("line_documents", KEY)
    assert meta["files_rewritten_by_archive"] == len(REWRITTEN_BY_ARCHIVE) + 1
    manifest = pq.read_table(pipeline.storage / "file_manifest" / "team" / "attrs.parquet")
    (row,) = [r for r in manifest.to_pylist() if r["path"] == LFS_TRACKED]
    assert row["skip_reason"] == "lfs_pointer"
    assert row["size"] == len(run_git(attributes_repo, "cat-file", "blob", f"HEAD:{LFS_TRACKED}"))


@pytest.mark.parametrize("served", [150, 210])
def test_a_tree_listing_that_ends_early_fails_the_manifest_check_and_writes_nothing(
    pipeline: Pipeline, attributes_repo: Path, served: int
) -> None:
    """The stand-in ends the listing early with no error and no sign of it: inside a folder
    (150: its entries do not hash to its id) or between two (210: only the archive knows)."""
    pipeline.gitlab.add_project(KEY, str(attributes_repo))
    pipeline.discover()
    pipeline.gitlab.tree_entries_served = served
    result = pipeline.index(KEY, raise_on_error=False)
    assert not result.success
    passed, meta = _check_of(result)
    assert not passed
    assert meta["archive_files_not_in_tree"] > 0
    assert (
        meta["tree_entries_in_pages"]
        == meta["manifest_entries"]
        == served - meta["tree_folders_in_pages"]
    )
    if served == 150:
        assert meta["folders_listed_in_part"] >= 1
    # es_index did not run: nothing written, no commit marked indexed.
    assert pipeline.es.documents(INDEX) == {}
    assert last_indexed(pipeline.instance, KEY) is None

    pipeline.gitlab.tree_entries_served = None
    result = pipeline.index(KEY)
    assert _check_of(result)[0]
    assert last_indexed(pipeline.instance, KEY) is not None


def test_real_source_trees_are_indexed_field_by_field(pipeline: Pipeline, tmp_path: Path) -> None:
    """Python's standard library and the system's C headers, committed into a repository."""
    repo = init_repo(tmp_path / "real")
    files = list(
        real_source_files(
            real_source_roots(),
            subfolders=("json", "email", "asyncio", "http", "string.py", "stdio.h", "linux"),
        )
    )
    assert len(files) > 300
    fast_import(repo, files)
    project = pipeline.gitlab.add_project("real/source", str(repo))
    pipeline.discover()
    pipeline.es_options.update(bulk_max_docs=5000)
    result = pipeline.index("real/source")
    assert _check_of(result)[0]
    url = f"{pipeline.gitlab.url}/real/source"
    expected = expected_documents(repo, project.id, "real/source", "main", url, known_text={})
    assert len(expected.documents) > 50_000
    _assert_index_is(pipeline, expected.documents)


def test_files_of_unknown_size_are_never_downloaded_past_the_cap(
    pipeline: Pipeline, attributes_repo: Path
) -> None:
    """An export-ignored file over the cap is fetched alone without a size from the tree: the
    download stops past the cap and the files API gives its size. A file under the cap whose
    archive copy is over it (eol=crlf adds a byte a line) is still indexed, from its blob."""
    cap = 1024 * 1024
    near_cap = ("x" * 499 + "\n") * (cap // 500)  # under the cap; with CRs, over it
    assert len(near_cap) <= cap < len(near_cap) + cap // 500
    big = "y" * 99 + "\n"
    commit_files(
        attributes_repo,
        {
            ".gitattributes": (attributes_repo / ".gitattributes").read_text()
            + "near-cap.txt text eol=crlf\n",
            "near-cap.txt": near_cap,
            "tests/big_fixture.txt": big * (3 * cap // 100),
        },
    )
    project = pipeline.gitlab.add_project(KEY, str(attributes_repo))
    pipeline.discover()
    result = pipeline.index(KEY)
    assert _check_of(result)[0]
    url = f"{pipeline.gitlab.url}/{KEY}"
    expected = expected_documents(attributes_repo, project.id, KEY, "main", url)
    assert expected.skipped["tests/big_fixture.txt"] == "too_large"
    assert any(d["file_path"] == "near-cap.txt" for d in expected.documents.values())
    _assert_index_is(pipeline, expected.documents)
    manifest = pq.read_table(pipeline.storage / "file_manifest" / "team" / "attrs.parquet")
    rows = {r["path"]: r for r in manifest.to_pylist()}
    assert rows["tests/big_fixture.txt"]["size"] == len(big) * (3 * cap // 100)
    assert rows["tests/big_fixture.txt"]["skip_reason"] == "too_large"
    assert rows["near-cap.txt"]["size"] == len(near_cap)
    # What one fetch of the big blob takes in: the cap and one chunk at most.
    source = pipeline.resources()["gitlab"].source()
    data = source.raw_blob(project.id, rows["tests/big_fixture.txt"]["blob_sha"], limit=cap)
    assert cap < len(data) <= cap + (1 << 16)


def test_a_raw_blob_that_is_not_its_id_fails_the_run_naming_the_file(
    pipeline: Pipeline, attributes_repo: Path
) -> None:
    """A proxy or cache serving something else for a blob: never indexed as that blob."""
    pipeline.gitlab.add_project(KEY, str(attributes_repo))
    pipeline.discover()
    blob = run_git(attributes_repo, "rev-parse", "HEAD:src/ident.c").strip()

    def other_bytes(request: Request, path: str) -> Response | None:
        if path.endswith(f"/repository/blobs/{blob}/raw"):
            return Response(200, b"/* not this blob */\n", content_type="text/plain")
        return None

    pipeline.gitlab.faults.append(other_bytes)
    pipeline.gitlab_options["max_retries"] = 0
    result = pipeline.index(KEY, raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[-1].step_failure_data.user_failure_data
    assert failure is not None
    assert failure.description.startswith(f"{KEY}: src/ident.c: GitLab served 20 bytes for blob")
    assert "do not hash to its id" in str(failure.description)
    assert pipeline.es.documents(INDEX) == {}
