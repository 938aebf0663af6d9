"""requirements.lock is in line with pyproject.toml: every dependency (the dev extra's too)
is pinned there at a version its range allows, torch is left to scripts/setup.sh, and no
CUDA package came in with it. When this fails, `make lock` rewrites the lock."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def locked() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if match := re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line.strip()):
            pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_every_declared_dependency_is_pinned_within_its_range():
    pins = locked()
    wrong = []
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        if name == "torch":
            continue
        if name not in pins:
            wrong.append(f"{requirement}: not in the lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            wrong.append(f"{requirement}: locked at {pins[name]}")
    assert not wrong, "requirements.lock is behind pyproject.toml (run `make lock`): " + "; ".join(wrong)


def test_the_lock_leaves_torch_to_setup_and_holds_no_cuda_package():
    pins = locked()
    assert "torch" not in pins  # scripts/setup.sh installs the CPU wheel first
    assert {"sympy", "networkx", "jinja2", "filelock"} <= pins.keys()  # the CPU wheel's own dependencies
    cuda = sorted(name for name in pins if name.startswith(("nvidia-", "cuda-", "triton")))
    assert not cuda, f"requirements.lock pulls CUDA packages: {cuda}"
