"""GitLab request budgets, counted on the stand-in: full loads and incremental runs."""

import math
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from gitlab_es_pipeline.clients.gitlab import request_kind
from gitlab_es_pipeline_tests.corpus import MAX_FILE_BYTES, expected_after_runs
from gitlab_es_pipeline_tests.pipeline import INDEX, Pipeline
from gitlab_es_pipeline_tests.repos import commit_files, init_repo, run_git
from gitlab_es_pipeline_tests.standins.http import Response


def _repo_with_files(path: Path, count: int) -> Path:
    repo = init_repo(path)
    folder = repo / "src"
    folder.mkdir()
    for i in range(count):
        (folder / f"f{i:05d}.py").write_text(f"value_{i} = {i}\nprint(value_{i})\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "many files")
    return repo


def _indexed(pipeline: Pipeline, repo: Path, key: str) -> tuple[Any, str]:
    """Serve a repository, discover it and index it in full; its project and commit."""
    project = pipeline.gitlab.add_project(key, str(repo))
    pipeline.discover()
    pipeline.index(key)
    return project, run_git(repo, "rev-parse", "HEAD").strip()


def _kinds(pipeline: Pipeline) -> dict[str, int]:
    """Every request GitLab saw, by kind; one of no known kind counts as "other"."""
    return dict(Counter(request_kind(r.raw_path) for r in pipeline.gitlab.requests))


def _exact(pipeline: Pipeline, repo: Path, project: Any, commits: list[str]) -> bool:
    key = project.path_with_namespace
    expected = expected_after_runs(
        repo, commits, project.id, key, "main", f"{pipeline.gitlab.url}/{key}", known_text={}
    )
    return pipeline.es.documents(INDEX) == expected.documents


def test_a_full_load_costs_three_requests_plus_one_per_100_tree_entries(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    repo = _repo_with_files(tmp_path / "r", 450)
    project = pipeline.gitlab.add_project("g/r", str(repo))
    pipeline.discover()
    pipeline.gitlab.requests.clear()
    pipeline.index("g/r")
    entries = 450 + 1  # the files and the folder src
    assert _kinds(pipeline) == {
        "project": 1,
        "branch": 1,
        "tree": math.ceil(entries / 100),
        "archive": 1,
    }
    assert len(pipeline.gitlab.requests) <= 3 + math.ceil(450 / 100) + 1
    assert _exact(pipeline, repo, project, [run_git(repo, "rev-parse", "HEAD").strip()])


def test_one_changed_file_of_10000_costs_at_most_10_requests(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    repo = _repo_with_files(tmp_path / "big", 10_000)
    project, first = _indexed(pipeline, repo, "g/big")
    second = commit_files(repo, {"src/f04242.py": "changed = True\n"})
    pipeline.gitlab.requests.clear()
    pipeline.es.bulk_actions.clear()
    pipeline.index("g/big")
    print(f"\nincremental run, 1 of 10,000 files changed: {_kinds(pipeline)}")
    assert len(pipeline.gitlab.requests) <= 10
    kinds = {"project": 1, "branch": 1, "compare": 1, "file": 1, "raw_blob": 1}
    assert _kinds(pipeline) == kinds
    # Blob id and size by HEAD (no content); the content by blob id, once.
    assert [r.method for r in pipeline.gitlab.requests_of_kind("file")] == ["HEAD"]
    assert dict(pipeline.es.bulk_actions) == {"index": 1, "delete": 1}
    assert _exact(pipeline, repo, project, [first, second])


def test_a_cut_off_comparison_falls_back_to_the_tree(pipeline: Pipeline, tmp_path: Path) -> None:
    repo = _repo_with_files(tmp_path / "r", 20)
    project, first = _indexed(pipeline, repo, "g/r")
    second = commit_files(repo, {f"src/f{i:05d}.py": f"new {i}\n" for i in range(5)})
    pipeline.gitlab.compare_max_files = 3  # GitLab cuts the diff list here
    pipeline.indexing = {"compare_max_files": 3}
    pipeline.gitlab.requests.clear()
    pipeline.index("g/r")
    kinds = _kinds(pipeline)
    assert kinds["compare"] == 1 and kinds["tree"] == 1 and "file" not in kinds
    assert _exact(pipeline, repo, project, [first, second])


def test_a_comparison_flagged_compare_timeout_falls_back_to_the_tree(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """GitLab's limit below the pipeline's compare_max_files: the diff count looks fine, only
    compare_timeout says the list was cut (a run trusting it would miss changed files)."""
    repo = _repo_with_files(tmp_path / "r", 20)
    project, first = _indexed(pipeline, repo, "g/r")
    second = commit_files(repo, {f"src/f{i:05d}.py": f"new {i}\n" for i in range(5)})
    pipeline.gitlab.compare_max_files = 3
    pipeline.gitlab.requests.clear()
    pipeline.index("g/r")
    (compare,) = pipeline.gitlab.requests_of_kind("compare")
    assert compare.status == 200
    kinds = _kinds(pipeline)
    assert kinds["tree"] == 1 and "file" not in kinds
    assert _exact(pipeline, repo, project, [first, second])


def test_a_failed_comparison_falls_back_to_the_tree(pipeline: Pipeline, tmp_path: Path) -> None:
    repo = _repo_with_files(tmp_path / "r", 20)
    project, first = _indexed(pipeline, repo, "g/r")
    second = commit_files(repo, {"src/f00001.py": "x\n"}, delete=("src/f00002.py",))
    # The indexed commit was garbage-collected after a force-push: GitLab answers 404.
    pipeline.gitlab.faults.append(
        lambda request, path: (
            Response(404, {"message": "404 Ref Not Found"}) if "/compare" in path else None
        )
    )
    pipeline.gitlab.requests.clear()
    pipeline.index("g/r")
    assert _kinds(pipeline)["tree"] == 1
    assert _exact(pipeline, repo, project, [first, second])


def test_a_changed_file_over_the_size_cap_is_never_downloaded(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    repo = _repo_with_files(tmp_path / "r", 20)
    project, first = _indexed(pipeline, repo, "g/r")
    too_large = "x = 1\n" * (MAX_FILE_BYTES // 6 + 1)
    second = commit_files(repo, {"src/f00003.py": too_large, "src/f00004.py": "small = True\n"})
    pipeline.gitlab.requests.clear()
    pipeline.index("g/r")
    kinds = _kinds(pipeline)
    assert kinds["file"] == 2 and kinds["raw_blob"] == 1  # only the small one's content
    assert "tree" not in kinds and "archive" not in kinds
    manifest = pq.read_table(pipeline.storage / "file_manifest" / "g" / "r.parquet")
    rows = {row["path"]: row for row in manifest.to_pylist()}
    assert rows["src/f00003.py"]["skip_reason"] == "too_large"
    assert rows["src/f00003.py"]["size"] == len(too_large)
    assert _exact(pipeline, repo, project, [first, second])
