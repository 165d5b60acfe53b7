"""The README is the front door and docs/ holds the rest: every page is reachable from the
README, and no link between them leads nowhere (a section renamed or moved breaks one)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _headings(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings (fenced code left out: `# comment` lines)."""
    anchors: set[str] = set()
    fenced = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def _local_links(page: Path) -> list[str]:
    return [link for link in LINK.findall(page.read_text()) if not link.startswith("http")]


def test_every_local_link_reaches_a_file_and_a_heading() -> None:
    broken = []
    for page in PAGES:
        for link in _local_links(page):
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                broken.append(f"{page.name}: {link} (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in _headings(target):
                broken.append(f"{page.name}: {link} (no such heading)")
    assert not broken, broken


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {
        (ROOT / link.partition("#")[0]).resolve()
        for link in _local_links(ROOT / "README.md")
        if link.partition("#")[0]
    }
    unlinked = [page.name for page in PAGES[1:] if page.resolve() not in linked]
    assert not unlinked, unlinked


def test_the_readme_starts_with_the_two_commands() -> None:
    # The first two fenced blocks are the commands a new user copies: run the pipeline, run
    # the tests. Everything else comes after them.
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert "gitlab-es-pipeline dev" in blocks[0]
    assert "apt-get update" in blocks[1] and blocks[1].strip().endswith("pytest")
