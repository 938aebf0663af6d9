"""Settings of the serving app: what `p2med serve` reads from YAML and overrides, and what
`serve_config.yaml` passes to the app builder (`app.build_app`) as typed arguments."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, SecretStr

from p2med.platform.config import Settings
from p2med.platform.storage import StorageSettings

API_KEYS_ENV = "P2MED_API_KEYS"  # comma-separated bearer keys, added to `api_keys`


class ReplicaSettings(Settings):
    """Resources, autoscaling and backpressure of one deployment."""

    num_cpus: float = Field(0.25, gt=0)
    """CPUs per replica; fractions let several replicas share a small machine."""
    num_gpus: float = Field(0.0, ge=0)
    """GPUs per replica (fractions share one GPU between replicas)."""
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(4.0, gt=0)
    """Autoscaling aims at this many requests in flight per replica."""
    max_ongoing_requests: int = Field(16, ge=1)
    """Requests one replica takes at once; more wait in the caller's queue."""
    max_queued_requests: int = Field(64, ge=-1)
    """Requests that may wait for a replica; beyond this the app answers 503 (-1: no limit)."""
    max_replicas_per_node: int | None = Field(None, ge=1)
    """At most this many replicas on one node (1 spreads them over nodes: a lost node takes one)."""

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments of `Deployment.options` for these settings."""
        return {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "autoscaling_config": {
                "min_replicas": self.min_replicas,
                "initial_replicas": max(self.min_replicas, 1),
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            },
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "max_replicas_per_node": self.max_replicas_per_node,
        }


class BatchSettings(Settings):
    """How a model deployment gathers concurrent requests into one batch (the VisionEncoder
    with `@serve.batch`, the LLM with `batching.JoiningBatcher`)."""

    max_batch_size: int = Field(8, ge=1)
    """1 disables batching."""
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    """How long the first request of a batch waits for others."""


class ModelDeploymentSettings(ReplicaSettings):
    batch: BatchSettings = BatchSettings()


class ServeSettings(Settings):
    """Everything the serving app needs."""

    model: str = "runs/train/stage3/model"
    """The model folder to serve (a stage's `model/`): a local path, file:// or s3:// URI."""
    storage: StorageSettings = StorageSettings()
    """Connection settings for s3:// locations."""
    model_name: str = "p2med"
    """The model id clients name (`GET /v1/models`, the `model` field of a chat request)."""
    api_keys: list[SecretStr] = Field(default_factory=list)
    """Bearer keys that may call the API; $P2MED_API_KEYS (comma-separated) adds more."""
    open_access: bool = False
    """Serve without keys. Only for a demo on a trusted machine: the API answers anyone."""
    demo: bool = True
    """Serve the Gradio demo at /demo (its login: any user name, an API key as password)."""
    max_request_mb: float = Field(64.0, gt=0)
    """Largest request body, in MiB; also the most its images may expand to (a CT zip's
    files) and decode to (their pixel data together, as their headers give it)."""
    default_max_tokens: int = Field(320, ge=1)
    """Tokens generated when a request does not say (a long inpatient record needs a few hundred)."""
    max_tokens_limit: int = Field(1024, ge=1)
    """The most tokens one request may ask for."""
    max_images: int = Field(8, ge=1)
    """The most images one chat request may hold (each is decoded and encoded before the
    answer starts, in the encoder replicas every other request shares)."""
    header_readers: int = Field(2, ge=1)
    """Processes beside each ingress replica that read uploads' headers (`readers.py`)."""
    request_timeout_s: float = Field(300.0, gt=0)
    """The most one request may take, end to end: past it, a 504 (a stream ends with an
    error event) and its row leaves the running batch."""
    max_prompt_chars: int = Field(65_536, ge=1)
    """The most characters of text one request may hold (tokenized on the LLM replica
    before it joins a batch)."""
    vision: ModelDeploymentSettings = ModelDeploymentSettings()
    llm: ModelDeploymentSettings = ModelDeploymentSettings()
    ingress: ReplicaSettings = ReplicaSettings(max_ongoing_requests=64, max_queued_requests=128)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    proxy_location: Literal["EveryNode", "HeadOnly"] = "EveryNode"
    """Where Serve listens on `host:port`: on every node (behind a load balancer), or on the
    head only (one entry point; also several Ray nodes on one machine, which share its ports)."""

    def keys(self) -> set[str]:
        """The accepted bearer keys: the configured ones and those of $P2MED_API_KEYS."""
        from_env = [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
        return {k.get_secret_value() for k in self.api_keys} | set(from_env)

    def for_replicas(self) -> ServeSettings:
        """These settings with what this process's environment adds (the API keys of
        $P2MED_API_KEYS, the S3 settings of the AWS variables) written in: the replicas,
        on whatever node, then need nothing from their own node's environment."""
        keys = [SecretStr(key) for key in sorted(self.keys())]
        return self.model_copy(update={"api_keys": keys, "storage": self.storage.resolved()})

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 2**20)

    @property
    def max_text_bytes(self) -> int:
        """The most bytes a chat body may hold outside its images' data URIs: 8 for each
        character of `max_prompt_chars`, up to 6 for the character (JSON's \\uXXXX escapes)
        and the rest for the JSON around the text."""
        return 8 * self.max_prompt_chars
