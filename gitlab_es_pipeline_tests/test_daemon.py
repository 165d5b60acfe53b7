"""The real thing: dagster-daemon runs the schedule, the sensor and the runs, on PostgreSQL.

The daemon is killed and started again between pushes: the indexed commits, the sensor's
cursor and the run history are in PostgreSQL, so the restarted daemon indexes exactly what
changed and nothing twice.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from gitlab_es_pipeline_tests.corpus import expected_after_runs
from gitlab_es_pipeline_tests.pipeline import INDEX
from gitlab_es_pipeline_tests.postgres import TempPostgres
from gitlab_es_pipeline_tests.repos import commit_files, init_repo, run_git
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn
from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn

ROOT = Path(__file__).resolve().parents[1]
DAEMON = str(Path(sys.executable).parent / "dagster-daemon")

pytestmark = pytest.mark.daemon


def runs_in_progress(env: dict[str, str]) -> int:
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        instance = DagsterInstance.from_config(env["DAGSTER_HOME"])
        try:
            return len(
                instance.get_runs(
                    RunsFilter(
                        statuses=[
                            DagsterRunStatus.QUEUED,
                            DagsterRunStatus.STARTING,
                            DagsterRunStatus.STARTED,
                        ]
                    )
                )
            )
        finally:
            instance.dispose()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def wait_until(condition: Callable[[], bool], seconds: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    raise AssertionError(
        f"timed out after {seconds} s waiting for {what}\n--- daemon log ---\n{tail}"
    )


class Daemon:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [DAEMON, "run", "-w", str(ROOT / "workspace.yaml")],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


@pytest.fixture
def database(postgres: TempPostgres) -> str:
    conn = psycopg2.connect(postgres.url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS daemon_test")
        cur.execute("CREATE DATABASE daemon_test")
    conn.close()
    return postgres.url.rsplit("/", 1)[0] + "/daemon_test"


@pytest.fixture
def daemon_env(
    tmp_path: Path, database: str, gitlab_server: GitLabStandIn, es_server: ElasticsearchStandIn
) -> Iterator[dict[str, str]]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": database,
        "GITLAB_URL": gitlab_server.url,
        "GITLAB_TOKEN": gitlab_server.token,
        "ELASTICSEARCH_URL": es_server.url,
        "ELASTICSEARCH_API_KEY": es_server.api_key or "",
        "PARQUET_STORAGE_URL": str(tmp_path / "parquet"),
        "DISCOVERY_CRON": "* * * * *",
        "HEAD_SENSOR_INTERVAL_SECONDS": "3",
        "HEAD_SENSOR_RECHECK_SECONDS": "0",
    }
    env.pop("DAGSTER_PG_HOST", None)
    yield env


def test_schedule_and_sensor_keep_the_index_in_step_across_daemon_restarts(
    tmp_path: Path,
    daemon_env: dict[str, str],
    gitlab_server: GitLabStandIn,
    es_server: ElasticsearchStandIn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app_repo, quiet_repo = init_repo(tmp_path / "app"), init_repo(tmp_path / "quiet")
    indexed = {
        "team/app": [commit_files(app_repo, {"a.py": "a = 1\n", "b.txt": "one\ntwo\nthree\n"})],
        "team/quiet": [commit_files(quiet_repo, {"q.txt": "quiet\n"})],
    }
    projects = {
        "team/app": gitlab_server.add_project("team/app", str(app_repo)),
        "team/quiet": gitlab_server.add_project("team/quiet", str(quiet_repo)),
    }
    repos = {"team/app": app_repo, "team/quiet": quiet_repo}

    def index_is_exact() -> bool:
        expected: dict = {}
        for key, project in projects.items():
            expected.update(
                expected_after_runs(
                    repos[key],
                    indexed[key],
                    project.id,
                    key,
                    "main",
                    f"{gitlab_server.url}/{key}",
                    known_text={},
                ).documents
            )
        return es_server.documents(INDEX) == expected

    log = tmp_path / "daemon.log"
    daemon = Daemon(daemon_env, log)
    daemon.start()
    try:
        # The schedule discovers both repositories, the sensor indexes them.
        wait_until(index_is_exact, 240, "the first full load", log)

        indexed["team/app"].append(commit_files(app_repo, {"b.txt": "one\n", "c.txt": "new\n"}))
        projects["team/app"].record_push(throttle_seconds=0)
        wait_until(index_is_exact, 120, "the incremental update", log)

        # Every Dagster process goes once the run is over (its documents land before Dagster
        # records it; a run cut off there is test_incremental's killed-run case); the state
        # stays in PostgreSQL.
        wait_until(lambda: runs_in_progress(daemon_env) == 0, 120, "the run to finish", log)
        daemon.stop()
        daemon.start()
        indexed["team/app"].append(commit_files(app_repo, {"a.py": "a = 2\n"}, delete=("c.txt",)))
        projects["team/app"].record_push(throttle_seconds=0)
        wait_until(index_is_exact, 180, "the update after the restart", log)
        time.sleep(10)  # a few more sensor ticks: nothing more may be requested
    finally:
        daemon.stop()

    for name, value in daemon_env.items():
        monkeypatch.setenv(name, value)
    instance = DagsterInstance.from_config(daemon_env["DAGSTER_HOME"])
    try:
        # The first load: both small repositories in one batch.
        (batch,) = instance.get_runs(RunsFilter(job_name="index_repositories"))
        assert batch.status == DagsterRunStatus.SUCCESS
        config: dict[str, Any] = dict(batch.run_config)
        members = config["ops"]["index_batch"]["config"]["repositories"]
        assert members == {
            "team/app": indexed["team/app"][0],
            "team/quiet": indexed["team/quiet"][0],
        }
        # Each later push: one repository, a run of its own.
        runs = instance.get_runs(RunsFilter(job_name="index_repository"))
        per_repo: dict[str, list[str]] = {}
        for run in runs:
            per_repo.setdefault(run.tags["dagster/partition"], []).append(run.status.value)
        assert per_repo == {"team/app": [DagsterRunStatus.SUCCESS.value] * 2}
        heads = {run.tags["gitlab_es_pipeline/commit"] for run in runs}
        assert heads == set(indexed["team/app"][1:])
        assert run_git(app_repo, "rev-parse", "HEAD").strip() == indexed["team/app"][-1]
    finally:
        instance.dispose()
