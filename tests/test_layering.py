"""Imports point one way (DESIGN.md): jobs -> serve_apps -> platform -> model, and the
model imports nothing of ours outside itself and nothing of Ray."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "p2med"
FORBIDDEN = {
    "model": ("p2med.platform", "p2med.jobs", "p2med.serve_apps", "p2med.cli", "ray"),
    "platform": ("p2med.jobs", "p2med.serve_apps", "p2med.cli"),
    "serve_apps": ("p2med.jobs", "p2med.cli"),
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_imports_point_one_way(part):
    offences = []
    for path in sorted((PACKAGE / part).rglob("*.py")):
        for name in imported_modules(path):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[part]):
                offences.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not offences
