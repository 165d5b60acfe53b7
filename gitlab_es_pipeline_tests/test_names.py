"""One name per thing, in the package: each asset key is written once (asset_keys.py), no
top-level name is defined in two modules, and none shadows a name Dagster exports (a reader
seeing `Failure` or `SkipReason` thinks of Dagster's)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import dagster

PACKAGE = Path(__file__).resolve().parent.parent / "gitlab_es_pipeline"


def _modules() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text()) for path in sorted(PACKAGE.rglob("*.py"))}


def _top_level_names(module: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in module.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names - {"__all__"}


def test_asset_keys_are_written_once() -> None:
    written = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path, module in _modules().items()
        if path.name != "asset_keys.py"
        for node in ast.walk(module)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "AssetKey"
    ]
    assert written == [], "AssetKey(...) outside asset_keys.py"


def test_no_top_level_name_is_defined_in_two_modules() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path, module in _modules().items():
        for name in _top_level_names(module):
            where[name].append(str(path.relative_to(PACKAGE)))
    twice = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert twice == {}


def test_no_name_shadows_one_of_dagster() -> None:
    exported = {name for name in dir(dagster) if not name.startswith("_")}
    shadowing = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path, module in _modules().items()
        for name in _top_level_names(module) & exported
    }
    assert shadowing == set()


def test_the_checks_above_see_what_they_look_for() -> None:
    """The control: the scan finds the keys and a name of each kind where they are."""
    modules = _modules()
    keys = modules[PACKAGE / "defs" / "asset_keys.py"]
    assert {"ES_INDEX", "FILE_MANIFEST", "REPOSITORIES"} <= _top_level_names(keys)
    assert "LastFailure" in _top_level_names(modules[PACKAGE / "cli" / "status.py"])
    assert "head_commit_sensor" in _top_level_names(modules[PACKAGE / "defs" / "sensors.py"])
    assert "sensor" in dir(dagster) and "Failure" in dir(dagster)
