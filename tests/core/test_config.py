"""Config: YAML -> typed object, overrides, and errors that name the key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from longtail.core.config import DEFAULT_CONF, Config, load_config, to_dict
from longtail.core.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_embedded_default_is_local_yaml_and_matches_builtin_defaults():
    assert DEFAULT_CONF == CONF / "local.yaml"
    # The built-in defaults (used when the package is installed without conf/) equal local.yaml.
    assert load_config(None) == Config()
    assert yaml.safe_load((CONF / "local.yaml").read_text()) == to_dict(Config())


@pytest.mark.parametrize("name", ["local.yaml", "cluster.yaml", "databricks.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(CONF / name)
    assert isinstance(cfg, Config)


def test_cluster_config_requests_gpus_from_spark():
    cfg = load_config(CONF / "cluster.yaml")
    assert cfg.spark.master is None
    assert cfg.spark.conf["spark.task.resource.gpu.amount"] == "1"
    assert "spark.executor.resource.gpu.discoveryScript" in cfg.spark.conf
    assert cfg.train.use_gpu and cfg.train.mode == "cluster"


def test_set_overrides_parse_yaml_scalars():
    cfg = load_config(None, ["train.epochs=3", "warehouse=/tmp/wh", "sequences.min_rating=3.5",
                             "encode.normalize=false", "sequences.min_rating=null"])
    assert cfg.train.epochs == 3
    assert cfg.warehouse == "/tmp/wh"
    assert cfg.encode.normalize is False
    assert cfg.sequences.min_rating is None


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, ["train.epochs=2.5"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.epochz=3", "train.epochz"),
        ("trian.epochs=3", "trian"),
        ("train.epochs=many", "train.epochs"),
        ("encode.normalize=maybe", "encode.normalize"),
        ("sequences.segments.method=median", "sequences.segments.method"),
        ("train=3", "train"),
        ("train.epochs.x=1", "train.epochs"),
    ],
)
def test_unknown_or_mistyped_keys_are_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert key in str(err.value)


def test_unknown_key_in_file_is_named(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  epochs: 2\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="train.learning_rate"):
        load_config(f)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml"):
        load_config(f)


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["train.epochs"])


def test_replace_returns_a_new_validated_config():
    cfg = Config()
    other = cfg.replace(**{"train.epochs": 4})
    assert other.train.epochs == 4 and cfg.train.epochs == 200
    with pytest.raises(ConfigError):
        cfg.replace(**{"train.nope": 1})
