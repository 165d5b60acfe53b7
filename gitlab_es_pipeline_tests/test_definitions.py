"""The Definitions object, the lineage a person sees, and configuration from the environment."""

import subprocess
import sys
from pathlib import Path

from dagster import AssetKey, DagsterInstance

from gitlab_es_pipeline.definitions import defs

ROOT = Path(__file__).resolve().parents[1]


def test_four_assets_in_a_chain() -> None:
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"repositories", "file_manifest", "line_documents", "es_index"}
    parents = {
        k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys}
        for k in graph.get_all_asset_keys()
    }
    assert parents["file_manifest"] == {"repositories"}
    assert parents["line_documents"] == {"file_manifest"}
    assert parents["es_index"] == {"file_manifest", "line_documents"}
    for key in ("file_manifest", "line_documents", "es_index"):
        assert graph.get(AssetKey(key)).partitions_def.name == "repositories"
    assert defs.resolve_job_def("index_repository") is not None


def test_secrets_are_env_vars_not_values(monkeypatch) -> None:
    monkeypatch.setenv("GITLAB_TOKEN", "glpat-super-secret")
    monkeypatch.setenv("ELASTICSEARCH_API_KEY", "es-super-secret")
    code = (
        "from gitlab_es_pipeline.definitions import defs;"
        "r = defs.resources;"
        "print(repr(r['gitlab']), repr(r['elasticsearch']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert "super-secret" not in out
    assert "GITLAB_TOKEN" in out and "ELASTICSEARCH_API_KEY" in out


def test_workspace_and_dagster_yaml_load(tmp_path: Path) -> None:
    workspace = (ROOT / "workspace.yaml").read_text()
    assert "gitlab_es_pipeline.definitions" in workspace
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    instance = DagsterInstance.from_config(str(tmp_path))
    try:
        assert instance.run_storage is not None
    finally:
        instance.dispose()
