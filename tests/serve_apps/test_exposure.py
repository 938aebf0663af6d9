"""What a local Ray serving the app listens on, read from the listening sockets of this
process's tree (the test session's Ray, its HAProxy and the app's replicas)."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

import grpc
import httpx
import psutil
import pytest

pytestmark = pytest.mark.slow  # the app on a local Ray Serve


class Listener(NamedTuple):
    ip: str
    port: int
    process: str


def listeners() -> list[Listener]:
    found = []
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            name, sockets = process.name(), process.net_connections(kind="tcp")
        except psutil.NoSuchProcess:  # ended while listed
            continue
        found += [Listener(s.laddr.ip, s.laddr.port, name) for s in sockets if s.status == psutil.CONN_LISTEN]
    return found


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or address).is_loopback


def unauthenticated_call(port: int) -> grpc.StatusCode:
    """The status of a Serve request made without Ray's token."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            channel.unary_unary("/ray.serve.ASGIService/HandleRequest")(b"", timeout=10)
        except grpc.RpcError as refusal:
            return refusal.code()
    return grpc.StatusCode.OK


def test_everything_listens_on_loopback_but_replicas_grpc_which_wants_the_token(base_url):
    """Ray Serve 2.60 binds each replica's inter-deployment gRPC server on every interface
    (no setting); Ray's token authentication guards it."""
    assert httpx.get(f"{base_url}/healthz").status_code == 200
    found = listeners()
    assert {"gcs_server", "raylet", "haproxy"} <= {listener.process for listener in found}
    reachable = [listener for listener in found if not is_loopback(listener.ip)]
    assert reachable, "no replica's gRPC server found: this test no longer sees the tree"
    for listener in reachable:
        assert listener.process.startswith("ray::ServeReplica"), f"{listener} listens beyond loopback"
        assert unauthenticated_call(listener.port) == grpc.StatusCode.UNAUTHENTICATED, listener
