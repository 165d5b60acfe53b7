"""A fleet of small repositories through the production path: what a run costs.

    .venv/bin/python bench/fleet.py                     # 40 repositories, three ways
    .venv/bin/python bench/fleet.py --repositories 1000 --mode batched
    .venv/bin/python bench/fleet.py --repositories 1000 --mode batched --storage postgres
    .venv/bin/python bench/fleet.py --mode batched --storage sqlite-dagster --storage sqlite

Three ways to run the fleet: a run per repository with a process per step (`multiprocess`),
a run per repository with its steps in the run's process (`in_process`), and the sensor's
batches of small repositories (`batched`: in_process, INDEX_BATCH_SIZE repositories a run).
For each: a DAGSTER_HOME with the project's dagster.yaml, on SQLite or (`--storage postgres`) a
real PostgreSQL server started here with fsync on, as in production (or `sqlite-dagster`:
Dagster's own SQLite storage, without the project's engine-keeping event log, to compare); the
GitLab and Elasticsearch stand-ins in processes of their own, discovery of the fleet (the
`repositories` asset, in this process), then `dagster-daemon run` on the project's workspace:
the HEAD-commit sensor asks for a run per never-indexed repository and the daemon's run queue
launches them, as many at once as dagster.yaml allows. The clock runs from the daemon's start
until every partition has an `es_index` materialization; the machine's CPU (all processes:
daemon, code server, run workers, step processes, stand-ins) over the same span comes from
/proc/stat. Prints wall and CPU seconds per repository, side by side for the ways, and the
share of that CPU spent by the stand-ins (GitLab's includes its `git` processes): work a real
GitLab and a real cluster do on their own machines."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from generate import make_repo  # noqa: E402
from servers import (  # noqa: E402
    API_KEY,
    TOKEN,
    gitlab_server_measured,
    running_measured,
    serve_until_stopped,
)

DAEMON = str(Path(sys.executable).parent / "dagster-daemon")


@contextlib.contextmanager
def running_daemon(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """`dagster-daemon run` on the project's workspace, as deployed. In a session of its own,
    so that stopping it ends the run workers it started too."""
    with log.open("ab") as out:
        daemon = subprocess.Popen(
            [DAEMON, "run", "-w", str(ROOT / "workspace.yaml")],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield daemon
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(60)


def _storing_elasticsearch(conn: Any) -> None:
    """The stand-in that keeps documents (the runs' asset check counts them)."""
    from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn

    server = ElasticsearchStandIn(api_key=API_KEY).start()
    conn.send(server.url)
    serve_until_stopped(conn)
    server.stop()


PROJECT_STORAGE = """storage:
  custom:
    module: gitlab_es_pipeline.instance.storage
    class: EnvironmentSelectedStorage
    config: {}
"""


def discover_fleet(
    work: Path,
    name: str,
    gitlab: str,
    es: str,
    settings: dict[str, str],
    dagster_sqlite: bool = False,
) -> tuple[dict[str, str], Any]:
    """A DAGSTER_HOME with the project's dagster.yaml (with Dagster's own SQLite storage in it
    if asked), the environment the daemon gets (the stand-ins, and `settings` over the
    defaults), and the fleet discovered into it (the `repositories` asset, in this process):
    the environment and the instance."""
    home = work / f"home-{name}"
    home.mkdir(parents=True)
    instance_yaml = (ROOT / "dagster.yaml").read_text()
    if dagster_sqlite:
        assert PROJECT_STORAGE in instance_yaml, "the project's dagster.yaml changed its storage"
        stock = f"storage:\n  sqlite:\n    base_dir: {home}\n"
        instance_yaml = instance_yaml.replace(PROJECT_STORAGE, stock)
    (home / "dagster.yaml").write_text(instance_yaml)
    inherited = {k: v for k, v in os.environ.items() if k != "DAGSTER_PG_URL"}
    env = {
        **inherited,
        "DAGSTER_HOME": str(home),
        "GITLAB_URL": gitlab,
        "GITLAB_TOKEN": TOKEN,
        "ELASTICSEARCH_URL": es,
        "ELASTICSEARCH_API_KEY": API_KEY,
        "ELASTICSEARCH_INDEX": f"fleet-{name.replace('_', '-')}",
        "PARQUET_STORAGE_URL": str(work / f"parquet-{name}"),
        "DAGSTER_DISABLE_TELEMETRY": "yes",
        **settings,
    }
    os.environ.pop("DAGSTER_PG_URL", None)
    os.environ.update(env)  # this process's discovery and instance see what the daemon sees
    from dagster import DagsterInstance, materialize

    from gitlab_es_pipeline.defs.assets import repositories
    from gitlab_es_pipeline.defs.io_managers import ParquetIOManager
    from gitlab_es_pipeline.defs.resources import resources_from_env

    instance = DagsterInstance.from_config(str(home))
    parquet = ParquetIOManager(base_path=env["PARQUET_STORAGE_URL"])
    resources = {**resources_from_env(), "parquet_io_manager": parquet}
    materialize([repositories], instance=instance, resources=resources)
    return env, instance


@contextlib.contextmanager
def _postgres(work: Path, wanted: bool) -> Iterator[Any]:
    """A real PostgreSQL server, fsync on; its CPU is counted with the machine's."""
    if not wanted:
        yield None
        return
    from gitlab_es_pipeline_tests.postgres import TempPostgres

    work.chmod(0o755)  # mkdtemp's 0700 keeps out the `postgres` user that runs it as root
    server = TempPostgres(work / "postgres", durable=True).start()
    try:
        yield server
    finally:
        server.stop()


def busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent outside idle and iowait, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


MODES = {  # way -> (RUN_EXECUTOR, INDEX_BATCH_SIZE)
    "multiprocess": ("multiprocess", 1),
    "in_process": ("in_process", 1),
    "batched": ("in_process", 50),
}


def index_fleet(
    mode: str,
    gitlab: str,
    es: str,
    keys: list[str],
    work: Path,
    batch_size: int,
    standins_cpu: Any,
    storage: str,
    postgres_url: str | None,
) -> dict[str, Any]:
    executor, default_batch = MODES[mode]
    name = f"{mode}-{storage}"
    settings = {
        "RUN_EXECUTOR": executor,
        "INDEX_BATCH_SIZE": str(batch_size if mode == "batched" else default_batch),
        "HEAD_SENSOR_INTERVAL_SECONDS": "5",
        "HEAD_SENSOR_POLL_SECONDS": "5",
        "HEAD_SENSOR_MAX_RUNS_PER_TICK": str(len(keys)),
        **({"DAGSTER_PG_URL": postgres_url} if postgres_url else {}),
    }
    env, instance = discover_fleet(
        work, name, gitlab, es, settings, dagster_sqlite=storage == "sqlite-dagster"
    )
    from dagster import AssetKey

    log = work / f"daemon-{name}.log"
    cpu_before, started = busy_cpu_seconds(), time.monotonic()
    standins_before = standins_cpu()
    try:
        with running_daemon(env, log):
            while True:
                done = instance.get_materialized_partitions(AssetKey("es_index"))
                if len(done) >= len(keys):
                    break
                if time.monotonic() - started > 60 + 30 * len(keys):
                    raise RuntimeError(f"{len(done)} of {len(keys)} indexed; see {log}")
                time.sleep(1)
            wall, cpu = time.monotonic() - started, busy_cpu_seconds() - cpu_before
            standins = standins_cpu() - standins_before
    finally:
        instance.dispose()
    return {"wall": wall, "cpu": cpu, "standins": standins}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repositories", type=int, default=40)
    parser.add_argument("--mode", action="append", choices=list(MODES), default=None)
    parser.add_argument("--batch-size", type=int, default=50, help="for the batched way")
    parser.add_argument(
        "--storage",
        action="append",
        choices=["sqlite", "sqlite-dagster", "postgres"],
        default=None,
    )
    args = parser.parse_args()
    modes = args.mode or list(MODES)
    storages = args.storage or ["sqlite"]
    work = Path(tempfile.mkdtemp(prefix="gitlab-es-bench-fleet-"))
    try:
        projects = {}
        for i in range(args.repositories):
            make_repo(work / "repos" / f"r{i}", 3, 5, seed=1000 + i)
            projects[f"fleet/r{i:04d}"] = str(work / "repos" / f"r{i}")
        results = {}
        with (
            gitlab_server_measured(projects) as (gitlab, gitlab_cpu),
            running_measured(_storing_elasticsearch) as (es, es_cpu),
            _postgres(work, "postgres" in storages) as postgres,
        ):
            for storage in storages:
                for mode in modes:
                    print(f"{mode} on {storage}: indexing {len(projects)} repositories ...")
                    url = postgres.new_database(f"fleet_{mode}") if storage == "postgres" else None
                    results[(mode, storage)] = index_fleet(
                        mode,
                        gitlab,
                        es,
                        sorted(projects),
                        work,
                        args.batch_size,
                        lambda: gitlab_cpu() + es_cpu(),
                        storage,
                        url,
                    )
        print(
            f"\n{'way':<14} {'storage':<15} {'repositories':>12} {'wall s/repo':>12} "
            f"{'CPU s/repo':>11} {'of which stand-ins':>19}"
        )
        for (mode, storage), figures in results.items():
            n = len(projects)
            print(
                f"{mode:<14} {storage:<15} {n:>12} {figures['wall'] / n:>12.2f} "
                f"{figures['cpu'] / n:>11.2f} {figures['standins'] / n:>19.2f}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
