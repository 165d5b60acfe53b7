"""docs/layout.md draws the package as it is: every module and folder of it is named there,
and nothing it names as a module is missing."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gitlab_es_pipeline"


def _drawn() -> str:
    text = (ROOT / "docs" / "layout.md").read_text()
    (tree,) = re.findall(r"```\n(gitlab_es_pipeline/\n.*?)```", text, re.S)
    return tree


def _modules() -> list[Path]:
    return sorted(
        p.relative_to(PACKAGE)
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" and "__pycache__" not in p.parts
    )


def test_every_module_and_folder_is_drawn() -> None:
    drawn = _drawn()
    words = set(re.findall(r"[A-Za-z_]+", drawn))
    missing = [str(m) for m in _modules() if m.stem not in words]
    folders = {m.parent for m in _modules()} - {Path(".")}
    missing += [f"{f}/" for f in folders if f"{f.name}/" not in drawn]
    assert missing == []


def test_every_file_drawn_exists() -> None:
    drawn = _drawn()
    named = set(re.findall(r"\b([a-z_]+\.py)\b", drawn))
    present = {m.name for m in _modules()}
    present |= {
        p.name
        for folder in ("bench", "gitlab_es_pipeline_tests")
        for p in (ROOT / folder).glob("*.py")
    }
    assert named - present == set()
    assert {"definitions.py", "sensors.py", "soak.py"} <= named  # the scan sees names
