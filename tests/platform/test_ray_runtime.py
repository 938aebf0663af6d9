"""A local Ray's Serve mode reaches the driver too, or starting one says why it cannot."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO


def test_a_driver_that_imported_serve_first_is_told_to_set_the_mode_first():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    script = "import ray.serve\nfrom p2med.platform.ray_runtime import start_local_ray\nstart_local_ray()"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "call p2med.platform.ray_runtime.use_local_ray_env() before importing ray.serve" in result.stderr
