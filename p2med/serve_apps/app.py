"""The serving app as one Serve application: Ingress -> VisionEncoder -> LLM.

    serve.run(build_app(ServeSettings(model="runs/train/stage3/model", api_keys=["k"])))
    serve deploy p2med/serve_apps/serve_config.yaml     # the same app on a running cluster

`build_app` is Serve's typed app builder: `serve_config.yaml`'s `args` are validated
against `ServeSettings` before anything starts.
"""

from __future__ import annotations

from ray.serve import Application

from p2med.model.checkpoint import check_model_folder
from p2med.platform.errors import ConfigError, P2MedError
from p2med.platform.storage import resolve
from p2med.serve_apps.api import Ingress
from p2med.serve_apps.models import LLM, VisionEncoder
from p2med.serve_apps.settings import ServeSettings


def build_app(args: ServeSettings) -> Application:
    """Each deployment with its own resources, autoscaling and queue limits.

    Raises:
        ConfigError: no API key while the app is not configured open.
        P2MedError: the model folder or a part of it is missing (named).
    """
    if not args.keys() and not args.open_access:
        raise ConfigError(
            "no API key is configured: set api_keys or $P2MED_API_KEYS, or open_access=true "
            "for a demo on a trusted machine"
        )
    location = resolve(args.model, args.storage)
    try:
        check_model_folder(location.uri, location.fs)
    except FileNotFoundError as exc:
        raise P2MedError(f"cannot serve: {exc}") from None
    vision = VisionEncoder.options(**args.vision.deployment_options()).bind(args)
    llm = LLM.options(**args.llm.deployment_options()).bind(args)
    return Ingress.options(**args.ingress.deployment_options()).bind(vision, llm, args)
