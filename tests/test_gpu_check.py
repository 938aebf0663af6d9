"""`bench/gpu_check.py --shape tiny` on CPU: every check passes and both pasteable lines
come, with Ray, pydicom and MONAI unimportable (the GPU node has none of them)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

WITHOUT = ("ray", "pydicom", "monai")
RUN = (
    "import runpy, sys; "
    f"sys.modules.update(dict.fromkeys({WITHOUT!r})); "  # `import ray` then raises ImportError
    "sys.argv = ['bench/gpu_check.py', '--shape', 'tiny', '--seconds', '3']; "
    "runpy.run_path('bench/gpu_check.py', run_name='__main__')"
)


@pytest.mark.slow  # DeepSpeed engines of the three stages, under ZeRO-2 and under ZeRO-3
def test_the_gpu_check_passes_on_cpu_with_the_tiny_shape_and_without_ray():
    done = subprocess.run([sys.executable, "-c", RUN], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    lines = done.stdout.splitlines()
    assert "gpu_check: all checks passed" in lines
    assert not [line for line in lines if line.startswith("FAIL")]
    checks = [line for line in lines if line.startswith("PASS")]
    assert len(checks) == 2 * (1 + 6 + 5) + 3 + 5 + 2 + 2 + 1, "\n".join(checks)
    assert any(line.startswith("gpu_train: mfu n/a") for line in lines)  # no peak for a CPU
    assert any(line.startswith("gpu_decode: ms_per_step ") for line in lines)
