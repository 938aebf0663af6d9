"""Typed configs: overrides, YAML files, validation errors that name the key."""

from __future__ import annotations

import pytest
from pydantic import Field, SecretStr

from p2med.platform.config import Settings, describe_fields, load_config, parse_overrides
from p2med.platform.errors import ConfigError


class Inner(Settings):
    rate: float = 0.5
    """A rate."""


class Outer(Settings):
    name: str = "x"
    """A name."""
    password: SecretStr | None = None
    """A secret."""
    count: int = Field(3, gt=0)
    """How many."""
    inner: Inner = Inner()
    """Nested settings."""


def test_overrides_nest_on_dots_and_parse_yaml_scalars():
    assert parse_overrides(["a.b=1", "a.c=x", "d=true", "e=1.5", "f=", "g=s3://b/k"]) == {
        "a": {"b": 1, "c": "x"},
        "d": True,
        "e": 1.5,
        "f": None,
        "g": "s3://b/k",
    }


@pytest.mark.parametrize("token", ["novalue", "=3", "a..b=1"])
def test_malformed_overrides(token):
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides([token])


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# p2med test --config c.yaml\nname: from-file\ninner:\n  rate: 0.1\ncount: 7\n")
    cfg = load_config(Outer, str(path), ["inner.rate=0.9"])
    assert (cfg.name, cfg.count, cfg.inner.rate) == ("from-file", 7, 0.9)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'inner\.rat'; did you mean 'inner\.rate'\?"):
        load_config(Outer, None, ["inner.rat=1"])


def test_text_fields_keep_what_was_typed():
    cfg = load_config(Outer, None, ["name=123", "password=007"])
    assert cfg.name == "123" and cfg.password.get_secret_value() == "007"
    assert load_config(Outer, None, ["name=yes"]).name == "yes"


def test_no_silent_coercion():
    with pytest.raises(ConfigError, match=r"config key 'count': .*integer.*\(got True\)"):
        load_config(Outer, None, ["count=true"])
    with pytest.raises(ConfigError, match=r"config key 'inner\.rate': .*number"):
        load_config(Outer, None, ["inner.rate=fast"])


def test_secrets_stay_out_of_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("password: 12345\n")  # YAML reads a number: wrong type, but never echoed
    with pytest.raises(ConfigError, match="config key 'password'") as err:
        load_config(Outer, str(path))
    assert "12345" not in str(err.value)


def test_wrong_type_and_bad_value_name_the_key():
    with pytest.raises(ConfigError, match=r"config key 'count': .*integer.*\(got 'many'\)"):
        load_config(Outer, None, ["count=many"])
    with pytest.raises(ConfigError, match=r"config key 'count': .*greater than 0.*\(got 0\)"):
        load_config(Outer, None, ["count=0"])


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match=r"config file 'nope\.yaml' not found"):
        load_config(Outer, "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(Outer, str(bad))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00name")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(Outer, str(binary))
    with pytest.raises(ConfigError, match="is a folder; give a YAML file"):
        load_config(Outer, str(tmp_path))
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(Outer, str(listing))


def test_a_name_that_is_no_file_is_looked_up_in_the_packaged_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no job/c.yaml here
    packaged = tmp_path / "packaged"
    (packaged / "job").mkdir(parents=True)
    (packaged / "job" / "c.yaml").write_text("count: 9\n")
    assert load_config(Outer, "job/c.yaml", packaged=packaged).count == 9
    with pytest.raises(ConfigError, match=r"'job/c\.yaml' not found \(looked in the current folder\)$"):
        load_config(Outer, "job/c.yaml")  # no packaged folder handed down
    with pytest.raises(ConfigError, match=f"'job/d.yaml' not found .* and in {packaged / 'job'}"):
        load_config(Outer, "job/d.yaml", packaged=packaged)


def test_an_override_changes_one_key_of_a_nested_default(tmp_path):
    class Parent(Settings):
        outer: Outer = Outer(name="parent's", inner=Inner(rate=0.9))
        """A nested default that differs from its class's."""

    assert load_config(Parent, overrides=["outer.count=7"]).outer == Outer(
        name="parent's", count=7, inner=Inner(rate=0.9)
    )
    (tmp_path / "c.yaml").write_text("outer:\n  inner:\n    rate: 0.1\n")
    loaded = load_config(Parent, str(tmp_path / "c.yaml"), ["outer.name=y"])
    assert loaded.outer == Outer(name="y", inner=Inner(rate=0.1))


def test_describe_fields_expands_nested_configs():
    rows = {key: (typ, default, doc) for key, typ, default, doc in describe_fields(Outer)}
    assert rows["count"] == ("int, > 0", "3", "How many.")
    assert rows["password"] == ("SecretStr | None", "None", "A secret.")
    assert rows["inner.rate"] == ("float", "0.5", "A rate.")


def test_configs_are_immutable():
    cfg = Outer()
    with pytest.raises(Exception, match="frozen"):
        cfg.count = 5
