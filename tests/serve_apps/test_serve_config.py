"""serve_config.yaml deploys our app: Serve's schema accepts it, its import path is the
app builder, and its args are valid ServeSettings (what Serve checks at `serve deploy`)."""

from __future__ import annotations

import importlib
import socket
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

import p2med.serve_apps
from p2med.platform.errors import ConfigError, P2MedError
from p2med.serve_apps.app import build_app
from p2med.serve_apps.preflight import check_port
from p2med.serve_apps.settings import ServeSettings

CONFIG = Path(p2med.serve_apps.__file__).parent / "serve_config.yaml"


def test_serve_config_names_the_app_builder_with_valid_args():
    config = yaml.safe_load(CONFIG.read_text())
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    module, _, name = app["import_path"].partition(":")
    assert getattr(importlib.import_module(module), name) is build_app
    settings = ServeSettings.model_validate(app["args"])
    assert settings.llm.num_gpus == 1 and settings.vision.max_replicas == 4
    assert not settings.api_keys  # keys come from the environment, never from the file


def test_keys_come_from_the_config_and_the_environment(monkeypatch):
    monkeypatch.setenv("P2MED_API_KEYS", " k2, k3 ,")
    assert ServeSettings(api_keys=["k1"]).keys() == {"k1", "k2", "k3"}


def test_replicas_get_the_keys_and_s3_settings_of_the_environment_the_app_is_built_in(monkeypatch):
    """A replica on a node whose environment holds neither still has both."""
    builder = {"P2MED_API_KEYS": "k2", "AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}
    for name, value in builder.items():
        monkeypatch.setenv(name, value)
    replica = ServeSettings(api_keys=["k1"]).for_replicas()
    for name in builder:
        monkeypatch.delenv(name)
    assert {key.get_secret_value() for key in replica.api_keys} == {"k1", "k2"}
    assert replica.storage.resolved().access_key_id == "id"
    assert replica.storage.resolved().secret_access_key.get_secret_value() == "secret"


def test_the_app_refuses_to_start_open_by_accident_or_on_a_bad_model(monkeypatch, model_dir, tmp_path):
    monkeypatch.delenv("P2MED_API_KEYS", raising=False)
    with pytest.raises(ConfigError, match="no API key"):
        build_app(ServeSettings(model=str(model_dir)))
    build_app(ServeSettings(model=str(model_dir), open_access=True))  # explicitly open: fine
    with pytest.raises(P2MedError, match="cannot serve: no model folder"):
        build_app(ServeSettings(model=str(tmp_path / "nothing"), api_keys=["k"]))


def test_a_port_in_use_is_refused_by_name_and_a_free_one_is_not():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(P2MedError, match=rf"cannot serve on 127\.0\.0\.1:{port}: the port is in use"):
            check_port("127.0.0.1", port)
    check_port("127.0.0.1", port)  # closed: free again
