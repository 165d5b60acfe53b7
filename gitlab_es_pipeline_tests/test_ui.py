"""The Dagster UI in a real browser: Debian's headless Chromium driven by Playwright.

The webserver runs on the project's definitions and a temporary DAGSTER_HOME in which the
pipeline indexed two repositories. Screenshots go to the test's folder, and to
$UI_SCREENSHOTS_DIR when set (the README's come from there).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance

from gitlab_es_pipeline_tests.pipeline import Pipeline
from gitlab_es_pipeline_tests.processes import serving_webserver
from gitlab_es_pipeline_tests.repos import commit_files, init_repo, run_git
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn
from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn

CHROMIUM = "/usr/bin/chromium"
REPOSITORIES = ("team/app", "team/lib")


@pytest.fixture
def indexed(
    gitlab_server: GitLabStandIn,
    es_server: ElasticsearchStandIn,
    project_instance: DagsterInstance,
    tmp_path: Path,
) -> dict[str, str]:
    """Two repositories indexed into the instance the webserver will show; their commits."""
    pipeline = Pipeline(gitlab_server, es_server, project_instance, tmp_path / "parquet")
    commits = {}
    for key in REPOSITORIES:
        repo = init_repo(tmp_path / key.replace("/", "_"))
        commit_files(repo, {"src/main.py": "def main():\n    return 42\n", "README.md": "# x\n"})
        gitlab_server.add_project(key, str(repo))
        commits[key] = run_git(repo, "rev-parse", "HEAD").strip()
    pipeline.discover()
    pipeline.index_all()
    pipeline.index("team/lib")  # again: a run with nothing to do
    return commits


@pytest.fixture
def webserver(indexed: dict[str, str], tmp_path: Path) -> Iterator[str]:
    with _serving(tmp_path) as url:
        yield url


@contextlib.contextmanager
def _serving(tmp_path: Path) -> Iterator[str]:
    """dagster-webserver on the project's definitions and the project instance's home."""
    env = {
        **os.environ,  # DAGSTER_HOME of the project instance
        "GITLAB_URL": "http://127.0.0.1:9",
        "GITLAB_TOKEN": "glpat-not-used",
        "ELASTICSEARCH_URL": "http://127.0.0.1:9",
        "DAGSTER_DISABLE_TELEMETRY": "yes",
    }
    with serving_webserver(env, tmp_path / "webserver.log") as url:
        yield url


@pytest.mark.parametrize("project_instance", ["sqlite"], indirect=True)
def test_the_ui_shows_the_assets_partitions_and_metadata(
    webserver: str, indexed: dict[str, str], tmp_path: Path
) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.fail("Chromium is not installed: apt-get install -y chromium")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    shots = [tmp_path]
    if os.environ.get("UI_SCREENSHOTS_DIR"):
        shots.append(Path(os.environ["UI_SCREENSHOTS_DIR"]))

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})

        def visit(path: str, name: str, wait_for: str) -> None:
            page.goto(webserver + path)
            expect(page.get_by_text(wait_for).first).to_be_visible(timeout=30000)
            skip = page.get_by_role("button", name="Skip")  # Dagster's first-visit dialog
            with contextlib.suppress(PlaywrightTimeout):
                skip.click(timeout=3000 if name == "ui-lineage" else 500)
            page.wait_for_timeout(500)  # let the graph settle before the picture
            for folder in shots:
                folder.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(folder / f"{name}.png"))

        # The asset graph: es_index with everything upstream of it, all four assets.
        visit(
            "/assets/es_index?view=lineage&lineageScope=upstream&lineageDepth=5",
            "ui-lineage",
            "line_documents",
        )
        for asset in ("repositories", "file_manifest", "line_documents", "es_index"):
            expect(page.get_by_text(asset, exact=True).first).to_be_visible()

        # The repositories are the partitions.
        visit("/assets/file_manifest?view=partitions", "ui-partitions", "Materialized (2)")
        for key in REPOSITORIES:
            expect(page.get_by_text(key, exact=True).first).to_be_visible()

        # A materialization's metadata: the commit indexed and the line count.
        visit("/assets/es_index?view=events&partition=team%2Fapp", "ui-metadata", "commit_sha")
        body = page.inner_text("body")
        assert indexed["team/app"] in body
        # main.py has 2 lines, README.md 1: the manifest's line count and the documents written.
        assert re.search(r"\blines\s+3\b", body), body
        assert re.search(r"\bdocuments_written\s+3\b", body), body
        assert f"indexed {indexed['team/app'][:12]} (from nothing)" in body, body

        # A run that had nothing to do says so, not only with zeros.
        visit("/assets/es_index?view=events&partition=team%2Flib", "ui-up-to-date", "outcome")
        body = page.inner_text("body")
        assert f"up to date at {indexed['team/lib'][:12]}" in body, body
        browser.close()

    for name in ("ui-lineage", "ui-partitions", "ui-metadata", "ui-up-to-date"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000


@pytest.mark.parametrize("project_instance", ["sqlite"], indirect=True)
def test_a_new_user_first_sees_the_whole_pipeline_and_no_check_passed(
    project_instance: object, tmp_path: Path
) -> None:
    """Nothing discovered or run yet: the lineage page (the UI's *Lineage*) shows the four
    assets, not groups folded away, and the checks say they have not been evaluated."""
    if not os.path.exists(CHROMIUM):
        pytest.fail("Chromium is not installed: apt-get install -y chromium")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    with _serving(tmp_path) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url + "/asset-groups")
        expect(page.get_by_text("Global asset lineage").first).to_be_visible(timeout=30000)
        with contextlib.suppress(PlaywrightTimeout):
            page.get_by_role("button", name="Skip").click(timeout=3000)
        for asset in ("repositories", "file_manifest", "line_documents", "es_index"):
            expect(page.get_by_text(asset, exact=True).first).to_be_visible(timeout=30000)
        page.screenshot(path=str(tmp_path / "ui-first-lineage.png"))
        for asset, check in (
            ("file_manifest", "manifest_accounts_for_tree"),
            ("es_index", "document_count_matches_manifest"),
        ):
            page.goto(f"{url}/assets/{asset}?view=checks")
            expect(page.get_by_text("Not evaluated").first).to_be_visible(timeout=30000)
            body = page.inner_text("body")
            assert check in body.replace("\u2026", "") or check[:12] in body, body
            assert "Succeeded" not in body and "Passed" not in body, body
        browser.close()
