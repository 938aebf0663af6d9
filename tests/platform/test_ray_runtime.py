"""A local Ray's Serve mode reaches the driver too, or starting one says why it cannot; its
Serve takes ports no one holds, and its HAProxy's pages are on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from p2med.platform.haproxy_loopback import loopback_binds
from p2med.platform.ray_runtime import INGRESS_PORT_RANGES, SERVE_PORT_VARIABLES, use_local_ray_env
from tests.conftest import REPO


def test_a_driver_that_imported_serve_first_is_told_to_set_the_mode_first():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    script = "import ray.serve\nfrom p2med.platform.ray_runtime import start_local_ray\nstart_local_ray()"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "call p2med.platform.ray_runtime.use_local_ray_env() before importing ray" in result.stderr


def test_serve_ports_held_by_another_ray_are_not_reused(monkeypatch):
    """A p2med started by another inherits the ports its parent's Serve listens on."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as held:
        held.bind(("", 0))
        held.listen()
        taken = str(held.getsockname()[1])
        for name in SERVE_PORT_VARIABLES:
            monkeypatch.setenv(name, taken)
        use_local_ray_env()
        ports = [os.environ[name] for name in SERVE_PORT_VARIABLES]
    assert taken not in ports and all(port.isdigit() for port in ports)


def test_haproxys_every_interface_binds_move_to_loopback_and_addressed_ones_stay():
    config = (
        "frontend prometheus\n    bind :9101\n    mode http\n"
        "frontend http_frontend\n    bind 127.0.0.1:8000\n"
        "frontend grpc\n    bind 10.0.0.5:9000 proto h2\n"
        "listen stats\n  bind *:8404\n  stats enable\n"
    )
    binds = [line.strip() for line in loopback_binds(config).splitlines() if "bind " in line]
    assert binds == [
        "bind 127.0.0.1:9101",
        "bind 127.0.0.1:8000",
        "bind 10.0.0.5:9000 proto h2",
        "bind 127.0.0.1:8404",
    ]


def test_serves_ingress_ports_held_by_another_ray_are_not_shared(monkeypatch):
    """Another local Ray's ingress replica holds a port of this one's range (with
    SO_REUSEPORT, as Serve binds them): this one takes another block, so that its HAProxy
    never reaches the other's app."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        (low, high), (grpc_low, _) = INGRESS_PORT_RANGES
        monkeypatch.setenv(low, str(taken))
        monkeypatch.setenv(high, str(taken + 99))
        use_local_ray_env()
        http = range(int(os.environ[low]), int(os.environ[high]) + 1)
        grpc_start = int(os.environ[grpc_low])
    assert taken not in http and len(http) == 100 and grpc_start >= http.stop
