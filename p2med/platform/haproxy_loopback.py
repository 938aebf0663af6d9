"""`p2med-haproxy`: Ray Serve's HAProxy with its stats page and Prometheus exporter on
127.0.0.1, ending with the Serve process that started it.

Ray's HAProxy configuration binds those two on every interface, and Ray 2.60 has no
setting for their address (its template writes `bind *:<port>`). A local Ray names this
command as its HAProxy binary (`RAY_SERVE_HAPROXY_BINARY_PATH`, set by
`p2med.platform.ray_runtime`): it rewrites those bind lines of the configuration Ray
wrote, under the lock Ray writes it with, then becomes the real HAProxy
($P2MED_HAPROXY_BINARY) with the same arguments, so that Ray manages it as its own.

It also asks the kernel to stop HAProxy when its parent (Serve's HAProxy manager) ends:
a `p2med serve` stopped while Serve was reloading HAProxy could leave the new HAProxy
running, holding the API's port (docs/serving.md, Ray Serve setup).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import signal
import sys
from pathlib import Path

REAL_BINARY_VARIABLE = "P2MED_HAPROXY_BINARY"
PR_SET_PDEATHSIG = 1  # prctl(2)
# `bind *:8404` and `bind :9101`: every interface. Binds with an address are left alone.
EVERY_INTERFACE = re.compile(r"^(\s*bind\s+)\*?(:\d+)", re.MULTILINE)


def loopback_binds(config: str) -> str:
    """`config` (an HAProxy configuration) with its every-interface binds on 127.0.0.1."""
    return EVERY_INTERFACE.sub(r"\g<1>127.0.0.1\g<2>", config)


def main() -> None:
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # kept across exec
    if os.getppid() != parent:  # it ended before the request: no signal will come
        raise SystemExit(f"{sys.argv[0]}: the Serve process that started HAProxy has ended")
    args = sys.argv[1:]
    if "-f" in args:
        config = Path(args[args.index("-f") + 1])
        with open(f"{config}.lock", "w") as lock:  # the lock Ray holds while it writes the file
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            config.write_text(loopback_binds(config.read_text()))
    binary = os.environ[REAL_BINARY_VARIABLE]
    os.execv(binary, [binary, *args])
