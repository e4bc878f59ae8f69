"""Config: YAML -> typed object, overrides, and errors that name the key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from longtail.core.config import DEFAULT_CONF, Config, load_config, to_dict
from longtail.core.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_embedded_default_is_local_yaml_and_matches_builtin_defaults():
    # The embedded default lives inside the package; conf/local.yaml in the checkout links to it.
    assert DEFAULT_CONF.read_text() == (CONF / "local.yaml").read_text()
    assert DEFAULT_CONF.parent.parent.name == "longtail"
    # The built-in defaults (used when the package is installed without conf/) equal local.yaml.
    assert load_config(None) == Config()
    assert yaml.safe_load((CONF / "local.yaml").read_text()) == to_dict(Config())


@pytest.mark.parametrize("name", ["local.yaml", "cluster.yaml", "databricks.yaml", "paper.yaml"])
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


def test_retrieval_settings_load():
    keys = ["score.retrieval=ann", "score.candidates=300", "score.ann_nlist=4096", "score.ann_nprobe=32"]
    s = load_config(None, keys).score
    assert (s.retrieval, s.candidates, s.ann_nlist, s.ann_nprobe) == ("ann", 300, 4096, 32)
    assert Config().score.retrieval == "auto"  # exact where cheap: small catalogues keep their lists
    # ann_nprobe: auto (the default) measures the index on sampled users; a number fixes it.
    assert (Config().score.ann_nprobe, Config().score.ann_target_recall, Config().score.ann_tune_users) == (
        "auto", 0.98, 2000)
    assert Config().similar_items.ann_nprobe == "auto"
    with pytest.raises(ConfigError, match="score.ann_target_recall"):
        load_config(None, ["score.ann_target_recall=1.5"])


def test_score_device_loads_and_defaults_to_the_tasks_gpu_when_there_is_one():
    assert Config().score.device == "auto"
    assert load_config(None, ["score.device=cuda"]).score.device == "cuda"
    assert load_config(None, ["score.device=cpu"]).score.device == "cpu"


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["train.epochs"])


def test_replace_returns_a_new_validated_config():
    cfg = Config()
    other = cfg.replace(**{"train.epochs": 4})
    assert other.train.epochs == 4 and cfg.train.epochs == 100
    with pytest.raises(ConfigError):
        cfg.replace(**{"train.nope": 1})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["score.item_chunk=0"], "config key score.item_chunk: must be >= 1, got 0"),
        (["score.top_k=100000"], "config key score.top_k: must be <= 1000"),
        (["evaluate.k=0"], "config key evaluate.k: must be >= 1"),
        (["evaluate.k=500"], "config key evaluate.k: 500 is more than the evaluate.negatives=100"),
        (["evaluate.protocols=[sampled, leave-two-out]"], "config key evaluate.protocols"),
        (["sequences.segments.head_item_share=1.5"], "sequences.segments.head_item_share: must be <= 1"),
        (["sequences.max_len=2"], "sequences.max_len: must be >= 3"),
        (["train.dropout=1.0"], "train.dropout: must be < 1"),
        (["train.lr=0"], "train.lr: must be > 0"),
        (["train.heads=3"], "train.heads: train.hidden 128 is not divisible by 3 heads"),
        (["encode.pca_dim=32"], "encode.pca_dim: 32 differs from train.hidden=128"),
        (["score.hybrid.mmr_lambda=0.5", "score.top_k=200"], "score.hybrid.mmr_candidates"),
        (["spark.driver_memory=lots"], "spark.driver_memory"),
        (["encode.item_template={title"], "encode.item_template: not a valid template"),
        (["vacuum.retention_hours=0.5"], "vacuum.retention_hours: must be >= 1"),
        (["vacuum.keep_models=0"], "vacuum.keep_models: must be >= 1"),
        (["warehouse="], "warehouse: must not be empty"),
        (["ingest.max_bad_rows=-1"], "ingest.max_bad_rows: must be >= 0"),
        (["score.retrieval=fast"], "score.retrieval"),
        (["score.candidates=0"], "score.candidates: must be >= 1"),
        (["score.ann_nprobe=0"], "score.ann_nprobe: must be >= 1"),
        (["score.ann_nlist=-1"], "score.ann_nlist: must be >= 0"),
        (["score.device=gpu"], "score.device"),
        (["train.item_updates=lazy"], "train.item_updates"),
        (["train.item_updates=sparse", "train.loss=ce"], "train.item_updates: sparse updates only the item rows"),
        (["train.item_updates=sparse", "train.weight_decay=0.01"], "train.item_updates: sparse"),
    ],
)
def test_bad_settings_fail_at_load_with_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_pca_dim_may_differ_for_models_without_the_pca_map():
    cfg = load_config(None, ["encode.pca_dim=32", "train.model=sasrec"])
    assert cfg.encode.pca_dim == 32
    # Without the PCA initialisation an llmesr model still places text-only items through the map.
    with pytest.raises(ConfigError, match="encode.pca_dim: 32 differs"):
        load_config(None, ["encode.pca_dim=32", "train.pca_init=false"])
    from longtail.core.config import check_model

    with pytest.raises(ConfigError, match="llmesr_gru4rec"):
        check_model(cfg, "llmesr_gru4rec")


def test_sections_built_in_code_are_type_checked_but_ranges_wait_for_loading():
    import dataclasses

    from longtail.core.config import ScoreConfig, TrainConfig
    from pydantic import ValidationError

    assert ScoreConfig(item_chunk=0).item_chunk == 0  # each stage checks what it uses
    with pytest.raises(ValidationError):
        TrainConfig(epochs="many")
    cfg = Config()
    assert dataclasses.replace(cfg.train, epochs=3).epochs == 3
    assert dataclasses.asdict(cfg)["score"]["top_k"] == 10
    assert hash(cfg.train) == hash(TrainConfig())


def test_spark_properties_are_strings():
    cfg = load_config(None, ["spark.conf={spark.sql.shuffle.partitions: 4, spark.python.worker.reuse: true}"])
    assert cfg.spark.conf == {"spark.sql.shuffle.partitions": "4", "spark.python.worker.reuse": "true"}
