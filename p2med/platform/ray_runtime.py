"""Connecting to Ray the same way from a laptop and from a cluster job."""

from __future__ import annotations

import logging
import os

import ray


def ensure_ray() -> None:
    """Join the cluster named by $RAY_ADDRESS (set inside `ray job submit`), else start a
    local Ray sized to this machine, with its dashboard on 127.0.0.1:8265. Idempotent.

    The dashboard also serves Ray's State API, which Ray Train V2's placement-group cleaner
    polls every second: without it that actor logs a warning each time (a thousand lines
    in a quickstart) and cannot free a dead run's resources. It costs ~3 s at start."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    ray.init(
        address=address or None,
        include_dashboard=True if not address else None,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
