"""Every YAML file in the tree loads; job configs, found by the names users type as the CLI
finds them, validate against their job's JobSettings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from p2med.cli import JOBS, job_config

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", ".git", "runs", "data", "node_modules", ".pytest_cache", ".ruff_cache"}
JOB_CONFIGS = REPO / "p2med/configs"  # packaged: the names `--config` takes (synth/small.yaml)


def yaml_files() -> list[Path]:
    found = []
    for path in REPO.rglob("*.y*ml"):
        if not SKIP_DIRS.intersection(path.relative_to(REPO).parts):
            found.append(path)
    return sorted(found)


def test_the_tree_has_job_configs():
    assert any(JOB_CONFIGS in p.parents for p in yaml_files())


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_file_loads(path):
    text = path.read_text()
    assert isinstance(yaml.safe_load(text), dict | None)
    if JOB_CONFIGS in path.parents:
        job = path.relative_to(JOB_CONFIGS).parts[0]
        assert job in JOBS, f"{path}: folder {job!r} names no job"
        name = path.relative_to(JOB_CONFIGS).as_posix()
        first = text.splitlines()[0]
        command = f"# p2med {job} --config {name} "
        assert f"{first} ".startswith(command), "a job config opens with the command that runs it"
        job_config(JOBS[job].load(), job, ["--config", name])
