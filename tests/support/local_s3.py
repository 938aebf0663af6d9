"""A local S3-compatible server for tests and benchmarks: moto in server mode (the `dev`
extra), in its own process, on 127.0.0.1. Test support, so it lives here and not in the
p2med package; bench scripts import it too (bench/stream.py)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def local_s3_server(timeout_s: float = 30.0) -> Iterator[str]:
    """Start `moto_server` on a free port; yields its endpoint URL, stops it on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Path(sys.executable).with_name("moto_server")
    if not server.exists():
        raise RuntimeError(f"{server} not found: install the dev extra (pip install -e '.[dev]')")
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
