"""The Dagster UI at fleet size: how long its pages take with ten thousand partitions.

    .venv/bin/python bench/ui_fleet.py                    # 10,000 partitions
    .venv/bin/python bench/ui_fleet.py --partitions 2000

A DAGSTER_HOME with the project's dagster.yaml (SQLite), the `repositories` partitions, and a
materialization of `file_manifest` and `es_index` for each (recorded as the pipeline records
them, without indexing anything); then `dagster-webserver` on the project's definitions and
Debian's headless Chromium (Playwright): each page is opened in a fresh tab and timed until
what a person looks for is on screen. Prints seconds per page.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from gitlab_es_pipeline_tests.processes import free_port, stop, wait_until_serving  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def seed(home: Path, partitions: int) -> float:
    from dagster import AssetKey, AssetMaterialization, DagsterInstance

    from gitlab_es_pipeline.partitions import REPOSITORIES_PARTITION

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
    port = free_port()
    log = work / "webserver.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "dagster-webserver"),
                *("-m", "gitlab_es_pipeline.definitions", "-h", "127.0.0.1", "-p", str(port)),
            ],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, server, log)
        from playwright.sync_api import expect, sync_playwright

        total = f"({args.partitions}|{args.partitions:,})"  # with or without a separator
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
    finally:
        stop(server)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
