"""What the serving app refuses before Ray Serve is imported or started: a user who forgot
the key or mistyped the model folder hears it at once (`p2med serve` and `build_app`)."""

from __future__ import annotations

import socket

from p2med.model.checkpoint import check_model_folder
from p2med.platform.errors import ConfigError, P2MedError
from p2med.platform.storage import resolve
from p2med.serve_apps.settings import ServeSettings


def check_servable(settings: ServeSettings) -> None:
    """Raises:
    ConfigError: no API key while the app is not configured open.
    P2MedError: the model folder or a part of it is missing (named).
    """
    if not settings.keys() and not settings.open_access:
        raise ConfigError(
            "no API key is configured: set api_keys or $P2MED_API_KEYS, or open_access=true "
            "for a demo on a trusted machine"
        )
    location = resolve(settings.model, settings.storage)
    try:
        check_model_folder(location.uri, location.fs)
    except FileNotFoundError as exc:
        raise P2MedError(f"cannot serve: {exc}") from None


def check_port(host: str, port: int) -> None:
    """Raises P2MedError naming the port when something already listens on `host:port`
    (called where the app's proxy is about to take it on this machine). Without this, Ray
    Serve's HAProxy fails with its own alert, and a `p2med serve` killed with SIGKILL leaves
    its HAProxy holding the port."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed one's TIME_WAIT is no owner
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise P2MedError(
                f"cannot serve on {host}:{port}: the port is in use ({exc.strerror}); stop what "
                f"listens there (`ss -ltnp 'sport = :{port}'` names it; a p2med serve killed with "
                f"SIGKILL can leave its HAProxy behind) or choose another port="
            ) from None
