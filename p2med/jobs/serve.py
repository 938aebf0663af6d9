"""Serve a trained model: the HTTP API (OpenAI-compatible and DICOM reports) on Ray Serve.

p2med serve model=runs/train/stage3/model api_keys=[my-key]
P2MED_API_KEYS=k1,k2 p2med serve model=s3://bucket/runs/r1/stage3/model port=8000
p2med serve model=runs/train/stage3/model open_access=true     # a demo on a trusted machine
"""

from __future__ import annotations

from p2med.serve_apps.settings import ServeSettings as JobSettings


def run(config: JobSettings) -> None:
    from p2med.serve_apps.preflight import check_servable

    check_servable(config)  # before Ray Serve's import, which takes seconds
    from p2med.serve_apps.server import serve_forever

    serve_forever(config)
