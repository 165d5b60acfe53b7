"""The Definitions object, the lineage a person sees, and configuration from the environment."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, QueuedRunCoordinator

from gitlab_es_pipeline.definitions import defs
from gitlab_es_pipeline.defs.pools import ensure_pools
from gitlab_es_pipeline.defs.retries import step_retry_policy
from gitlab_es_pipeline.instance.logs import JsonLinesFormatter
from gitlab_es_pipeline.instance.storage import postgres_url_from_env, with_psycopg2_driver
from gitlab_es_pipeline_tests.pipeline import Pipeline
from gitlab_es_pipeline_tests.repos import commit_files, init_repo
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn
from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn

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
    # Steps that call GitLab or Elasticsearch take a slot of their pool (dagster.yaml).
    pools = {k.to_user_string(): graph.get(k).pools for k in graph.get_all_asset_keys()}
    assert pools == {
        "repositories": {"gitlab"},
        "file_manifest": {"gitlab"},
        "line_documents": {"gitlab"},
        "es_index": {"elasticsearch"},
    }


def test_backfills_run_ranges_of_partitions_and_loading_says_no_beta_warning_of_it() -> None:
    graph = defs.resolve_asset_graph()
    policies = {k: graph.get(AssetKey(k)).backfill_policy for k in ("file_manifest", "es_index")}
    assert {str(p) for p in policies.values()} == {
        "BackfillPolicy.multi_run(max_partitions_per_run=50)"
    }
    # In a fresh process, with every warning shown: Dagster's beta notice about the policy
    # parameter is the one silenced (each run process would print it), and only that one.
    shown = subprocess.run(
        [
            sys.executable,
            *("-W", "default", "-c"),
            "import gitlab_es_pipeline.definitions as d; from dagster import AssetKey; "
            "print(d.defs.resolve_asset_graph().get(AssetKey('es_index')).backfill_policy)",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BACKFILL_PARTITIONS_PER_RUN": "7"},
        check=True,
    )
    assert "backfill_policy" not in shown.stderr
    assert "Parameter `owners`" in shown.stderr  # other warnings still show
    assert shown.stdout.strip() == "BackfillPolicy.multi_run(max_partitions_per_run=7)"


def test_the_lineage_graph_explains_itself() -> None:
    """Every asset says what it is, who owns it, and which systems it touches (UI kinds)."""
    graph = defs.resolve_asset_graph()
    kinds = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert len(node.description or "") > 40, key
        assert node.owners == ["team:data-platform"], key
        kinds[key.to_user_string()] = node.kinds
    assert kinds == {
        "repositories": {"gitlab", "parquet"},
        "file_manifest": {"gitlab", "parquet"},
        "line_documents": {"gitlab", "parquet"},
        "es_index": {"elasticsearch", "parquet"},
    }


def test_secrets_are_env_vars_not_values(monkeypatch: pytest.MonkeyPatch) -> None:
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


def test_workspace_names_the_definitions() -> None:
    workspace = (ROOT / "workspace.yaml").read_text()
    assert "gitlab_es_pipeline.definitions" in workspace


@pytest.mark.parametrize("project_instance", ["sqlite", "postgres"], indirect=True)
def test_dagster_yaml_selects_the_storage_from_the_environment(
    project_instance: DagsterInstance, request: pytest.FixtureRequest
) -> None:
    storage = type(project_instance.get_ref().storage).__name__
    expected = "PostgresStorage" if "postgres" in request.node.name else "SqliteStorage"
    assert storage.endswith(expected)
    # ensure_pools (called by the sensor and discovery) creates the pools with their limit.
    ensure_pools(project_instance)
    assert {"gitlab", "elasticsearch"} <= set(
        project_instance.event_log_storage.get_concurrency_keys()
    )
    assert project_instance.event_log_storage.get_concurrency_info("gitlab").slot_count == 4
    assert project_instance.get_runs() == []
    concurrency = project_instance.get_concurrency_config()
    assert concurrency.pool_config.default_pool_limit == 4
    assert concurrency.run_queue_config.max_concurrent_runs == 4
    assert concurrency.run_queue_config.tag_concurrency_limits[0]["key"] == "dagster/partition"
    # The queue looked at every second, beside the limits above (docs/benchmark.md).
    assert isinstance(project_instance.run_coordinator, QueuedRunCoordinator)
    assert project_instance.run_coordinator.dequeue_interval_seconds == 1


def test_postgres_url_from_the_environment() -> None:
    assert postgres_url_from_env({}) is None
    assert postgres_url_from_env({"DAGSTER_PG_URL": "postgresql://u@h/d"}) == "postgresql://u@h/d"
    assert (
        postgres_url_from_env(
            {"DAGSTER_PG_HOST": "db", "DAGSTER_PG_USER": "me", "DAGSTER_PG_PASSWORD": "p@ss/word"}
        )
        == "postgresql://me:p%40ss%2Fword@db:5432/dagster"
    )
    assert with_psycopg2_driver("postgres://x") == "postgresql+psycopg2://x"
    assert with_psycopg2_driver("postgresql+psycopg://x") == "postgresql+psycopg://x"


@pytest.mark.parametrize("project_instance", ["sqlite"], indirect=True)
def test_runs_log_json_lines_with_run_and_repository(
    project_instance: DagsterInstance,
    gitlab_server: GitLabStandIn,
    es_server: ElasticsearchStandIn,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """dagster.yaml's python_logs: each message of a run is also one JSON object on stderr."""
    pipeline = Pipeline(gitlab_server, es_server, project_instance, tmp_path / "parquet")
    repo = init_repo(tmp_path / "app")
    commit_files(repo, {"a.py": "x = 1\n"})
    gitlab_server.add_project("team/app", str(repo))
    pipeline.discover()
    capfd.readouterr()
    run_id = pipeline.index("team/app").run_id
    lines = []
    for line in capfd.readouterr().err.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    ours = [line for line in lines if line.get("run_id") == run_id]
    assert ours and all(line["repository"] == "team/app" for line in ours)
    assert all(line["level"] in ("INFO", "WARNING", "ERROR", "CRITICAL") for line in ours)
    done = [line for line in ours if line["message"].startswith("team/app: write: done, 1 of 1")]
    assert len(done) == 1 and done[0]["step"] == "es_index" and done[0]["time"].endswith("+00:00")
    read = [line for line in ours if line["message"].startswith("team/app: read: done, 1 files")]
    assert len(read) == 1 and read[0]["step"] == "manifest_and_line_documents"
    # ... and in the run's captured stderr, which the UI shows.
    captured = Path(os.environ["DAGSTER_HOME"]) / "storage" / run_id
    assert any(
        '"message": "team/app: write: done' in p.read_text(errors="replace")
        for p in captured.rglob("*.err")
    )


@pytest.mark.parametrize("formatter", ["JsonLogFormatter", "JsonLinesFormatter"])
def test_a_dagster_yaml_copied_before_the_modules_moved_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, formatter: str
) -> None:
    """`dev` copies dagster.yaml into DAGSTER_HOME once and never overwrites it: a copy made
    before 2026-12-05 names the storage and the log formatter by their old module paths."""
    old = (
        (ROOT / "dagster.yaml")
        .read_text()
        .replace("gitlab_es_pipeline.instance.storage", "gitlab_es_pipeline.storage")
        .replace(
            "gitlab_es_pipeline.instance.logs.JsonLinesFormatter",
            f"gitlab_es_pipeline.logs.{formatter}",
        )
    )
    assert "gitlab_es_pipeline.storage" in old and f"gitlab_es_pipeline.logs.{formatter}" in old
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(old)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    monkeypatch.delenv("DAGSTER_PG_HOST", raising=False)
    instance = DagsterInstance.from_config(str(home))
    try:
        assert type(instance.get_ref().storage).__name__.endswith("SqliteStorage")
        formatters = {type(h.formatter) for h in instance.get_handlers() if h.formatter}
        assert JsonLinesFormatter in formatters
    finally:
        instance.dispose()


def test_the_step_retries_come_when_the_docs_say(monkeypatch: pytest.MonkeyPatch) -> None:
    """README and docs/operations.md give the retries' waits; Dagster computes them (its own
    calculate_delay). None comes at once. The defaults: the tests set both."""
    monkeypatch.delenv("INDEX_STEP_RETRIES", raising=False)
    monkeypatch.delenv("INDEX_STEP_RETRY_DELAY_SECONDS", raising=False)
    policy = step_retry_policy()
    assert policy.max_retries == 3
    for attempt, wait in {1: 60, 2: 180, 3: 420}.items():
        assert {policy.calculate_delay(attempt) for _ in range(200)} == {wait}, attempt
    for text in ((ROOT / "README.md").read_text(), (ROOT / "docs/operations.md").read_text()):
        assert "60 s, 180 s and 420 s" in " ".join(text.split())
