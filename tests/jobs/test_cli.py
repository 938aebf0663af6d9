"""The `p2med` command as users run it: help, jobs, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import S3_KEY, S3_SECRET, free_port


def p2med(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    p2med_bin = Path(sys.executable).with_name("p2med")
    return subprocess.run([str(p2med_bin), *args], capture_output=True, text=True, timeout=300, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_jobs():
    result = p2med("--help")
    assert result.returncode == 0 and "synth" in result.stdout and "Generate a synthetic" in result.stdout


def test_job_help_lists_keys_types_and_defaults():
    out = p2med("synth", "--help").stdout
    for expected in (
        "patients",
        "int",
        "default 200",
        "prevalence.bronchiolitis",
        "storage.endpoint_url",
    ):
        assert expected in out


def test_nested_defaults_in_help_are_those_the_job_uses():
    out = p2med("quickstart", "--help").stdout  # its synth and training differ from synth's and train's own
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and "default" in line}
    assert rows["synth.patients"].endswith("default 1200")
    assert rows["train.stages.stage3.steps"].endswith("default 300")  # train/tiny.yaml
    assert rows["serve"].endswith("default True")


def test_an_override_keeps_the_rest_of_the_jobs_nested_defaults():
    from p2med.cli import job_config
    from p2med.jobs import quickstart

    args = ["train.stages.stage3.steps=5", "synth.patients=50", "eval.benchmark.samples=30"]
    config = job_config(quickstart, "quickstart", args)
    default = quickstart.JobSettings()
    assert config.train.stages.stage3.steps == 5 and config.synth.patients == 50
    assert config.train.model_copy(update={"stages": default.train.stages}) == default.train  # tiny.yaml
    assert config.train.stages.stage1 == default.train.stages.stage1
    assert config.synth.model_copy(update={"patients": 1200}) == default.synth
    assert config.eval.inference == default.eval.inference


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["nosuchjob"], ["unknown job 'nosuchjob'"]),
        (["synth", "patiens=3"], ["unknown config key 'patiens'", "did you mean 'patients'"]),
        (["synth", "--bogus", "1"], ["unknown option --bogus"]),
        (["synth", "patients=many"], ["config key 'patients'", "integer"]),
        (["synth", "patients=0"], ["config key 'patients'", "greater than 0"]),
        (["synth", "patients=-5"], ["config key 'patients'", "greater than 0"]),
        (["synth", "prevalence.normal=-1"], ["config key 'prevalence.normal'"]),
        (["synth", "patients=true"], ["config key 'patients'", "valid integer"]),
        (["synth", "seed=-1"], ["config key 'seed'", "greater than or equal to 0"]),
        (["synth", "storage.secret_access_key=", "storage.max_attempts=0"], ["storage.max_attempts"]),
        (["synth", "--config", "missing.yaml"], ["config file 'missing.yaml' not found"]),
        (["synth", "seed"], ["not of the form key=value"]),
        (["synth", "--no-patients"], ["option --no-patients: patients is not a true/false key"]),
    ],
)
def test_bad_config_input(args, fragments):
    assert_one_line_error(p2med(*args), *fragments)


def test_output_not_writable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = p2med("synth", f"out={blocker}/raw", "patients=2")
    assert_one_line_error(result, "a parent of it is a file")
    result = p2med("synth", "out=/proc/p2med-raw", "patients=2")
    assert_one_line_error(result, "cannot write /proc/p2med-raw")


def test_unreachable_s3_endpoint(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"
    result = p2med(
        "synth", "out=s3://raw/x", "patients=2", f"storage.endpoint_url={endpoint}",
        "storage.access_key_id=k", "storage.secret_access_key=s", "storage.max_attempts=1",
    )  # fmt: skip
    assert_one_line_error(result, f"S3 endpoint {endpoint} is unreachable")


@pytest.mark.s3
def test_missing_bucket(s3_storage):
    endpoint = s3_storage.endpoint_url
    result = p2med(
        "synth", "out=s3://no-such-bucket/raw", "patients=2", f"storage.endpoint_url={endpoint}",
        f"storage.access_key_id={S3_KEY}", f"storage.secret_access_key={S3_SECRET}",
    )  # fmt: skip
    assert_one_line_error(result, "bucket 'no-such-bucket' does not exist")


def test_synth_to_local_folder(tmp_path):
    out = tmp_path / "raw"
    result = p2med("synth", "--out", str(out), "patients=3", "seed=1", "--config", "synth/small.yaml")
    assert result.returncode == 0, result.stderr
    assert f"data set ready at {out}" in result.stdout
    assert json.loads((out / "manifest.json").read_text())["counts"]["patients"] == 3


@pytest.mark.s3
def test_synth_to_s3_with_credentials_from_the_environment(bucket, s3_endpoint):
    import os

    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID=S3_KEY,
        AWS_SECRET_ACCESS_KEY=S3_SECRET,
        AWS_ENDPOINT_URL=s3_endpoint,
    )
    result = p2med("synth", "--config", "synth/small.yaml", f"out=s3://{bucket}/raw", "patients=3", env=env)
    assert result.returncode == 0, result.stderr
    assert f"data set ready at s3://{bucket}/raw" in result.stdout
    assert S3_SECRET not in result.stdout + result.stderr


def test_ingest_needs_a_key_and_a_raw_store(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k != "P2MED_DEID_KEY"}
    result = p2med("ingest", f"raw={tmp_path}/raw", f"shards={tmp_path}/shards", env=env)
    assert_one_line_error(result, "no de-identification key", "P2MED_DEID_KEY")
    env["P2MED_DEID_KEY"] = "k"
    result = p2med("ingest", f"raw={tmp_path}/missing", f"shards={tmp_path}/shards", env=env)
    assert_one_line_error(result, f"raw store {tmp_path}/missing does not exist")


def test_serve_needs_a_key_and_a_model(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k != "P2MED_API_KEYS"}
    result = p2med("serve", f"model={tmp_path}/model", env=env)
    assert_one_line_error(result, "no API key is configured", "open_access=true")
    result = p2med("serve", f"model={tmp_path}/missing", "api_keys=[k]", env=env)
    assert_one_line_error(result, f"cannot serve: no model folder at {tmp_path}/missing")
