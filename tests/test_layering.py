"""Imports point one way (DESIGN.md): jobs -> serve_apps -> platform -> model, and the
model imports nothing of ours outside itself and nothing of Ray.

Import statements count, and so do module names in strings handed to the import and
resource machinery (`importlib.import_module("p2med.jobs.synth")`,
`resources.files("p2med.configs")`): a part found by its name is reached all the same.
The packaged configs (`p2med.configs`) are the CLI's to hand down, never looked up below it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "p2med"
ROOT = "p2med"
FORBIDDEN = {
    "model": ("p2med.platform", "p2med.jobs", "p2med.serve_apps", "p2med.configs", "p2med.cli", "ray"),
    "platform": ("p2med.jobs", "p2med.serve_apps", "p2med.configs", "p2med.cli"),
    "serve_apps": ("p2med.jobs", "p2med.configs", "p2med.cli"),
}
# Calls that take a module or package by name: importlib's, importlib.resources', pkgutil's
# and pkg_resources'. Every string handed to them is read as a module name.
BY_NAME = {
    "import_module", "__import__", "find_spec", "resolve_name", "get_data",
    "files", "path", "contents", "is_resource", "open_text", "open_binary", "read_text", "read_binary",
    "resource_filename", "resource_stream", "resource_string", "resource_exists",
}  # fmt: skip
# A string that is a module path of ours, wherever it stands (`CONFIGS = "p2med.jobs"` handed to
# `resources.files(CONFIGS)` later); an import path may end in `:attribute`.
DOTTED = re.compile(rf"{ROOT}(\.[A-Za-z_]\w*)+(:[\w.]+)?")


def named_modules(path: Path) -> set[str]:
    """The modules a file names: its imports, the strings it hands to a `BY_NAME` call, and
    every string that is a module path of ours (`"p2med.jobs.synth:run"` names p2med.jobs.synth)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module != ROOT:  # `from p2med import configs` names p2med.configs, no more
                names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and _callee(node.func) in BY_NAME:
            for arg in [*node.args, *(keyword.value for keyword in node.keywords)]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value.partition(":")[0])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and DOTTED.fullmatch(node.value):
            names.add(node.value.partition(":")[0])
    return names


def _callee(func: ast.expr) -> str:
    """`importlib.resources.files` -> "files"; a computed callee -> ""."""
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def offence(part: str, name: str) -> bool:
    """Whether `part` may not name module `name`. The root package named by a string counts:
    `resources.files("p2med")` reaches every part through a path under it."""
    return name == ROOT or any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[part])


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_imports_point_one_way(part):
    offences = []
    for path in sorted((PACKAGE / part).rglob("*.py")):
        for name in named_modules(path):
            if offence(part, name):
                offences.append(f"{path.relative_to(PACKAGE.parent)} names {name}")
    assert not offences


@pytest.mark.parametrize(
    ("part", "code", "named"),
    [
        ("platform", "import p2med.jobs.synth", "p2med.jobs.synth"),
        ("platform", "from p2med import configs", "p2med.configs"),
        ("platform", 'importlib.import_module("p2med.jobs.synth")', "p2med.jobs.synth"),
        ("platform", 'import_module(name="p2med.serve_apps.app")', "p2med.serve_apps.app"),
        ("platform", 'resources.files("p2med.configs").joinpath("synth")', "p2med.configs"),
        ("platform", 'importlib.resources.files("p2med").joinpath("jobs", "configs")', "p2med"),
        ("platform", 'resources.read_text("p2med.jobs", "x.yaml")', "p2med.jobs"),
        ("platform", 'pkgutil.resolve_name("p2med.cli:main")', "p2med.cli"),
        ("platform", 'Job("synth", "p2med.jobs.synth")', "p2med.jobs.synth"),
        ("platform", 'CONFIGS = "p2med.jobs"  # resources.files(CONFIGS) further down', "p2med.jobs"),
        ("model", 'importlib.import_module("ray")', "ray"),
    ],
)
def test_a_reference_by_name_is_an_offence(tmp_path, part, code, named):
    """The reader sees each way of reaching up, so a module of `part` that did would fail."""
    path = tmp_path / "module.py"
    path.write_text(f"{code}\n")
    assert named in named_modules(path)
    assert offence(part, named)
