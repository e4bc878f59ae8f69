"""One typed configuration object, built from YAML plus ``--set`` overrides.

Configuration flows one way: ``conf/*.yaml`` -> :func:`load_config` -> :class:`Config`
-> library functions take the sections or values they need as arguments.
Unknown keys and values of the wrong type are errors that name the dotted key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from longtail.core.errors import ConfigError

# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class SparkConfig:
    #: ``local[N]`` for the embedded default; ``null`` to use the session a cluster
    #: manager or Databricks already built (spark-submit, notebooks).
    master: str | None = "local[2]"
    app_name: str = "longtail"
    driver_memory: str = "4g"
    shuffle_partitions: int = 8
    arrow_max_records_per_batch: int = 2048
    #: Extra Spark properties, passed through as they are.
    conf: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeltaConfig:
    #: ``auto``: native delta-spark when its classes are on the classpath, else delta-rs.
    engine: Literal["auto", "native", "delta-rs"] = "auto"


@dataclass(frozen=True)
class IngestConfig:
    #: How many malformed rows may be skipped (and reported) before ingest fails.
    max_bad_rows: int = 0


@dataclass(frozen=True)
class SegmentConfig:
    #: ``pareto``: the ``head_item_share`` most popular items and the ``head_user_share``
    #: longest-history users are head; ``threshold``: tail if count < threshold
    #: (LLM-ESR's ``ts_item``/``ts_user``); ``share``: head items (users) are the most
    #: popular (longest) ones that together hold ``head_interaction_share`` of interactions.
    method: Literal["pareto", "threshold", "share"] = "pareto"
    head_item_share: float = 0.2
    head_user_share: float = 0.2
    #: ``threshold`` rule: an item is tail if its training popularity < item_threshold.
    item_threshold: int = 4
    #: ``threshold`` rule: a user is tail if their whole filtered history is shorter. LLM-ESR
    #: counts train + valid (one fewer), so its ``ts_user = 9`` is ``user_threshold: 10`` here.
    user_threshold: int = 10
    head_interaction_share: float = 0.8


@dataclass(frozen=True)
class SequencesConfig:
    #: Keep only interactions with rating >= this (None keeps all, implicit feedback).
    min_rating: float | None = None
    k_core: int = 5
    max_len: int = 200
    segments: SegmentConfig = field(default_factory=SegmentConfig)


@dataclass(frozen=True)
class EncodeConfig:
    #: A local Hugging Face model directory, or ``minilm`` for the bundled all-MiniLM-L6-v2.
    model: str = "minilm"
    #: ``auto`` picks from the model type: mean for encoders, last-token for decoder LLMs.
    pooling: Literal["auto", "mean", "last_token", "cls"] = "auto"
    normalize: bool = True
    batch_size: int = 64
    max_tokens: int = 128
    #: ``auto``: the GPU Spark assigned to the task when there is one, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    item_template: str = "{title}. Brand: {brand}. Categories: {categories}. {description}"
    user_template: str = "The user bought these items, most recent last: {titles}"
    #: How many of the user's most recent training items go into the user text.
    user_history_items: int = 50
    #: Keep the last N characters of the user text (LLM-ESR keeps 8000).
    user_max_chars: int = 8000
    #: Dimension of the PCA-reduced item embedding that initialises the collaborative view.
    pca_dim: int = 64


@dataclass(frozen=True)
class NeighborsConfig:
    top_n: int = 10
    #: Users per block in the exact blockwise search; bounds memory per task.
    block_size: int = 2048
    method: Literal["exact", "faiss"] = "exact"


@dataclass(frozen=True)
class TrainConfig:
    model: str = "llmesr_sasrec"
    epochs: int = 200
    patience: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    hidden: int = 64
    max_len: int = 200
    dropout: float = 0.5
    layers: int = 2
    heads: int = 1
    #: Self-distillation weight (MSE towards the similar users' mean representation).
    alpha: float = 0.1
    #: How many of each user's retrieved similar users the distillation uses.
    distill_neighbors: int = 10
    cross_attention: bool = True
    #: LLM-ESR ablations: ``semantic_view: false`` keeps only the collaborative view (no
    #: cross-attention); ``pca_init: false`` starts the collaborative view at random.
    semantic_view: bool = True
    pca_init: bool = True
    bert_mask_prob: float = 0.6
    #: Objective: ``bce`` (the paper: one sampled negative per position), ``ce`` (softmax over
    #: the whole catalogue) or ``sampled_softmax`` (``negatives`` shared negatives per batch).
    #: Bert4Rec applies the same choice at its masked positions.
    loss: Literal["bce", "ce", "sampled_softmax"] = "bce"
    #: Items per block of the ``ce`` log-partition (bounds memory to positions x chunk).
    ce_item_chunk: int = 16384
    #: Score = ``dot(u, v) / temperature`` or, with ``cosine``, the cosine / temperature.
    similarity: Literal["dot", "cosine"] = "dot"
    temperature: float = 1.0
    #: ``sampled_softmax``: negatives per batch, their draw (``uniform`` or ``popularity``) and
    #: the logQ correction (subtract the log probability of the draw from every logit).
    negatives: int = 256
    negative_sampling: Literal["uniform", "popularity"] = "uniform"
    logq: bool = False
    #: Model selection: ``full`` (validation item against the whole catalogue minus the user's
    #: training items) or ``sampled`` (against ``evaluate.negatives`` unseen items).
    validate: Literal["full", "sampled"] = "sampled"
    #: Distillation targets: ``step`` (encode the similar users' histories in every step) or
    #: ``epoch`` (every user's representation once per epoch, from the weights at its start).
    teachers: Literal["step", "epoch"] = "step"
    #: Torch threads per process; 0: the default of the mode.
    threads: int = 0
    seed: int = 42
    #: ``single``: one process in the driver; ``local``: TorchDistributor with
    #: ``processes`` ranks on the driver; ``cluster``: one rank per Spark task slot / GPU.
    mode: Literal["single", "local", "cluster"] = "single"
    processes: int = 1
    use_gpu: bool = False
    #: Validate every N epochs (NDCG@10 on the validation item).
    eval_every: int = 1


@dataclass(frozen=True)
class EvaluateConfig:
    negatives: int = 100
    seed: int = 42
    k: int = 10
    #: Cut-off of the full protocol's recall (``recall@N`` in the report).
    recall_at: int = 20
    protocols: list[str] = field(default_factory=lambda: ["sampled", "full"])
    #: ALS baseline settings (Spark MLlib).
    als_rank: int = 64
    als_max_iter: int = 10
    als_reg: float = 0.1
    #: Users per batch and items per matrix product in each task (bounds memory).
    user_batch: int = 1024
    item_chunk: int = 8192


@dataclass(frozen=True)
class HybridConfig:
    """Optional blend of model, ALS and content scores; off by default."""

    model_weight: float = 1.0
    als_weight: float = 0.0
    content_weight: float = 0.0
    #: MMR re-rank for diversity: None is off; 1.0 is pure relevance.
    mmr_lambda: float | None = None
    #: Candidates kept per user before the MMR re-rank.
    mmr_candidates: int = 100


@dataclass(frozen=True)
class ScoreConfig:
    top_k: int = 10
    #: Items scored per matrix product; bounds memory per task.
    item_chunk: int = 8192
    user_batch: int = 1024
    hybrid: HybridConfig = field(default_factory=HybridConfig)


@dataclass(frozen=True)
class DemoConfig:
    users: int = 2000
    items: int = 800
    seed: int = 7
    #: The demo caps training epochs so it finishes in a few minutes on a laptop.
    train_epochs: int = 15


@dataclass(frozen=True)
class Config:
    warehouse: str = "./warehouse"
    spark: SparkConfig = field(default_factory=SparkConfig)
    delta: DeltaConfig = field(default_factory=DeltaConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    sequences: SequencesConfig = field(default_factory=SequencesConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    neighbors: NeighborsConfig = field(default_factory=NeighborsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)

    def replace(self, **overrides: Any) -> "Config":
        """A copy with dotted-key overrides applied, e.g. ``replace(**{"train.epochs": 3})``."""
        data = to_dict(self)
        for key, value in overrides.items():
            _set_dotted(data, key, value)
        return from_dict(data)


# --------------------------------------------------------------------------- loading

#: The embedded default, next to the package in a source checkout or editable install.
DEFAULT_CONF = Path(__file__).resolve().parents[3] / "conf" / "local.yaml"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build the :class:`Config` from a YAML file and ``KEY=VALUE`` overrides.

    Args:
        path: YAML file; None uses the embedded default ``conf/local.yaml``
            (or the built-in defaults it mirrors when the package is installed without it).
        overrides: ``dotted.key=value`` strings; values are parsed as YAML scalars.

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: the file is missing or not a mapping, a key is unknown, or a value
            has the wrong type; the message names the file or dotted key.
    """
    data: dict[str, Any] = {}
    if path is None and DEFAULT_CONF.exists():
        path = DEFAULT_CONF
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p}: not found")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: top level must be a mapping")
        data = loaded
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key.strip(), value)
    return from_dict(data)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts (for saving next to a model, or printing)."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> Config:
    """Validate nested dicts into a :class:`Config`; see :func:`load_config` for errors."""
    return _build(Config, data, "")


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key {'.'.join(parts[: i + 1])}: is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key {where}: expected a section (mapping), got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"config key {prefix}{unknown[0]}: unknown (known keys here: {', '.join(sorted(names))})"
        )
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"config key {key}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key {key}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {key}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key}: expected a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"config key {key}: unsupported type {tp}")  # pragma: no cover
