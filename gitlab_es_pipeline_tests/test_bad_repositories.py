"""Repositories in odd states: each has one defined outcome (see docs/operations.md, *Bad input*)."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

from gitlab_es_pipeline.clients.gitlab import request_kind
from gitlab_es_pipeline.runs.indexed import last_indexed
from gitlab_es_pipeline_tests.corpus import expected_id
from gitlab_es_pipeline_tests.pipeline import INDEX, Pipeline
from gitlab_es_pipeline_tests.repos import Submodule, commit_files, init_repo, run_git


def test_a_deleted_default_branch_fails_at_once_saying_so(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    repo = init_repo(tmp_path / "app")
    commit_files(repo, {"a.py": "x = 1\n"})
    project = pipeline.gitlab.add_project("team/app", str(repo))
    pipeline.discover()
    project.default_branch_name = "release"  # GitLab still names it; the branch is gone
    result = pipeline.index("team/app", raise_on_error=False)
    assert not result.success
    data = result.get_step_failure_events()[0].step_failure_data
    assert data.user_failure_data is not None
    message = str(data.user_failure_data.description)
    assert message.startswith("team/app: GitLab refused branch 'release'") and "HTTP 404" in message
    assert "The default branch 'release' is gone: choose another one" in message
    assert last_indexed(pipeline.instance, "team/app") is None
    assert pipeline.es.documents(INDEX) == {}


def test_a_commit_without_files_and_a_submodule_only_repository_index_nothing_cleanly(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    empty_tree = init_repo(tmp_path / "empty-tree")
    run_git(empty_tree, "commit", "--allow-empty", "-q", "-m", "nothing yet")
    source = init_repo(tmp_path / "source")
    sub_commit = commit_files(source, {"x.txt": "x\n"})
    only_sub = init_repo(tmp_path / "only-sub")
    commit_files(only_sub, {"vendor/dep": Submodule(sub_commit)})
    pipeline.gitlab.add_project("team/empty-tree", str(empty_tree))
    pipeline.gitlab.add_project("team/only-sub", str(only_sub))
    pipeline.discover()
    assert pipeline.partitions() == ["team/empty-tree", "team/only-sub"]
    for key in pipeline.partitions():
        assert pipeline.index(key).success
        state = last_indexed(pipeline.instance, key)
        assert state is not None  # indexed: at its commit, with no documents
        assert pipeline.latest_metadata("es_index", key)["lines"] == 0
    assert pipeline.latest_metadata("file_manifest", "team/only-sub")["skipped_submodule"] == 1
    assert pipeline.latest_metadata("file_manifest", "team/empty-tree")["tree_entries"] == 0
    assert pipeline.es.documents(INDEX) == {}


def _wide_repo(path: Path, files: int) -> Path:
    """A repository of `files` one-line files in folders of 100, written by git fast-import."""
    repo = init_repo(path)
    stream = [b"commit refs/heads/main\n", b"committer t <t@e> 0 +0000\n", b"data 4\nwide\n"]
    for i in range(files):
        data = f"file {i}\n".encode()
        stream.append(
            b"M 100644 inline d%04d/f%06d.txt\ndata %d\n%s\n" % (i // 100, i, len(data), data)
        )
    subprocess.run(
        ["git", "-C", str(repo), "fast-import", "--quiet"], input=b"".join(stream), check=True
    )
    return repo


def test_a_100000_file_tree_is_indexed_with_requests_per_tree_page_only(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    files = 100_000
    repo = _wide_repo(tmp_path / "wide", files)
    project = pipeline.gitlab.add_project("team/wide", str(repo))
    pipeline.discover()
    pipeline.es_options.update(bulk_max_docs=5000)
    assert pipeline.index("team/wide").success
    # Requests: the project, the branch, the archive, and one per 100 tree entries.
    entries = files + files // 100  # files and their folders
    kinds = Counter(request_kind(r.raw_path) for r in pipeline.gitlab.requests)
    assert kinds["tree"] == -(-entries // 100) and kinds["archive"] == 1
    # Every file's one line, under the id git's listing gives (checked for every path), with
    # the content of a sample read back from git.
    documents = pipeline.es.documents(INDEX)
    listing = run_git(repo, "ls-tree", "-r", "--name-only", "main").splitlines()
    assert len(listing) == files
    assert set(documents) == {expected_id(project.id, path, 1) for path in listing}
    for path in listing[:: files // 50]:
        assert documents[expected_id(project.id, path, 1)]["line_content"] == run_git(
            repo, "show", f"main:{path}"
        ).rstrip("\n")
    assert pipeline.latest_metadata("file_manifest", "team/wide")["tree_entries"] == files
