"""The Dagster UI at fleet size: how long its pages take with ten thousand partitions.

    .venv/bin/python bench/ui_fleet.py                    # 10,000 partitions
    .venv/bin/python bench/ui_fleet.py --partitions 2000

A DAGSTER_HOME with the project's dagster.yaml (SQLite), the `repositories` partitions, and a
materialization of `file_manifest` and `es_index` for each (recorded as the pipeline records
them, without indexing anything); then `dagster-webserver` on the project's definitions and
Debian's headless Chromium (Playwright): each page is opened in a fresh tab and timed until
what a person looks for is on screen. Prints seconds per page.

Then a backfill of every partition of the three per-repository assets, launched as the UI
launches one (the webserver's `launchPartitionBackfill` mutation), and `dagster-daemon` forming
its runs from the assets' BackfillPolicy; the instance lets no run start
(`max_concurrent_runs: 0`), so the runs stay queued and nothing is indexed. Prints how long the
launch took, how long the daemon took to form the runs, and how many runs of how many
partitions it formed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from fleet import running_daemon  # noqa: E402

if TYPE_CHECKING:
    from dagster import DagsterInstance

from gitlab_es_pipeline_tests.processes import (  # noqa: E402
    launch_backfill_of_all,
    serving_webserver,
)

CHROMIUM = "/usr/bin/chromium"


def seed(home: Path, partitions: int) -> float:
    from dagster import AssetKey, AssetMaterialization, DagsterInstance

    from gitlab_es_pipeline.defs.partitions import REPOSITORIES_PARTITION

    started = time.monotonic()
    instance = DagsterInstance.from_config(str(home))
    keys = [f"group{i // 100:03d}/project{i:05d}" for i in range(partitions)]
    instance.add_dynamic_partitions(REPOSITORIES_PARTITION, keys)
    for key in keys:
        for asset in ("file_manifest", "es_index"):
            instance.report_runless_asset_event(
                AssetMaterialization(
                    AssetKey(asset), partition=key, metadata={"commit_sha": "c" * 40}
                )
            )
    instance.dispose()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--partitions", type=int, default=10_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gitlab-es-bench-ui-"))
    home = work / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "GITLAB_URL": "http://127.0.0.1:9",
        "GITLAB_TOKEN": "glpat-not-used",
        "ELASTICSEARCH_URL": "http://127.0.0.1:9",
        "DAGSTER_DISABLE_TELEMETRY": "yes",
    }
    os.environ.update(env)
    print(f"recording {args.partitions:,} partitions' materializations ...", flush=True)
    seeded = seed(home, args.partitions)
    print(f"  {seeded:.0f} s", flush=True)
    try:
        with serving_webserver(env, work / "webserver.log") as url:
            show_pages(url, args.partitions, work)
            started = time.monotonic()
            backfill_id = launch_backfill_of_all(
                url, ("file_manifest", "line_documents", "es_index")
            )
            launched = time.monotonic() - started
        print(f"\nbackfill of all {args.partitions:,} partitions launched in {launched:.1f} s")
        form_runs(home, env, backfill_id, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def form_runs(home: Path, env: dict[str, str], backfill_id: str, work: Path) -> None:
    """dagster-daemon on an instance that starts no run: the backfill's runs, queued."""
    from dagster import DagsterInstance, RunsFilter

    from gitlab_es_pipeline.defs.partitions import RANGE_END_TAG, RANGE_START_TAG

    yaml = (home / "dagster.yaml").read_text()
    assert "max_concurrent_runs: 4" in yaml, "the project's dagster.yaml changed its run limit"
    (home / "dagster.yaml").write_text(
        yaml.replace("max_concurrent_runs: 4", "max_concurrent_runs: 0")
    )
    instance = DagsterInstance.from_config(str(home))
    backfill = instance.get_backfill(backfill_id)
    partitions = (
        backfill.asset_backfill_data.target_subset.num_partitions_and_non_partitioned_assets
    )
    log = work / "daemon.log"
    started = time.monotonic()
    try:
        with running_daemon(env, log) as daemon:
            while True:
                data = instance.get_backfill(backfill_id).asset_backfill_data
                if data.requested_subset.num_partitions_and_non_partitioned_assets >= partitions:
                    break
                if time.monotonic() - started > 1800 or daemon.poll() is not None:
                    raise RuntimeError(f"the backfill's runs were not formed; see {log}")
                time.sleep(1)
            formed = time.monotonic() - started
        runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))
        sizes = sorted(
            {
                len(_keys_between(instance, r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]))
                for r in runs
            }
        )
    finally:
        instance.dispose()
    print(
        f"the daemon formed {len(runs)} runs of {'/'.join(map(str, sizes))} partitions "
        f"(ranges: every run tagged {RANGE_START_TAG}) in {formed:.1f} s from its start"
    )


def _keys_between(instance: DagsterInstance, first: str, last: str) -> list[str]:
    from gitlab_es_pipeline.defs.partitions import REPOSITORIES_PARTITION

    keys = list(instance.get_dynamic_partitions(REPOSITORIES_PARTITION))
    return keys[keys.index(first) : keys.index(last) + 1]


def show_pages(url: str, partitions: int, work: Path) -> None:
    """Each page, twice, in a fresh tab: seconds until what a person looks for is there."""
    from playwright.sync_api import expect, sync_playwright

    total = f"({partitions}|{partitions:,})"  # with or without a separator
    pages = [
        (
            "lineage (es_index and upstream)",
            "/assets/es_index?view=lineage&lineageScope=upstream&lineageDepth=5",
            re.compile("line_documents"),
        ),
        (
            "partitions of file_manifest",
            "/assets/file_manifest?view=partitions",
            re.compile(rf"Materialized \({total}\)"),
        ),
        (
            "partitions of es_index",
            "/assets/es_index?view=partitions",
            re.compile(rf"Materialized \({total}\)"),
        ),
        (
            "one partition's events",
            "/assets/es_index?view=events&partition=group050%2Fproject05000",
            re.compile("commit_sha"),
        ),
    ]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
        )
        print(f"\n{'page':<34} {'first load s':>13} {'again s':>8}")
        for name, path, wait_for in pages:
            seconds = []
            for _ in range(2):
                tab = browser.new_page(viewport={"width": 1400, "height": 900})
                started = time.monotonic()
                tab.goto(url + path)
                expect(tab.get_by_text(wait_for).first).to_be_visible(timeout=120_000)
                seconds.append(time.monotonic() - started)
                tab.screenshot(path=str(work / f"{len(seconds)}-{name[:10]}.png"))
                tab.close()
            print(f"{name:<34} {seconds[0]:>13.1f} {seconds[1]:>8.1f}")
        browser.close()


if __name__ == "__main__":
    main()
