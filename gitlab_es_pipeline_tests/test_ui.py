"""The Dagster UI in a real browser (Debian's headless Chromium driven by Playwright), and the
README's account of it.

One dagster-webserver on the project's definitions and a temporary DAGSTER_HOME is looked at
twice: before anything was discovered or run (what a new user first sees), then after the
pipeline indexed two repositories into that home. README.md's two UI sections name Dagster's
menus, tabs, buttons and labels, and are held to the live pages: each path they give
(*Jobs* → `index_repository` → *Partitions*: a menu of the left navigation, then links, tabs
and buttons) is followed by clicking, as are those of docs/; every other menu, tab, button or
label they name in italics or bold is on a page the test opened; and what they say a page
shows (a check's line on a card, the kinds, where descriptions and owners are) is matched
against the page, with the README's own words. A Dagster upgrade that renames something, or
a README sentence naming what the UI does not have, fails the test.

Screenshots go to the test's folder, and to $UI_SCREENSHOTS_DIR when set: the README's are
retaken with `UI_SCREENSHOTS_DIR=docs/screenshots .venv/bin/pytest
gitlab_es_pipeline_tests/test_ui.py`, each once its page has finished loading.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from dagster import AssetKey, DagsterInstance

from gitlab_es_pipeline.definitions import defs
from gitlab_es_pipeline_tests.pipeline import Pipeline
from gitlab_es_pipeline_tests.processes import serving_webserver
from gitlab_es_pipeline_tests.repos import commit_files, init_repo, run_git
from gitlab_es_pipeline_tests.standins.elasticsearch import ElasticsearchStandIn
from gitlab_es_pipeline_tests.standins.gitlab import GitLabStandIn

if TYPE_CHECKING:
    from playwright.sync_api import Page, ViewportSize

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
REPOSITORIES = ("team/app", "team/lib")
ASSETS = ("repositories", "file_manifest", "line_documents", "es_index")
CHECKED = ("file_manifest", "es_index")  # the assets with a check
UI_SECTIONS = ("Materialize and backfill from the UI", "What the UI shows")
# The README's pictures, all of them taken here.
SCREENSHOTS = ("ui-partitions", "ui-metadata", "ui-up-to-date", "ui-lineage", "ui-asset")
VIEWPORT: ViewportSize = {"width": 1400, "height": 900}
# Tall enough for a materialization's metadata down to its documents.
TALL: ViewportSize = {"width": 1400, "height": 1560}
LINEAGE_TAB = "/assets/es_index?view=lineage&lineageScope=upstream&lineageDepth=5"

# How the docs write the UI: *a menu, tab, option or label*, **a button**, `a name` (an
# asset, a job, a sensor: a link). A path starts at a menu of the left navigation.
_TOKEN = r"\*\*[^*]+\*\*|\*[^*\s][^*]*\*|`[^`]+`"
_PATH = re.compile(rf"\*[^*\s][^*]*\*(?: → (?:{_TOKEN}))+")
_WORD = re.compile(r"\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*")

# The lineage graph's cards, each as its lines of text (name first, then its rows and kinds).
_CARDS = """() => [...document.querySelectorAll("svg foreignObject")].map(
    f => (f.firstElementChild ? f.firstElementChild.innerText : "")
        .split("\\n").map(line => line.trim()).filter(line => line))"""
# Loaded: every card has its status line, none says Loading…, and the cards of assets with
# checks have their checks' line (a dash until it has loaded).
_CARDS_LOADED = f"""([n, checked]) => {{
    const cards = ({_CARDS})();
    return cards.length === n && cards.every(lines =>
        !lines.some(line => line.startsWith("Loading")) &&
        lines.some(line => /^(\\d+ partitions?|Materialized|Never materialized)$/.test(line)) &&
        !(checked.includes(lines[0]) && lines[lines.indexOf("Asset checks") + 1] === "\\u2013"));
}}"""
# Laid out: the cards stay where they are from one frame to the next two.
_CARDS_STILL = """async () => {
    const where = () => JSON.stringify([...document.querySelectorAll("svg foreignObject")]
        .map(f => { const r = f.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; }));
    const frame = () => new Promise(done => requestAnimationFrame(() => done()));
    for (let before = where(); ; ) {
        await frame();
        await frame();
        const now = where();
        if (now === before) return true;
        before = now;
    }
}"""


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


UI_PAGE = ROOT / "docs" / "ui.md"  # the README's UI sections, kept out of the front door


def readme_ui() -> str:
    """The README's UI sections (docs/ui.md), in one line."""
    text = UI_PAGE.read_text() + "\n#"
    sections = []
    for title in UI_SECTIONS:
        found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^#)", text, re.S | re.M)
        assert found, f"docs/ui.md has no section {title!r}"
        sections.append(found.group(1))
    return _flat("\n".join(sections))


def ui_paths(text: str) -> list[list[str]]:
    """The paths through the UI a text gives: *Catalog* → `es_index` → *Partitions*."""
    return [re.findall(_TOKEN, found.group(0)) for found in _PATH.finditer(_flat(text))]


def ui_words(text: str) -> set[str]:
    """The UI's words a text names in italics or bold, outside its paths and code."""
    rest = re.sub(r"`[^`]*`", "", _PATH.sub("", _flat(text)))
    return {bold or italic for bold, italic in _WORD.findall(rest)}


def said(word: str) -> str:
    """A UI word the README's UI sections name (*word*, **word** or `word`); the word."""
    text = readme_ui()
    assert any(f"{mark}{word}{mark}" in text for mark in ("*", "**", "`")), (
        f"README's UI sections do not say {word!r}"
    )
    return word


def after(lines: list[str], label: str) -> str:
    """The line after a label: its value on a card or on an asset's page."""
    assert label in lines, (label, lines)
    return lines[lines.index(label) + 1]


def test_the_readme_shows_the_pictures_this_test_takes() -> None:
    readme = UI_PAGE.read_text()
    shown = set(re.findall(r"\]\(screenshots/([\w-]+)\.png\)", readme))
    assert shown == set(SCREENSHOTS), shown
    kept = {path.stem for path in (ROOT / "docs" / "screenshots").iterdir()}
    assert kept == set(SCREENSHOTS), kept  # no picture the test no longer takes


def test_the_ui_words_are_found_in_the_docs() -> None:
    """The parsing the browser test relies on, on a sentence of each kind."""
    text = "open *Catalog* → `es_index` → **Materialize…**, or *All*; the *0 / 1 Passed* line"
    assert ui_paths(text) == [["*Catalog*", "`es_index`", "**Materialize…**"]]
    assert ui_words(text) == {"All", "0 / 1 Passed"}
    assert ui_paths("`file_manifest` → **Materialize selected (3)…**") == []  # no menu first


def _index(
    gitlab_server: GitLabStandIn,
    es_server: ElasticsearchStandIn,
    instance: DagsterInstance,
    tmp_path: Path,
) -> dict[str, str]:
    """Two repositories indexed into the instance the webserver shows; their commits. Each
    has 3 tree entries: 2 text files (3 lines) and a binary file, skipped."""
    pipeline = Pipeline(gitlab_server, es_server, instance, tmp_path / "parquet")
    commits = {}
    for key in REPOSITORIES:
        repo = init_repo(tmp_path / key.replace("/", "_"))
        files: dict[str, str | bytes] = {
            "src/main.py": "def main():\n    return 42\n",
            "README.md": "# x\n",
            "logo.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        }
        commit_files(repo, files)
        gitlab_server.add_project(key, str(repo))
        commits[key] = run_git(repo, "rev-parse", "HEAD").strip()
    pipeline.discover()
    pipeline.index_all()
    pipeline.index("team/lib")  # again: a run with nothing to do
    return commits


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


def _cards(page: Page, url: str) -> dict[str, list[str]]:
    """es_index's *Lineage* tab, upstream: the four cards once loaded and laid out."""
    page.goto(url + LINEAGE_TAB)
    page.wait_for_function(_CARDS_LOADED, arg=[len(ASSETS), list(CHECKED)], timeout=30000)
    page.evaluate(_CARDS_STILL)
    return {lines[0]: lines for lines in page.evaluate(_CARDS)}


def _follow(page: Page, url: str, path: list[str]) -> None:
    """Clicks through a path from the Overview page; a button at its end is only seen (it
    would launch something), anything else is clicked too."""
    from playwright.sync_api import expect

    page.goto(url + "/overview")
    for i, token in enumerate(path):
        label = token.strip("*`")
        if i == 0:
            candidates = page.locator("nav a")  # a menu of the left navigation
        elif token.startswith("**"):
            candidates = page.locator("button:visible")
        elif token.startswith("`"):
            candidates = page.locator("a:visible")
        else:
            candidates = page.locator('[role="tab"]:visible, button:visible')
        # Exactly the label; Dagster writes a truncated name twice (one copy measures it).
        exact = re.compile(rf"^\s*({re.escape(label)})\s*\1?\s*$")
        target = candidates.filter(has_text=exact).first
        where = f"README path {' → '.join(path)}: no {token} here"
        expect(target, where).to_be_visible(timeout=30000)
        if not (token.startswith("**") and i == len(path) - 1):
            target.click()


@pytest.mark.parametrize("project_instance", ["sqlite"], indirect=True)
def test_the_ui_is_what_the_readme_says(
    gitlab_server: GitLabStandIn,
    es_server: ElasticsearchStandIn,
    project_instance: DagsterInstance,
    tmp_path: Path,
) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.fail("Chromium is not installed: apt-get install -y chromium")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    shots = [tmp_path / "screenshots"]
    if os.environ.get("UI_SCREENSHOTS_DIR"):
        shots.append(Path(os.environ["UI_SCREENSHOTS_DIR"]))
    graph = defs.resolve_asset_graph()
    nodes = {asset: graph.get(AssetKey(asset)) for asset in ASSETS}
    seen: set[str] = set()  # every line of text the pages showed

    with _serving(tmp_path) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport=VIEWPORT)

        def look() -> str:
            text = page.inner_text("body")
            seen.update(line.strip() for line in text.splitlines())
            return text

        def shoot(name: str) -> None:
            for folder in shots:
                folder.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(folder / f"{name}.png"))

        # A new user: nothing discovered or run. The Lineage page shows the four assets
        # themselves, not groups folded away.
        page.goto(url + "/asset-groups")
        expect(page.get_by_text("Global asset lineage").first).to_be_visible(timeout=30000)
        with contextlib.suppress(PlaywrightTimeout):  # Dagster's first-visit dialog
            page.get_by_role("button", name="Skip").click(timeout=3000)
        for asset in ASSETS:
            box = page.locator("svg").get_by_text(asset, exact=True).first
            expect(box).to_be_visible(timeout=30000)
        page.screenshot(path=str(tmp_path / "ui-first-lineage.png"))
        look()

        # The cards: a check not evaluated yet counts as not passed, 0 of 0 partitions.
        cards = _cards(page, url)
        look()
        for asset in CHECKED:
            assert after(cards[asset], "Asset checks") == said("0 / 1 Passed"), cards[asset]
        for asset in ASSETS[1:]:
            assert said("0 partitions") in cards[asset], cards[asset]
        # The checks' own tab says so in words.
        for asset, check in (
            ("file_manifest", "manifest_accounts_for_tree"),
            ("es_index", "document_count_matches_manifest"),
        ):
            page.goto(f"{url}/assets/{asset}?view=checks")
            not_evaluated = page.get_by_text(said("Not evaluated"), exact=True).first
            expect(not_evaluated).to_be_visible(timeout=30000)
            body = look()
            assert check in body.replace("\u2026", "") or check[:12] in body, body
            assert "Succeeded" not in body and "Passed" not in body, body

        # Two repositories indexed, into the home the webserver shows.
        commits = _index(gitlab_server, es_server, project_instance, tmp_path)

        # The cards once indexed: checks passed, partitions, kinds; no description, no owner.
        cards = _cards(page, url)
        shoot("ui-lineage")
        look()
        for asset in CHECKED:
            assert after(cards[asset], "Asset checks") == said("1 / 1 Passed"), cards[asset]
        for asset in ASSETS[1:]:
            assert said("2 partitions") in cards[asset], cards[asset]
        assert said("Materialized") in cards["repositories"], cards["repositories"]
        for asset, node in nodes.items():
            card = " ".join(cards[asset])
            for kind in node.kinds:
                assert said(kind.capitalize()) in cards[asset], (kind, cards[asset])
            assert (node.description or "")[:40] not in card, card
            assert not any(owner.removeprefix("team:") in card for owner in node.owners), card

        # Where they are: each asset's Overview tab (Description; Owners and Kinds under
        # Definition); the first words of each description in the Catalog's list.
        for asset, node in nodes.items():
            page.goto(f"{url}/assets/{asset}")
            description = (node.description or "")[:60]
            expect(page.get_by_text(description).first).to_be_visible(timeout=30000)
            expect(page.get_by_text(said("Owners"), exact=True)).to_be_visible(timeout=30000)
            lines = [line.strip() for line in look().splitlines() if line.strip()]
            assert after(lines, said("Description")).startswith(description), lines
            owners = [owner.removeprefix("team:") for owner in node.owners]
            assert owners == [said("data-platform")], node.owners
            assert after(lines, "Owners") == owners[0], lines
            kinds = lines[lines.index(said("Kinds")) + 1 :][: len(node.kinds)]
            assert sorted(kinds) == sorted(k.capitalize() for k in node.kinds), kinds
            assert said("Definition") in lines and said("Overview") in lines
            if asset == "es_index":
                shoot("ui-asset")
        page.goto(url + "/assets")
        expect(page.get_by_text(said("Catalog"), exact=True).first).to_be_visible()
        for node in nodes.values():
            expect(page.get_by_text((node.description or "")[:40]).first).to_be_visible()
        look()

        # The Lineage page: a clicked asset's description in the side panel; a shift-click
        # selects the path between two assets, the three per-repository ones.
        page.goto(url + "/asset-groups")
        boxes = page.locator("svg")
        boxes.get_by_text("es_index", exact=True).first.click()
        description = (nodes["es_index"].description or "")[:60]
        expect(page.get_by_text(description).first).to_be_visible(timeout=30000)
        boxes.get_by_text("file_manifest", exact=True).first.click(modifiers=["Shift"])
        selected = page.locator("button").filter(has_text=said("Materialize selected (3)…"))
        expect(selected).to_be_visible(timeout=30000)
        look()

        # The repositories are es_index's partitions; a partition's latest materialization.
        page.goto(url + "/assets/es_index?view=partitions&partition=team%2Fapp")
        expect(page.get_by_text("Materialized (2)")).to_be_visible(timeout=30000)
        expect(page.get_by_text("Latest materialization").first).to_be_visible()
        expect(page.get_by_text("outcome", exact=True).first).to_be_visible()
        for key in REPOSITORIES:
            expect(page.get_by_text(key, exact=True).first).to_be_visible()
        shoot("ui-partitions")
        look()

        # A materialization's metadata: the commit, the tree entries and what became of them,
        # the lines and documents, the outcome in words; no name from before the renames.
        page.set_viewport_size(TALL)
        page.goto(url + "/assets/es_index?view=events&partition=team%2Fapp")
        expect(page.get_by_text("documents_written", exact=True)).to_be_visible(timeout=30000)
        shoot("ui-metadata")
        body = look()
        assert commits["team/app"] in body
        for key, value in (
            (said("tree_entries"), 3),
            (said("files_indexed"), 2),
            (said("tree_entries_skipped"), 1),
            (said("skipped_<reason>").replace("<reason>", "binary"), 1),
            (said("tree_entries_<change>").replace("<change>", "added"), 3),
            ("lines", 3),
            ("documents_written", 3),
        ):
            assert re.search(rf"^{key}\s+{value}$", body, re.M), (key, body)
        assert not re.search(r"^(files|files_unchanged)\s", body, re.M), body
        assert f"indexed {commits['team/app'][:12]} (from nothing)" in body, body
        assert said("outcome") in body

        # A run that had nothing to do says so, not only with zeros.
        page.goto(url + "/assets/es_index?view=events&partition=team%2Flib")
        expect(page.get_by_text("documents_written", exact=True)).to_be_visible(timeout=30000)
        shoot("ui-up-to-date")
        body = look()
        assert f"up to date at {commits['team/lib'][:12]}" in body, body
        assert re.search(r"^documents_written\s+0$", body, re.M), body
        page.set_viewport_size(VIEWPORT)

        # One repository: the job's dialog, a partition picked, one run.
        page.goto(url + "/locations/gitlab_es_pipeline.definitions/jobs/index_repository")
        page.locator("button").filter(has_text=re.compile(r"^Materialize all…$")).click()
        dialog = page.locator(".bp5-dialog")
        expect(dialog.get_by_text(said("Partition selection")).first).to_be_visible(timeout=30000)
        dialog.get_by_text("Select a partition or create one").click()
        page.get_by_text("team/app", exact=True).filter(visible=True).first.click()
        page.keyboard.press("Escape")  # the partition list, not the dialog
        launch = dialog.locator("button").filter(has_text=said("Launch 1 run"))
        expect(launch).to_be_visible(timeout=30000)
        look()

        # Every path the README and docs/ give, clicked through.
        pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        paths = [path for doc in pages for path in ui_paths(doc.read_text())]
        assert ui_paths(readme_ui()), "README's UI sections give no path to follow"
        for path in paths:
            _follow(page, url, path)
            look()
            if path[-1] == "**Launch backfill**":  # launched: no daemon runs it
                page.locator(".bp5-dialog button").filter(has_text=path[-1].strip("*")).click()
                expect(page.get_by_text("Created backfill")).to_be_visible(timeout=30000)

        # The backfill's page and its menu.
        _follow(page, url, ["*Runs*", "*Backfills*"])
        page.locator('a[href^="/runs/b/"]').first.click()
        menu = page.locator("button:visible").filter(has=page.locator('[aria-label="expand_more"]'))
        menu.click()
        expect(page.get_by_role("menu")).to_be_visible(timeout=30000)
        look()
        browser.close()

    missing = sorted(ui_words(readme_ui()) - seen)
    assert not missing, f"README's UI sections name what no page showed: {missing}"
    for name in SCREENSHOTS:
        assert (tmp_path / "screenshots" / f"{name}.png").stat().st_size > 10_000
