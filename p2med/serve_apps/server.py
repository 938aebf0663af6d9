"""Running the serving app on this machine's Ray (`p2med serve`) until Ctrl-C."""

from __future__ import annotations

import os
import signal
import time

from ray import serve

from p2med.platform.ray_runtime import ensure_ray
from p2med.serve_apps.app import build_app
from p2med.serve_apps.preflight import check_port
from p2med.serve_apps.settings import ServeSettings

APP_NAME = "p2med"


def start(settings: ServeSettings) -> str:
    """Deploy the app on `settings.host:port` and return its base URL once it answers."""
    app = build_app(settings)  # refuses a bad config before Ray starts
    if not os.environ.get("RAY_ADDRESS"):  # a local Ray: its proxy takes the port on this machine
        check_port(settings.host, settings.port)
    ensure_ray()
    serve.start(
        http_options={"host": settings.host, "port": settings.port}, proxy_location=settings.proxy_location
    )
    serve.run(app, name=APP_NAME, route_prefix="/")
    return f"http://{settings.host}:{settings.port}"


def serve_forever(settings: ServeSettings) -> None:
    started = time.perf_counter()
    url = start(settings)
    print(f"serve: {settings.model_name} ready in {time.perf_counter() - started:.0f} s", flush=True)
    print(f"serve: API at {url}/v1 (OpenAI-compatible), reports at {url}/v1/reports", flush=True)
    if settings.demo:
        print(f"serve: demo at {url}/demo (any user name, an API key as password)", flush=True)
    print("serve: Ctrl-C stops", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # a container's stop is a Ctrl-C (Ray's handler dumps a trace)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("serve: stopping", flush=True)
    finally:
        serve.shutdown()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt
