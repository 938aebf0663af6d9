"""The serving app as one Serve application: Ingress -> VisionEncoder -> LLM.

    serve.run(build_app(ServeSettings(model="runs/train/stage3/model", api_keys=["k"])))
    serve deploy p2med/serve_apps/serve_config.yaml     # the same app on a running cluster

`build_app` is Serve's typed app builder: `serve_config.yaml`'s `args` are validated
against `ServeSettings` before anything starts. The API keys and S3 settings of the
building process's environment travel with the app to the replicas that need them (the
keys to the ingress only), so nodes need none of them in their own environment.
"""

from __future__ import annotations

from ray.serve import Application

from p2med.serve_apps.api import Ingress
from p2med.serve_apps.models import LLM, VisionEncoder
from p2med.serve_apps.preflight import check_servable
from p2med.serve_apps.settings import ServeSettings


def build_app(args: ServeSettings) -> Application:
    """Each deployment with its own resources, autoscaling and queue limits; refuses what
    `check_servable` refuses."""
    check_servable(args)
    args = args.for_replicas()
    keyless = args.model_copy(update={"api_keys": []})  # only the ingress checks keys
    vision = VisionEncoder.options(**args.vision.deployment_options()).bind(keyless)
    llm = LLM.options(**args.llm.deployment_options()).bind(keyless)
    return Ingress.options(**args.ingress.deployment_options()).bind(vision, llm, args)
