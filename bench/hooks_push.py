"""Push to searchable through GitLab's hooks, in a fleet of 10,000 (issue 26's targets).

    .venv/bin/python bench/hooks_push.py                  # 10,000 partitions
    .venv/bin/python bench/hooks_push.py --partitions 2000 --single 10

The production path, as bench/fleet_push.py: a DAGSTER_HOME with the project's dagster.yaml
(SQLite), the stand-ins in processes of their own, discovery of the fleet, then
`dagster-daemon run` with the project's defaults (the HEAD-commit sensor at each of the
daemon's looks, every 5 s; its poll every 60 s), and `gitlab-es-pipeline receiver` in a
process of its own with a secret, which `hooks install` registers with the GitLab stand-in
as a system hook. The stand-in posts GitLab's payloads to it when the bench pushes or creates
a project.

Measured, in order (idle repositories recorded as indexed, as in fleet_push.py):
1. idle: GitLab requests made while the sensor ticks and nothing happens (between polls);
2. single pushes, one at a time (`--single`, 20): from the hook's delivery until the
   repository's `es_index` materialization of the pushed commit (recorded after its documents
   are written; a real cluster adds at most its refresh interval, 1 s, before a search sees
   them), p50 and p95;
3. `--burst` pushes to as many repositories within a second: until the last is indexed;
4. a new project: its project_create hook, then its first push: until it is indexed.
At the end the pushed lines are looked for with `gitlab-es-pipeline search -F`: the new
project's and the burst's are found; the single pushes' lines, replaced by the burst's in the
same file, are not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from fleet import _storing_elasticsearch, discover_fleet, running_daemon  # noqa: E402
from fleet_push import Materializations, _git, _sensor_ticks  # noqa: E402
from generate import make_repo  # noqa: E402
from servers import gitlab_server_pushable, running  # noqa: E402

SECRET = "bench-hook-secret"
SCRIPT = str(Path(sys.executable).parent / "gitlab-es-pipeline")


def _push(repo: Path, token: str) -> tuple[str, str]:
    before = _git(repo, "rev-parse", "HEAD")
    (repo / "pushed.txt").write_text(f"{token}\n")
    _git(repo, "add", "pushed.txt")
    _git(repo, "-c", "user.name=bench", "-c", "user.email=b@example.com", "commit", "-qm", "push")
    return before, _git(repo, "rev-parse", "HEAD")


def _requests(gitlab: str, clear: bool = False) -> dict[str, int]:
    request = urllib.request.Request(
        f"{gitlab}/__standin/requests", method="DELETE" if clear else "GET"
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return dict(json.load(answer))


def _until_indexed(
    indexed: Materializations, commits: dict[str, str], started: float, log: Path
) -> dict[str, float]:
    """Each key's time of the es_index materialization of its commit."""
    while True:
        seen = indexed.look()
        done = {k: seen[k][1] for k, c in commits.items() if k in seen and seen[k][0] == c}
        if len(done) == len(commits):
            return done
        if time.time() - started > 600:
            raise RuntimeError(f"{len(done)} of {len(commits)} indexed after 600 s; see {log}")
        time.sleep(0.2)


STAGES = ("hook to run requested", "queued", "run worker starting", "steps to indexed")


def _stages(instance: Any, key: str, commit: str, at: float, indexed_at: float) -> list[float]:
    """Where one push's time went: the sensor's tick, the run queue, the run worker's start,
    the run's steps (seconds each, from Dagster's own run and event records)."""
    from dagster import DagsterEventType, RunsFilter

    from gitlab_es_pipeline.defs.sensors import COMMIT_TAG

    runs = instance.get_run_records(
        RunsFilter(tags={"dagster/partition": key, COMMIT_TAG: commit}), limit=1
    )
    if not runs:
        return [float("nan")] * len(STAGES)
    record = runs[0]
    created = record.create_timestamp.timestamp()
    times = {}
    for kind in (DagsterEventType.RUN_STARTING, DagsterEventType.RUN_START):
        entries = instance.all_logs(record.dagster_run.run_id, of_type=kind)
        times[kind] = entries[0].timestamp if entries else float("nan")
    starting, start = times[DagsterEventType.RUN_STARTING], times[DagsterEventType.RUN_START]
    return [created - at, starting - created, start - starting, indexed_at - start]


def _found(env: dict[str, str], prefix: str, most: int) -> int:
    """How many distinct pushed lines starting with the prefix a search finds."""
    search = subprocess.run(
        [SCRIPT, "search", "-F", prefix, "--json", "-n", str(most + 10)],
        env=env,
        capture_output=True,
        text=True,
    )
    if search.returncode not in (0, 1):  # 1: nothing found, as grep
        raise RuntimeError(f"search failed: {search.stderr}")
    return len({hit["line_content"] for hit in json.loads(search.stdout)["matches"]})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--partitions", type=int, default=10_000)
    parser.add_argument("--single", type=int, default=20, help="pushes made one at a time")
    parser.add_argument("--burst", type=int, default=100, help="pushes within a second")
    parser.add_argument(
        "--interval", help="HEAD_SENSOR_INTERVAL_SECONDS (default: the project's own)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gitlab-es-bench-hooks-"))
    receiver: subprocess.Popen | None = None
    try:
        idle_repo = work / "repos" / "idle"
        make_repo(idle_repo, 3, 5, seed=1)
        count = max(args.single, args.burst)
        pushed = {f"fleet/b{i:03d}": work / "repos" / f"b{i}" for i in range(count)}
        for i, repo in enumerate(pushed.values()):
            make_repo(repo, 3, 5, seed=3000 + i)
        idle = [f"fleet/p{i:05d}" for i in range(args.partitions - count)]
        projects = {key: str(idle_repo) for key in idle}
        projects.update({key: str(repo) for key, repo in pushed.items()})
        two_days_ago = datetime.now(timezone.utc) - timedelta(days=2)
        since = two_days_ago.strftime("%Y-%m-%dT%H:%M:%S.000Z")

        with (
            gitlab_server_pushable(projects, since) as (gitlab, ask),
            running(_storing_elasticsearch) as es,
        ):
            settings = {"HEAD_SENSOR_INTERVAL_SECONDS": args.interval} if args.interval else {}
            env, instance = discover_fleet(work, "hooks", gitlab, es, settings)
            env["GITLAB_HOOK_SECRET"] = SECRET
            from dagster import AssetMaterialization

            from gitlab_es_pipeline.defs.asset_keys import ES_INDEX

            idle_head = _git(idle_repo, "rev-parse", "HEAD")
            for key in idle:
                instance.report_runless_asset_event(
                    AssetMaterialization(
                        ES_INDEX,
                        partition=key,
                        metadata={"commit_sha": idle_head, "files_indexed": 3},
                    )
                )
            port = 18765
            log = work / "daemon.log"
            with (work / "receiver.log").open("wb") as out:
                receiver = subprocess.Popen(
                    [SCRIPT, "receiver", "--host", "127.0.0.1", "--port", str(port)],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            url = f"http://127.0.0.1:{port}/hooks"
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            subprocess.run(
                [SCRIPT, "hooks", "install", "--url", url, "--system"], env=env, check=True
            )
            with running_daemon(env, log):
                keys = sorted(pushed)
                indexed = Materializations(instance)
                started = time.time()
                _until_indexed(
                    indexed, {k: _git(pushed[k], "rev-parse", "HEAD") for k in keys}, started, log
                )
                print(f"{len(keys)} new repositories indexed: {time.time() - started:.1f} s")

                # 1. idle: the sensor ticks, nothing happens (a poll may fall in the window:
                # its listing is counted apart).
                _requests(gitlab, clear=True)
                idle_since = time.time()
                while len(_sensor_ticks(instance, idle_since)) < 6:
                    time.sleep(1)
                idle_requests = _requests(gitlab)
                ticks = [t.timestamp for t in _sensor_ticks(instance, idle_since)]
                gaps = [b - a for a, b in pairwise(ticks)]

                # 2. single pushes
                single = []
                stages = []
                for i, key in enumerate(keys[: args.single]):
                    before, after = _push(pushed[key], f"SINGLE_{i}_{key}")
                    at = time.time()
                    ask(("push", key, before, after))
                    done = _until_indexed(indexed, {key: after}, at, log)
                    single.append(done[key] - at)
                    stages.append(_stages(instance, key, after, at, done[key]))

                # 3. a burst
                commits: dict[str, str] = {}
                made = []
                for i, key in enumerate(keys[: args.burst]):
                    made.append((key, *_push(pushed[key], f"BURST_{i}_{key}")))
                burst_at = time.time()
                for key, before, after in made:
                    ask(("push", key, before, after))
                    commits[key] = after
                delivered = time.time() - burst_at
                done = _until_indexed(indexed, commits, burst_at, log)
                burst_last = max(done.values()) - burst_at

                # 4. a new project
                fresh = work / "repos" / "fresh"
                make_repo(fresh, 3, 5, seed=9)
                created_at = time.time()
                ask(("create", "fleet/fresh", str(fresh)))
                before, after = _push(fresh, "FRESH_PROJECT_LINE")
                ask(("push", "fleet/fresh", "0" * 40, after))
                done = _until_indexed(indexed, {"fleet/fresh": after}, created_at, log)
                fresh_took = done["fleet/fresh"] - created_at

            search = subprocess.run(
                [SCRIPT, "search", "-F", "FRESH_PROJECT_LINE", "--json"],
                env=env,
                capture_output=True,
                text=True,
            )
            found_fresh = "fleet/fresh" in search.stdout
            burst_found = _found(env, "BURST_", len(commits))
            single_found = _found(env, "SINGLE_", args.single)
            instance.dispose()

        quantiles = statistics.quantiles(single, n=20) if len(single) > 1 else single * 19
        rows = [
            ("GitLab requests over 6 idle ticks (a poll counted in)", sum(idle_requests.values())),
            ("  of them listings (the minute poll)", idle_requests.get("projects_list", 0)),
            ("  seconds between idle ticks, shortest", min(gaps)),
            ("  seconds between idle ticks, longest", max(gaps)),
            (f"single push to indexed, p50 (s), of {len(single)}", statistics.median(single)),
            ("single push to indexed, p95 (s)", quantiles[18]),
            (f"burst of {len(commits)}: hooks delivered in (s)", delivered),
            ("burst: last repository indexed (s)", burst_last),
            ("new project: create + first push to indexed (s)", fresh_took),
            ("new project's line found by search (1 = yes)", int(found_fresh)),
            (f"burst lines found by search, of {len(commits)}", burst_found),
            ("single-push lines found (each replaced by the burst's: 0)", single_found),
        ]
        print(f"\nfleet: {args.partitions} partitions; hooks through the receiver")
        print(f"{'figure':<56} {'value':>8}")
        for name, value in rows:
            shown = f"{value:>8}" if isinstance(value, int) else f"{value:>8.1f}"
            print(f"{name:<56} {shown}")
        print("\nwhere a single push's time went (s)")
        print(f"{'stage':<56} {'p50':>8} {'max':>8}")
        for name, column in zip(STAGES, zip(*stages, strict=True), strict=True):
            print(f"{name:<56} {statistics.median(column):>8.1f} {max(column):>8.1f}")
    finally:
        if receiver is not None:
            receiver.send_signal(signal.SIGTERM)
            receiver.wait(30)
        shutil.rmtree(work, ignore_errors=True)
        os.environ.pop("GITLAB_HOOK_SECRET", None)


if __name__ == "__main__":
    main()
