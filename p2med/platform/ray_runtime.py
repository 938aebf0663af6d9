"""Connecting to Ray the same way from a laptop and from a cluster job."""

from __future__ import annotations

import logging
import os

import ray


def ensure_ray() -> None:
    """Join the cluster named by $RAY_ADDRESS (set inside `ray job submit`), else start a
    local Ray sized to this machine. Idempotent."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    ray.init(
        address=address or None,
        include_dashboard=False if not address else None,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
