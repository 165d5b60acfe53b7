"""Repositories in odd states: each has one defined outcome (see the README's *Bad input*)."""

from __future__ import annotations

from pathlib import Path

from dagster import AssetKey, AssetRecordsFilter

from gitlab_es_pipeline.state import last_indexed
from gitlab_es_pipeline_tests.pipeline import INDEX, Pipeline
from gitlab_es_pipeline_tests.repos import Submodule, commit_files, init_repo, run_git


def _metadata(pipeline: Pipeline, asset: str, partition: str) -> dict:
    records = pipeline.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


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
    message = data.user_failure_data.description
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
        assert _metadata(pipeline, "es_index", key)["lines"] == 0
    assert _metadata(pipeline, "file_manifest", "team/only-sub")["skipped_submodule"] == 1
    assert _metadata(pipeline, "file_manifest", "team/empty-tree")["files"] == 0
    assert pipeline.es.documents(INDEX) == {}
