"""`gitlab-es-pipeline dev`, the README's first command: a fresh folder, a new shell, no
warning that asks the user to act."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

from gitlab_es_pipeline.cli.dev import dev_command
from gitlab_es_pipeline_tests.processes import (
    free_port,
    launch_backfill_of_all,
    launch_materialization,
    stop,
    wait_until_serving,
)
from gitlab_es_pipeline_tests.repos import commit_files, init_repo
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn
from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn
from gitlab_es_pipeline_tests.test_daemon import wait_until

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "gitlab-es-pipeline"
REPOS = ("acme/api", "acme/web")


def _new_shell_env(
    gitlab: GitLabStandIn | None = None, es: ElasticsearchStandIn | None = None
) -> dict[str, str]:
    """The environment of a new shell in which the README's variables were exported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "PYTHONWARN"))}
    env.update(
        GITLAB_URL=gitlab.url if gitlab else "http://127.0.0.1:9",
        GITLAB_TOKEN=gitlab.token if gitlab else "glpat-not-used",
        ELASTICSEARCH_URL=es.url if es else "http://127.0.0.1:9",
        DAGSTER_DISABLE_TELEMETRY="yes",
    )
    if es:
        env["ELASTICSEARCH_API_KEY"] = es.api_key or ""
    return env


def test_dev_prepares_the_instance_folder_and_its_first_hour_prints_no_warning_to_act_on(
    tmp_path: Path,
    gitlab_server: GitLabStandIn,
    es_server: ElasticsearchStandIn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README's first hour: dev, discovery from the UI, the sensor indexing each new
    repository in a run of its own, then a backfill of everything (its range run). The run
    processes print into dev's output too: none may warn."""
    files = {name: {"main.py": f"print({name!r})", "README.md": "# hi"} for name in REPOS}
    for name, contents in files.items():
        repo = init_repo(tmp_path / "repos" / name)
        commit_files(repo, {path: line + "\n" for path, line in contents.items()})
        gitlab_server.add_project(name, str(repo))
    folder = tmp_path / "checkout"  # as a clone of the project: its dagster.yaml at the top
    folder.mkdir()
    (folder / "dagster.yaml").write_bytes((ROOT / "dagster.yaml").read_bytes())
    port, hook_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "dev.log"
    env = _new_shell_env(gitlab_server, es_server)
    env["HOOK_RECEIVER_PORT"] = str(hook_port)
    # Sooner ticks, and a run per repository (the single-partition assets' code).
    env.update(HEAD_SENSOR_INTERVAL_SECONDS="5", HEAD_SENSOR_POLL_SECONDS="5", INDEX_BATCH_SIZE="1")
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [str(SCRIPT), "dev", "-h", "127.0.0.1", "-p", str(port)],
            cwd=folder,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    home = folder / ".dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # this process's look at the runs
    try:
        wait_until_serving(url, server, log)
        # The instance is the prepared folder, on the project's dagster.yaml.
        assert (home / "dagster.yaml").read_bytes() == (ROOT / "dagster.yaml").read_bytes()
        # Dagster's SQLite storage is made there: the runs and schedules databases.
        assert (home / "history" / "runs.db").is_file(), sorted(p.name for p in home.iterdir())
        assert (home / "schedules").is_dir()
        # The hook receiver beside the UI, on loopback, recording into the same instance.
        health = f"http://127.0.0.1:{hook_port}/healthz"
        wait_until(lambda: _answers(health), 30, "the hook receiver", log)
        launch_materialization(url, ["repositories"])
        sensor_runs = _finished_runs(home, 3, log)  # discovery, then a run per repository
        launch_backfill_of_all(url, ["file_manifest", "line_documents", "es_index"])
        runs = _finished_runs(home, 4, log)
    finally:
        stop(server)
    # It ends with `dagster dev`.
    wait_until(lambda: not _answers(health), 30, "the hook receiver to end", log)
    assert sorted(r.job_name for r in sensor_runs) == [
        "__ASSET_JOB",
        "index_repository",
        "index_repository",
    ]
    assert {r.status for r in runs} == {DagsterRunStatus.SUCCESS}, log.read_text()
    indexed = {
        (d["repository_name"], d["file_path"], d["line_number"], d["line_content"])
        for d in es_server.documents("gitlab-lines").values()
    }
    assert indexed == {(n, p, 1, line) for n, c in files.items() for p, line in c.items()}
    output = log.read_text()
    assert f"Dagster instance in {home}" in output
    assert "will not be used" not in output, output
    assert "Warning" not in output.replace("BetaWarning", "Warning"), output

    # Started again: the folder's dagster.yaml is kept (a user may have edited it).
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text() + "\n# mine\n")
    done = subprocess.run(
        [str(SCRIPT), "dev", "--help"], cwd=folder, env=_new_shell_env(), capture_output=True
    )
    assert done.returncode == 0, done.stderr
    assert (home / "dagster.yaml").read_text().endswith("# mine\n")


@pytest.mark.parametrize("quiet", [False, True])
def test_the_yaml_logging_beta_warning_is_silenced_only_by_the_launchers_environment(
    tmp_path: Path, quiet: bool
) -> None:
    """Every run process opens the instance and its JSON log handler; Dagster warns there."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_bytes((ROOT / "dagster.yaml").read_bytes())
    env = {**_new_shell_env(), "DAGSTER_HOME": str(home)}
    if quiet:
        _, env = dev_command(home, [])
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from dagster import DagsterInstance; DagsterInstance.get().get_handlers()",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert ("yaml-defined logging" in done.stderr) is not quiet, done.stderr


def test_without_a_dagster_yaml_to_copy_dev_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An install without the project's files (a wheel) and an empty DAGSTER_HOME."""
    from gitlab_es_pipeline.cli import dev as launcher
    from gitlab_es_pipeline.cli.main import main

    monkeypatch.setattr(launcher, "PROJECT", tmp_path / "no-project")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert main(["dev", "--skip-checks"]) == 2  # the services are not its subject
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("gitlab-es-pipeline dev: ") and "put a dagster.yaml there" in error


def _finished_runs(home: Path, count: int, log: Path, seconds: float = 240) -> list[DagsterRun]:
    """The instance's runs once `count` of them have finished."""
    deadline = time.monotonic() + seconds
    with DagsterInstance.from_config(str(home)) as instance:
        while True:
            runs = instance.get_runs()
            if len(runs) >= count and all(r.is_finished for r in runs):
                return list(runs)
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(runs)} runs, not {count} finished: {log.read_text()}")
            time.sleep(1)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False
