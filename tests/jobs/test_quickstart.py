"""`p2med quickstart` as a newcomer runs it, reduced (few patients, few steps): interrupted
in training, resumed, evaluated and served; one API request and one Gradio request
against the served model; Ctrl-C stops it. And the run directory's bookkeeping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from gradio_client import Client, handle_file

from p2med.platform.errors import P2MedError
from p2med.platform.run_directory import RunDirectory
from p2med.platform.storage import resolve
from tests.conftest import free_port

KEY = "quickstart-test-key"
DEID_KEY = "quickstart-deid-secret"
REDUCED = [
    "synth.patients=24",
    "synth.xray_size=128",
    "ingest.imaging.xray_size=64",
    "ingest.imaging.ct_size=32",
    "ingest.imaging.ct_slices=8",
    "train.data.max_length=256",
    "train.stages.stage1.steps=4",
    "train.stages.stage2.steps=8",
    "train.stages.stage2.vision_steps=4",
    "train.stages.stage2.warmup_steps=2",
    "train.stages.stage3.steps=4",
    "train.stages.stage1.batch_size=2",
    "train.stages.stage2.batch_size=2",
    "train.stages.stage3.batch_size=2",
    "train.checkpoint.every_steps=4",
    "train.checkpoint.val_batches=1",
    "eval.benchmark.samples=12",
    "eval.inference.max_new_tokens=16",
    "eval.inference.replicas=1",
]

DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


class Quickstart:
    """`p2med quickstart` in a child process whose console lines are read as they come."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        # SIGINT handled as in a terminal: a test run started in the background of a script
        # ignores SIGINT, and a child inherits that (exec resets handled signals, not ignored ones)
        command = [
            sys.executable,
            "-c",
            DEFAULT_SIGINT,
            str(Path(sys.executable).with_name("p2med")),
            "quickstart",
            *args,
        ]
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )

    def wait_for(self, fragment: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                break
            self.lines.append(line)
            if fragment in line:
                return line
        raise AssertionError(f"no line with {fragment!r}; output ends:\n{''.join(self.lines[-40:])}")

    def stop(self, timeout: float = 120) -> int:
        self.process.send_signal(signal.SIGINT)
        rest, _ = self.process.communicate(timeout=timeout)
        self.lines += rest.splitlines(keepends=True)
        return self.process.returncode

    def output(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def env() -> dict[str, str]:
    clean = {
        k: v for k, v in os.environ.items() if k not in ("P2MED_API_KEYS", "P2MED_DEID_KEY", "RAY_ADDRESS")
    }
    return clean | {"P2MED_API_KEYS": KEY, "P2MED_DEID_KEY": DEID_KEY}


@pytest.mark.slow  # every job, Ray Train and Serve included
@pytest.mark.timeout(1500)
def test_a_reduced_quickstart_is_interrupted_resumed_evaluated_and_served(tmp_path, env):
    root = tmp_path / "runs"
    first = Quickstart(f"root={root}", "--no-serve", *REDUCED, env=env)
    run_line = first.wait_for("quickstart: run directory", timeout=60)
    run_dir = Path(run_line.split("run directory", 1)[1].strip())
    assert run_dir.parent == root
    first.wait_for("train: stage 2 on", timeout=600)
    assert first.stop() == 130, first.output()[-6000:]
    assert f"continue with: p2med quickstart resume={run_dir}" in first.output()
    phases = json.loads((run_dir / "phases.json").read_text())
    assert list(phases) == ["synth", "ingest"]
    assert (run_dir / "train" / "stage1" / "model" / "p2med_config.json").is_file()

    port = free_port()
    second = Quickstart(f"resume={run_dir}", f"serving.port={port}", env=env)
    second.wait_for("synth: finished before; skipped", timeout=60)
    second.wait_for("train: stage 1 already finished", timeout=120)
    second.wait_for("quickstart: finished in", timeout=900)
    second.wait_for("serve: demo at", timeout=300)
    try:
        xray = next((run_dir / "raw" / "dicom" / "xray").glob("*.dcm"))
        with xray.open("rb") as upload:
            reply = requests.post(
                f"http://127.0.0.1:{port}/v1/reports",
                headers={"Authorization": f"Bearer {KEY}"},
                data={"task": "xray_report"},
                files={"file": ("x.dcm", upload, "application/dicom")},
                timeout=120,
            )
        assert reply.status_code == 200, reply.text
        assert reply.json()["report"].strip()
        demo = Client(f"http://127.0.0.1:{port}/demo/", auth=("doctor", KEY), verbose=False)
        try:
            written = demo.predict([handle_file(str(xray))], "xray_report", "", api_name="/report")
        finally:
            demo.close()  # its heartbeat stream would be a request in flight at Ctrl-C
        assert isinstance(written, str) and written.strip()
    finally:
        assert second.stop() == 0
    output = second.output()
    assert "serve: stopping" in output
    # the quickstart's own lines; Ray's actors prefix theirs with "(ActorName pid=...)", and
    # Serve logs a stream still open at shutdown (a demo page's heartbeat) as a failed request
    own = [line for line in output.splitlines() if " pid=" not in line.split(")", 1)[0]]
    assert not [line for line in own if "Traceback" in line], "\n".join(own[-60:])

    phases = json.loads((run_dir / "phases.json").read_text())
    assert list(phases) == ["synth", "ingest", "train", "eval"]
    assert set(phases["train"]["stages"]) == {"stage2", "stage3"}  # stage 1 finished in the first session
    assert set(phases["eval"]["headline"]) == {
        "xray_report_findings_f1",
        "xray_report_findings_f1_text_only",
        "diagnosis_accuracy",
    }
    for part in (
        "settings.yaml",
        "raw/manifest.json",
        "shards/manifest.json",
        "train/stage3/model/p2med_config.json",
        "train/stage3/loss.png",
        "eval/report.html",
        "eval/metrics.json",
    ):
        assert (run_dir / part).is_file(), part
    assert (run_dir / "train" / "mlruns").is_dir()
    saved = (run_dir / "settings.yaml").read_text()
    assert KEY not in saved and DEID_KEY not in saved
    assert yaml.safe_load(saved)["synth"]["patients"] == 24


def test_each_run_gets_its_own_directory(location_uri):
    uri, storage = location_uri  # local disk and the S3 server
    root = resolve(uri, storage)
    first, second = RunDirectory.create(root), RunDirectory.create(root)
    assert first.uri != second.uri and first.uri.startswith(root.uri)
    first.save_settings({"synth": {"patients": 3}})
    first.finish("synth", 2.0, note="x")
    again = RunDirectory.open(resolve(first.uri, storage))
    assert again.phases() == {"synth": {"seconds": 2.0, "note": "x"}} and again.finished("synth")
    assert again.saved_settings() == {"synth": {"patients": 3}}
    assert second.phases() == {}
    with pytest.raises(P2MedError, match=r"holds no settings\.yaml"):
        second.saved_settings()


def test_resuming_what_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(P2MedError, match="is not a run directory"):
        RunDirectory.open(resolve(str(tmp_path)))
    binary = Path(sys.executable).with_name("p2med")
    result = subprocess.run(
        [str(binary), "quickstart", f"resume={tmp_path}"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {tmp_path} is not a run directory: it has no phases.json"
