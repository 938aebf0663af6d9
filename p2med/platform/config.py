"""Typed settings: YAML config files plus `key=value` overrides, validated when loaded.

Every job's settings are a `Settings` subclass whose fields carry a type, a default and a
docstring. A wrong key or value fails here, at load time, with the key's dotted name,
never deep inside a Ray worker. Validation is strict: `patients=true` is an error, not 1.

    cfg = load_config(synth.JobSettings, "synth/small.yaml", ["patients=50"], packaged=configs.FOLDER)

A config name that is no file is looked up in the `packaged` folder the caller hands down
(the CLI passes `p2med.configs.FOLDER`); the platform never looks configs up through a
package above it (tests/test_layering.py).
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from p2med.platform.errors import ConfigError

S = TypeVar("S", bound="Settings")


class Settings(BaseModel):
    """Base of all settings: unknown keys are errors; attribute docstrings describe fields."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True, validate_default=True
    )


def parse_overrides(tokens: list[str], cls: type[BaseModel] | None = None) -> dict[str, Any]:
    """`["a.b=1", "c=x"]` -> `{"a": {"b": 1}, "c": "x"}`.

    Values are parsed as YAML scalars (numbers, booleans, lists), except for keys of `cls`
    that hold text: there the value stays as typed, so `out=123` is the folder "123".
    An empty value means None.
    """
    tree: dict[str, Any] = {}
    for token in tokens:
        key, sep, raw = token.partition("=")
        parts = key.split(".")
        if not sep or not key or any(not part for part in parts):
            raise ConfigError(f"override {token!r} is not of the form key=value (e.g. seed=3)")
        if not raw:
            value = None
        elif cls is not None and _holds_text(field_annotation(cls, parts)):
            value = raw
        else:
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw  # not valid YAML: keep the text and let the field's type decide
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {token!r} conflicts with an earlier '{part}=...'")
            node = child
        node[parts[-1]] = value
    return tree


def field_annotation(cls: type[BaseModel], parts: list[str]) -> Any:
    """The type of the field at a dotted path, or None where the path names no field."""
    annotation: Any = cls
    for part in parts:
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        field = annotation.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
    return annotation


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _holds_text(annotation: Any) -> bool:
    return any(a in (str, SecretStr) for a in _union_members(annotation))


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; values of `update` win, nested dicts are merged key by key."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def find_config_file(name: str, packaged: Path | None = None) -> Path:
    """A config path as given, else relative to the folder of packaged configs `packaged`."""
    given = Path(name).expanduser()
    if given.is_dir():
        raise ConfigError(f"config file {name!r} is a folder; give a YAML file")
    if given.is_file():
        return given
    if packaged is None:
        raise ConfigError(f"config file {name!r} not found (looked in the current folder)")
    shipped = packaged / name
    if shipped.is_file():
        return shipped
    raise ConfigError(
        f"config file {name!r} not found (looked in the current folder and in {shipped.parent})"
    )


def read_config_file(name: str, packaged: Path | None = None) -> dict[str, Any]:
    """The mapping in config file `name` (found as `find_config_file` finds it)."""
    path = find_config_file(name, packaged)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {name}{where} is not valid YAML") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"config file {name} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"config file {name} cannot be read: {exc.strerror or exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {name} must hold a mapping of keys, not {type(data).__name__}")
    return data


def load_config(
    cls: type[S], file: str | None = None, overrides: list[str] | None = None, packaged: Path | None = None
) -> S:
    """Build a validated `cls` from defaults, then `file` (YAML), then `overrides`.

    Args:
        cls: The settings class.
        file: A YAML file: a path, else a name under `packaged` (`synth/small.yaml`).
        overrides: `key=value` tokens, dotted keys for nested settings.
        packaged: The folder of packaged configs (the CLI hands down `p2med.configs.FOLDER`).
    """
    data = merge(nested_defaults(cls), read_config_file(file, packaged) if file else {})
    data = merge(data, parse_overrides(overrides or [], cls))
    return validate(cls, data)


def nested_defaults(cls: type[BaseModel]) -> dict[str, Any]:
    """The defaults of `cls`'s nested-config fields, as dicts. A file or an override that
    sets one key of such a field then changes that key of the field's default; without
    them pydantic would build the field from its class's defaults (quickstart's
    `train.stages.stage3.steps=100` would drop all of `train/tiny.yaml`)."""
    defaults = {}
    for name, field in cls.model_fields.items():
        if not field.is_required():
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                defaults[name] = default.model_dump()
    return defaults


def validate(cls: type[S], data: dict[str, Any]) -> S:
    """`cls(**data)`, with pydantic's errors turned into one line naming the key."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(cls, exc)) from None


def _describe(cls: type[Settings], exc: ValidationError) -> str:
    err = exc.errors()[0]
    parts = [str(p) for p in err["loc"]]
    key = ".".join(parts)
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    if err["type"] == "extra_forbidden":
        known = [k for k, *_ in describe_fields(cls)]
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
        return f"unknown config key '{key}'{hint}{more}"
    value = err.get("input")
    secret = SecretStr in _union_members(field_annotation(cls, parts))
    shown = "" if secret or isinstance(value, dict) else f" (got {value!r})"
    return f"config key '{key}': {err['msg']}{shown}{more}"


def describe_fields(
    cls: type[BaseModel], prefix: str = "", defaults: BaseModel | None = None
) -> list[tuple[str, str, str, str]]:
    """(dotted key, type and bounds, default, description) for every leaf field, nested
    configs expanded; a nested config's defaults are those of its parent's default
    (`defaults`), which may differ from its class's."""
    rows = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        default = (
            getattr(defaults, name) if defaults is not None else field.get_default(call_default_factory=True)
        )
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested = default if isinstance(default, BaseModel) else None
            rows += describe_fields(annotation, prefix=f"{key}.", defaults=nested)
            continue
        shown = "(secret)" if isinstance(default, SecretStr) else repr(default)
        kind = ", ".join([_type_name(annotation), *_bounds(field.metadata)])
        rows.append((key, kind, shown, field.description or ""))
    return rows


def _bounds(metadata: list[Any]) -> list[str]:
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    out = []
    for item in metadata:
        if isinstance(
            item, annotated_types.Gt | annotated_types.Ge | annotated_types.Lt | annotated_types.Le
        ):
            name = type(item).__name__.lower()
            out.append(f"{symbols[name]} {getattr(item, name)}")
    return out


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))
