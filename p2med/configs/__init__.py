"""The packaged YAML configs, one folder per job: `p2med synth --config synth/small.yaml` finds
`synth/small.yaml` here when the current folder has no such file.

Package data rather than code. The top of the import graph (the CLI, and the quickstart job
for its `train/tiny.yaml` defaults) hands `FOLDER` to `p2med.platform.config.load_config`,
which names no package of ours, so the platform never reaches up for its configs.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
