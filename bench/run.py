"""The benchmark: the pipeline against the obvious baseline and the raw floor, on the same data.

    .venv/bin/python bench/run.py            # 20,000 files / 2,000,000 lines (a few minutes)
    .venv/bin/python bench/run.py --scale 0.1

Generates a large repository and a fleet of small ones, serves them with the GitLab stand-in in
its own process, indexes into the Elasticsearch stand-in in accept-and-count mode in its own
process, and runs each measured thing in a fresh process of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from generate import change_one_file, make_real_source_repo, make_repo  # noqa: E402
from servers import API_KEY, elasticsearch_server, gitlab_server  # noqa: E402


def _get(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


def measure(
    mode: str, gitlab: str, es: str, projects: list[str], home: str | None = None
) -> dict[str, Any]:
    _get(f"{gitlab}/__standin/requests", "DELETE")
    _get(f"{es}/__standin/stats", "DELETE", {"Authorization": f"ApiKey {API_KEY}"})
    command = [sys.executable, str(HERE / "measure.py"), mode, "--gitlab", gitlab, "--es", es]
    for project in projects:
        command += ["--project", project]
    if home:
        command += ["--home", home]
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    figures["gitlab_requests"] = _get(f"{gitlab}/__standin/requests")
    figures["es"] = _get(f"{es}/__standin/stats", headers={"Authorization": f"ApiKey {API_KEY}"})
    return figures


def _home(root: Path) -> str:
    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    return str(home)


def _per_million(figures: dict[str, Any]) -> float:
    return figures["cpu_seconds"] / figures["lines"] * 1e6


def _row(name: str, f: dict[str, Any]) -> str:
    lines, wall = f["lines"], f["wall_seconds"]
    cpu_per_m = f"{f['cpu_seconds'] / lines * 1e6:.1f}" if lines else "0.0"
    rss = f["peak_rss_mb"]
    if "step_peak_rss_mb" in f:  # a job: the steps' processes, not the launching one
        cpu_per_m, rss = "-", max(f["step_peak_rss_mb"].values())
    return (
        f"{name:<28} {lines:>10,} {f['files']:>8,} {lines / wall:>12,.0f} "
        f"{f['files'] / wall:>9,.0f} "
        f"{cpu_per_m:>10} {rss:>8.0f}  {sum(f['gitlab_requests'].values()):>7,} "
        f"{f['es'].get('bulk_requests', 0):>6,} {f['es'].get('bulk_bytes', 0) / 1e6:>8.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="1.0 = 20,000 files, 2,000,000 lines"
    )
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    files = max(10, int(20_000 * args.scale))
    work = Path(tempfile.mkdtemp(prefix="gitlab-es-bench-"))
    try:
        print(
            f"generating: {files:,} files x 100 lines, {files // 10:,} files x 100 lines, "
            f"a fleet of 50 x 20 files ...",
            flush=True,
        )
        big = work / "repos" / "big"
        make_repo(big, files, 100, seed=1)
        medium = work / "repos" / "medium"
        make_repo(medium, files // 10, 100, seed=2)
        real = work / "repos" / "real"
        real_files, real_lines, hashing = make_real_source_repo(real, int(1_200_000 * args.scale))
        print(f"real source: {real_files:,} files, {real_lines:,} lines", flush=True)
        fleet = {}
        for i in range(50):
            make_repo(work / "repos" / f"small{i}", 20, 50, seed=100 + i)
            fleet[f"fleet/small{i:02d}"] = str(work / "repos" / f"small{i}")
        projects = {
            "bench/big": str(big),
            "bench/medium": str(medium),
            "bench/real": str(real),
            **fleet,
        }
        with gitlab_server(projects) as gl, elasticsearch_server() as es:
            results: dict[str, dict[str, Any]] = {}
            results["pipeline full (big)"] = measure(
                "pipeline", gl, es, ["bench/big"], _home(work / "p")
            )
            change_one_file(big)
            results["pipeline incremental (big)"] = measure(
                "pipeline", gl, es, ["bench/big"], _home(work / "p")
            )
            results["pipeline full (medium)"] = measure(
                "pipeline", gl, es, ["bench/medium"], _home(work / "m")
            )
            results["pipeline full (real source)"] = measure(
                "pipeline", gl, es, ["bench/real"], _home(work / "r")
            )
            # As production runs it (each step in a process of its own): per-step memory.
            results["job full (big)"] = measure("job", gl, es, ["bench/big"], _home(work / "jb"))
            results["job full (medium)"] = measure(
                "job", gl, es, ["bench/medium"], _home(work / "jm")
            )
            results["pipeline full (fleet of 50)"] = measure(
                "pipeline", gl, es, sorted(fleet), _home(work / "f")
            )
            results["raw floor (big)"] = measure("floor", gl, es, ["bench/big"])
            results["raw floor (real source)"] = measure("floor", gl, es, ["bench/real"])
            if not args.skip_baseline:
                results["baseline (big)"] = measure("baseline", gl, es, ["bench/big"])
        print()
        print(
            f"{'run':<28} {'lines':>10} {'files':>8} {'lines/s':>12} {'files/s':>9} "
            f"{'cpu s/Mln':>10} {'rss MB':>8}  {'gl req':>7} {'bulks':>6} {'bulk MB':>8}"
        )
        for name, figures in results.items():
            print(_row(name, figures))
        print()
        for name, figures in results.items():
            print(f"{name}: GitLab requests {figures['gitlab_requests']}, ES {figures['es']}")
        full = results["pipeline full (big)"]
        rate = full["lines"] / full["wall_seconds"]
        floor = results["raw floor (big)"]
        print()
        if "baseline (big)" in results:
            base = results["baseline (big)"]
            ratio = rate / (base["lines"] / base["wall_seconds"])
            print(f"pipeline / baseline throughput: {ratio:.1f}x (target >= 10x)")
        slower = full["wall_seconds"] / floor["wall_seconds"]
        print(f"pipeline / raw floor time:      {slower:.1f}x (target <= 4x)")
        medium_rss = results["pipeline full (medium)"]["peak_rss_mb"]
        print(
            f"peak RSS big - medium, in one process: {full['peak_rss_mb'] - medium_rss:+.0f} MB "
            f"(big {full['peak_rss_mb']:.0f} MB)"
        )
        big_steps = results["job full (big)"]["step_peak_rss_mb"]
        medium_steps = results["job full (medium)"]["step_peak_rss_mb"]
        for step in ("read", "write"):
            print(
                f"job step '{step}' peak RSS:  big {big_steps[step]:.0f} MB, medium "
                f"{medium_steps[step]:.0f} MB, {big_steps[step] - medium_steps[step]:+.0f} MB "
                "(targets < 300 MB, within 50 MB)"
            )
        real_run = results["pipeline full (real source)"]
        per_million = {
            name: _per_million(results[name])
            for name in ("pipeline full (big)", "pipeline full (real source)")
        }
        print(
            "CPU s per million lines, beyond start-up: synthetic "
            f"{per_million['pipeline full (big)']:.2f}, real source "
            f"{per_million['pipeline full (real source)']:.2f} (target <= 5 on real code)"
        )
        # A run's fixed cost (Dagster's run and step set-up, the event writes, a client each
        # side), as the fleet of small repositories measures it: one materialize each.
        fleet_run = results["pipeline full (fleet of 50)"]
        fixed = fleet_run["cpu_seconds"] / len(fleet)
        print(
            f"the same beyond a run's fixed cost ({fixed:.2f} CPU s, the fleet's per "
            f"repository): real source "
            f"{(real_run['cpu_seconds'] - fixed) / real_run['lines'] * 1e6:.2f}"
        )
        # The floor is code this project does not touch: what it costs says how fast the
        # machine is today, so figures of different days compare by their ratio to it.
        real_floor = results["raw floor (real source)"]
        print(
            "real source against its raw floor (CPU per line): "
            f"{per_million['pipeline full (real source)'] / _per_million(real_floor):.1f}x, "
            f"floor {_per_million(real_floor):.2f} CPU s per million lines"
        )
        print(
            f"blob-id check (SHA-1 of every file's bytes): {hashing / real_lines * 1e6:.3f} CPU s "
            f"per million lines, {hashing / real_run['cpu_seconds'] * 100:.1f} % of the "
            "pipeline's CPU on real source"
        )
        inc = results["pipeline incremental (big)"]
        print(
            f"incremental requests (1 file):  {sum(inc['gitlab_requests'].values())} (target <= 10)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "yes")
    main()
