"""Pushes to a few repositories of a large fleet: how soon they are searchable, and what an
idle sensor tick costs.

    .venv/bin/python bench/fleet_push.py                  # 10,000 partitions, 100 pushed

The production path, as bench/fleet.py: a DAGSTER_HOME with the project's dagster.yaml
(SQLite), the stand-ins in processes of their own, discovery of the fleet (the `repositories`
asset), then `dagster-daemon run` with the project's defaults (the HEAD-commit sensor every
60 s, runs from the queue, batches of INDEX_BATCH_SIZE).

The fleet: `--pushed` small repositories of their own and the rest idle, last active two days
ago, sharing one repository on disk. The idle ones are recorded as indexed at their commit (an
`es_index` materialization with the commit and the file count, what a run leaves for the
sensor), which takes a few milliseconds each instead of indexing 10,000 repositories first;
the pushed ones are indexed for real by the daemon from nothing.

Then, in order:
1. idle ticks: the daemon's own sensor ticks (their start and end times in Dagster's tick
   storage) while nothing changes;
2. a push to each of the pushed repositories (a commit, and GitLab's last_activity_at), then
   the time from the push until each has an `es_index` materialization of its new commit.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from fleet import _storing_elasticsearch, discover_fleet, running_daemon  # noqa: E402
from generate import make_repo  # noqa: E402
from servers import gitlab_server_pushable, running  # noqa: E402

SENSOR = "head_commit_sensor"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def _push(repo: Path) -> str:
    """A new commit on the repository's default branch; its id."""
    (repo / "pushed.txt").write_text(f"pushed at {time.time()}\n")
    _git(repo, "add", "pushed.txt")
    _git(repo, "-c", "user.name=bench", "-c", "user.email=b@example.com", "commit", "-qm", "push")
    return _git(repo, "rev-parse", "HEAD")


def _sensor_ticks(instance: Any, after: float) -> list[Any]:
    from dagster._core.definitions.run_request import InstigatorType

    states = [
        s
        for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        if s.instigator_name == SENSOR
    ]
    ticks = []
    for state in states:
        ticks += instance.get_ticks(state.instigator_origin_id, state.selector_id, after=after)
    return sorted((t for t in ticks if t.end_timestamp), key=lambda t: t.timestamp)


class Materializations:
    """es_index materializations as they are recorded: partition -> (commit, time), read a
    page at a time from where the last look ended (one query a look, whatever the fleet)."""

    def __init__(self, instance: Any) -> None:
        self.instance = instance
        self.cursor: str | None = None
        self.seen: dict[str, tuple[str, float]] = {}

    def look(self) -> dict[str, tuple[str, float]]:
        from dagster import AssetRecordsFilter

        from gitlab_es_pipeline.defs.asset_keys import ES_INDEX

        while True:
            page = self.instance.fetch_materializations(
                AssetRecordsFilter(asset_key=ES_INDEX),
                limit=1000,
                cursor=self.cursor,
                ascending=True,
            )
            for record in page.records:
                commit = record.asset_materialization.metadata.get("commit_sha")
                if record.partition_key and commit is not None:
                    self.seen[record.partition_key] = (str(commit.value), record.timestamp)
            self.cursor = page.cursor
            if not page.has_more:
                return self.seen


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--partitions", type=int, default=10_000)
    parser.add_argument("--pushed", type=int, default=100)
    parser.add_argument("--idle-ticks", type=int, default=3, help="idle ticks to time")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gitlab-es-bench-push-"))
    try:
        idle_repo = work / "repos" / "idle"
        make_repo(idle_repo, 3, 5, seed=1)
        pushed = {f"fleet/b{i:03d}": work / "repos" / f"b{i}" for i in range(args.pushed)}
        for i, repo in enumerate(pushed.values()):
            make_repo(repo, 3, 5, seed=2000 + i)
        idle = [f"fleet/p{i:05d}" for i in range(args.partitions - args.pushed)]
        projects = {key: str(idle_repo) for key in idle}
        projects.update({key: str(repo) for key, repo in pushed.items()})
        two_days_ago = datetime.now(timezone.utc) - timedelta(days=2)
        since = two_days_ago.strftime("%Y-%m-%dT%H:%M:%S.000Z")

        with (
            gitlab_server_pushable(projects, since) as (gitlab, ask),
            running(_storing_elasticsearch) as es,
        ):
            started = time.monotonic()
            env, instance = discover_fleet(work, "push", gitlab, es, {})
            from dagster import AssetMaterialization

            from gitlab_es_pipeline.defs.asset_keys import ES_INDEX

            print(f"discovery of {len(projects)} projects: {time.monotonic() - started:.1f} s")
            started = time.monotonic()
            idle_head = _git(idle_repo, "rev-parse", "HEAD")
            for key in idle:
                instance.report_runless_asset_event(
                    AssetMaterialization(
                        ES_INDEX,
                        partition=key,
                        metadata={"commit_sha": idle_head, "files_indexed": 3},
                    )
                )
            print(f"{len(idle)} idle repositories recorded: {time.monotonic() - started:.1f} s")

            log = work / "daemon.log"
            with running_daemon(env, log):
                keys = sorted(pushed)
                indexed = Materializations(instance)
                started = time.monotonic()
                while any(key not in indexed.look() for key in keys):
                    if time.monotonic() - started > 900:
                        raise RuntimeError(f"first load not done in 900 s; see {log}")
                    time.sleep(2)
                print(f"{len(keys)} new repositories indexed: {time.monotonic() - started:.1f} s")

                idle_since = time.time()
                while len(_sensor_ticks(instance, idle_since)) < args.idle_ticks:
                    time.sleep(5)
                idle_ticks = _sensor_ticks(instance, idle_since)[: args.idle_ticks]

                commits, pushed_at = {}, {}
                for key in keys:
                    commits[key] = _push(pushed[key])
                    ask(("push", key))
                    pushed_at[key] = time.time()
                pushes_took = pushed_at[keys[-1]] - pushed_at[keys[0]]
                while True:
                    seen = indexed.look()
                    done = [k for k in keys if seen[k][0] == commits[k]]
                    if len(done) == len(keys):
                        break
                    if time.time() - pushed_at[keys[-1]] > 900:
                        raise RuntimeError(f"{len(done)} of {len(keys)} pushes indexed; see {log}")
                    time.sleep(2)
            instance.dispose()

        durations = [t.end_timestamp - t.timestamp for t in idle_ticks]
        after_push = sorted(seen[k][1] - pushed_at[k] for k in keys)
        print(f"\nfleet: {args.partitions} partitions, {args.pushed} pushed")
        print(f"{'figure':<44} {'seconds':>8}")
        print(
            f"{'idle sensor tick, median of ' + str(len(durations)):<44} "
            f"{statistics.median(durations):>8.2f}"
        )
        print(f"{'idle sensor tick, longest':<44} {max(durations):>8.2f}")
        print(f"{'pushes made (commits and GitLab activity)':<44} {pushes_took:>8.1f}")
        print(f"{'push to searchable, first repository':<44} {after_push[0]:>8.1f}")
        print(f"{'push to searchable, median':<44} {statistics.median(after_push):>8.1f}")
        print(f"{'push to searchable, last repository':<44} {after_push[-1]:>8.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
