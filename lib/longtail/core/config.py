"""One typed configuration object, built from YAML plus ``--set`` overrides.

Configuration flows one way: ``conf/*.yaml`` -> :func:`load_config` -> :class:`Config`
-> library functions take the sections or values they need as arguments.

Sections are frozen dataclasses validated by pydantic: a value of the wrong type is an error
wherever a section is built. Ranges (``Positive``, ``Share``, ...) and the checks across
sections (:func:`check_config`) apply when a config is *loaded* (:func:`load_config`,
:func:`from_dict`, :meth:`Config.replace`), before Spark starts; a section built in code is only
type-checked, and each stage still checks the values it uses. Every error is one
:class:`~longtail.core.errors.ConfigError` line naming the dotted key.
"""
from __future__ import annotations

import dataclasses
import re
import reprlib
import string
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BeforeValidator, ConfigDict, ValidationError, ValidationInfo
from pydantic.dataclasses import dataclass
from pydantic_core import ArgsKwargs

from longtail.core.errors import ConfigError

#: The largest K anything ranks (``score.top_k``, ``--top-k``, ``evaluate.k``, ``evaluate.recall_at``).
MAX_K = 1000
#: Below this, ``longtail vacuum`` could delete the files of a write still in progress.
MIN_RETENTION_HOURS = 1.0
#: Model names a ``llmesr_`` prefix marks as dual-view (their PCA view has ``train.hidden`` dimensions).
DUAL_VIEW_PREFIX = "llmesr_"

_LOADING = "longtail-load"


def section(cls: type) -> type:
    """A frozen config section: a dataclass whose fields pydantic type-checks (strictly: no
    ``"3"`` for an int, no ``2.5`` for an int, no ``1`` for a bool; an int is a fine float; no
    NaN or infinity, which YAML reads as floats but no setting means)."""
    return dataclass(frozen=True, config=ConfigDict(extra="forbid", strict=True, allow_inf_nan=False))(cls)


def _range(ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None):
    """A range checked when a config is loaded (see the module doc)."""
    words = [(ge, ">=", lambda v, b: v >= b), (gt, ">", lambda v, b: v > b),
             (le, "<=", lambda v, b: v <= b), (lt, "<", lambda v, b: v < b)]

    def check(value: Any, info: ValidationInfo) -> Any:
        if value is None or not (info.context or {}).get(_LOADING):
            return value
        for bound, word, ok in words:
            if bound is not None and not ok(value, bound):
                raise ValueError(f"must be {word} {bound:g}, got {_show(value)}")
        return value

    return AfterValidator(check)


def _at_load(check):
    def run(value: Any, info: ValidationInfo) -> Any:
        if value is not None and (info.context or {}).get(_LOADING):
            check(value)
        return value

    return AfterValidator(run)


def _memory(value: str) -> None:
    if not re.fullmatch(r"\d+[kmgtp]?b?", value.strip().lower()):
        raise ValueError(f"expected a JVM memory size such as 4g or 2048m, got {value!r}")


def _template(value: str) -> None:
    try:
        fields = [name for _, name, spec, conv in string.Formatter().parse(value) if name is not None]
    except ValueError as exc:
        raise ValueError(f"not a valid template ({exc}): {value!r}") from None
    if any(not name.isidentifier() for name in fields):
        raise ValueError(f"fields are plain names such as {{title}}, got {value!r}")


def _protocols(value: list[str]) -> None:
    unknown = [p for p in value if p not in ("sampled", "full")]
    if unknown or not value:
        raise ValueError(f"expected a non-empty list of sampled and/or full, got {value!r}")


def _sources(value: list[str]) -> None:
    unknown = [p for p in value if p not in ("collaborative", "semantic", "blend")]
    if unknown or not value:
        raise ValueError(f"expected a non-empty list of collaborative, semantic and/or blend, got {value!r}")


def _non_empty(value: str) -> None:
    if not value.strip():
        raise ValueError("must not be empty")


def _strings(value: Any) -> Any:
    """Spark properties as strings (YAML makes ``8`` an int and ``true`` a bool). Only scalars:
    a list, mapping or null is left for the type check to name, not passed on as its repr."""
    if not isinstance(value, dict):
        return value
    return {str(k): (str(v).lower() if isinstance(v, bool) else str(v) if isinstance(v, (str, int, float)) else v)
            for k, v in value.items()}


Positive = Annotated[int, _range(ge=1)]
NonNegative = Annotated[int, _range(ge=0)]
Seed = Annotated[int, _range(ge=0, lt=2**32)]
TopK = Annotated[int, _range(ge=1, le=MAX_K)]
#: A sequence must hold train, validation and test items.
SeqLen = Annotated[int, _range(ge=3)]
PositiveFloat = Annotated[float, _range(gt=0)]
NonNegativeFloat = Annotated[float, _range(ge=0)]
Retention = Annotated[float, _range(ge=0)]
Share = Annotated[float, _range(ge=0, le=1)]
Probability = Annotated[float, _range(gt=0, le=1)]
Dropout = Annotated[float, _range(ge=0, lt=1)]
#: Strictly between 0 and 1 (a factor that lowers something).
Fraction = Annotated[float, _range(gt=0, lt=1)]
#: 0 (off) or a decay below 1.
Decay = Annotated[float, _range(ge=0, lt=1)]
Memory = Annotated[str, _at_load(_memory)]
Template = Annotated[str, _at_load(_template)]
Protocols = Annotated[list[str], _at_load(_protocols)]
Sources = Annotated[list[str], _at_load(_sources)]
NonEmpty = Annotated[str, _at_load(_non_empty)]
StringMap = Annotated[dict[str, str], BeforeValidator(_strings)]

# --------------------------------------------------------------------------- sections


@section
class SparkConfig:
    #: ``local[N]`` for the embedded default; ``null`` to use the session a cluster
    #: manager or Databricks already built (spark-submit, notebooks).
    master: str | None = "local[2]"
    #: Spark Connect instead of a classic session: ``local[N]`` (or ``local-cluster[...]``) starts a
    #: Connect server on this machine, ``sc://host:port`` connects to a running one; None: classic.
    remote: str | None = None
    app_name: str = "longtail"
    driver_memory: Memory = "4g"
    shuffle_partitions: Positive = 8
    arrow_max_records_per_batch: Positive = 2048
    #: Extra Spark properties, passed through as they are.
    conf: StringMap = field(default_factory=dict)


@section
class DeltaConfig:
    #: ``auto``: native delta-spark when its classes are on the classpath, else delta-rs.
    engine: Literal["auto", "native", "delta-rs"] = "auto"


@section
class IngestConfig:
    #: How many malformed rows may be skipped (and reported) before ingest fails.
    max_bad_rows: NonNegative = 0


@section
class SegmentConfig:
    #: ``pareto``: the ``head_item_share`` most popular items and the ``head_user_share``
    #: longest-history users are head; ``threshold``: tail if count < threshold
    #: (LLM-ESR's ``ts_item``/``ts_user``); ``share``: head items (users) are the most
    #: popular (longest) ones that together hold ``head_interaction_share`` of interactions.
    method: Literal["pareto", "threshold", "share"] = "pareto"
    head_item_share: Share = 0.2
    head_user_share: Share = 0.2
    #: ``threshold`` rule: an item is tail if its training popularity < item_threshold.
    item_threshold: NonNegative = 4
    #: ``threshold`` rule: a user is tail if their whole filtered history is shorter. LLM-ESR
    #: counts train + valid (one fewer), so its ``ts_user = 9`` is ``user_threshold: 10`` here.
    user_threshold: NonNegative = 10
    head_interaction_share: Share = 0.8


@section
class SequencesConfig:
    #: Keep only interactions with rating >= this (None keeps all, implicit feedback).
    min_rating: float | None = None
    k_core: Positive = 5
    max_len: SeqLen = 200
    segments: SegmentConfig = field(default_factory=SegmentConfig)
    #: Interactions (after the rating threshold) up to which the stage runs on the driver in pandas:
    #: the same tables as the distributed path, without its 60-70 Spark jobs of fixed cost (5-13 s
    #: on 3,000 rows). Above it (and with 0) every step runs in Spark. 1M rows hold ~150 MB on the driver.
    local_max_rows: NonNegative = 1_000_000


@section
class EncodeConfig:
    #: A local Hugging Face model directory, or ``minilm`` for the bundled all-MiniLM-L6-v2.
    model: str = "minilm"
    #: ``auto`` picks from the model type: mean for encoders, last-token for decoder LLMs.
    pooling: Literal["auto", "mean", "last_token", "cls"] = "auto"
    normalize: bool = True
    batch_size: Positive = 64
    max_tokens: Positive = 128
    #: ``auto``: the GPU Spark assigned to the task when there is one, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Weights and activations of the text model: ``auto`` is float16 on a GPU, bfloat16 on a CPU
    #: with bfloat16 matrix units (AMX or AVX512-BF16) and float32 on other CPUs. On a 2-core
    #: AMX CPU bfloat16 encodes 3x faster than float32 at mean cosine 0.9999 to the float32
    #: embeddings (benchmarks/encode.py --options); int8 quantisation lost too much (cosine 0.93).
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    item_template: Template = "{title}. Brand: {brand}. Categories: {categories}. {description}"
    #: ``{titles}``: the user's recent items by title; an item without a title is named by its
    #: item text (``item_template``), so a catalogue with thin text still gets user texts.
    user_template: Template = "The user bought these items, most recent last: {titles}"
    #: How many of the user's most recent training items go into the user text.
    user_history_items: Positive = 50
    #: Keep the last N characters of the user text (LLM-ESR keeps 8000).
    user_max_chars: Positive = 8000
    #: Dimension of the PCA-reduced item embedding that initialises the collaborative view; it must
    #: equal ``train.hidden`` for the ``llmesr_`` models (128 with it: see there).
    pca_dim: Positive = 128
    #: Whether ``longtail encode`` also encodes the user texts (``user_embeddings``). Only
    #: ``neighbors`` reads them (for the distillation, ``train.alpha`` > 0), and on Beauty they are
    #: four fifths of the encode time; ``encode --no-users`` overrides it per run. ``run`` decides by
    #: itself (only when training reads similar users).
    users: bool = True


@section
class NeighborsConfig:
    top_n: Positive = 10
    #: Users per block in the exact blockwise search; bounds memory per task.
    block_size: Positive = 2048
    #: ``exact``: blockwise, every pair (quadratic). ``ivf``: inverted lists fitted on a sample,
    #: each user searched against the members of its ``ivf_probe`` nearest lists in Spark tasks,
    #: nothing per user on the driver (approximate; exact when ``ivf_probe`` >= the lists).
    #: ``faiss``: one HNSW index of every user on the driver (approximate, driver-bound).
    #: ``auto``: exact up to 250,000 users (Beauty and the demo keep their lists), ivf above
    #: (``longtail.stages.neighbors.EXACT_MAX_USERS``, docs/scaling.md).
    method: Literal["auto", "exact", "ivf", "faiss"] = "auto"
    #: ivf: inverted lists (0: ``round(4 sqrt(users))``, which balances the assignment's and the
    #: search's cost at ``ivf_probe`` 16).
    ivf_lists: NonNegative = 0
    #: ivf: lists each user is searched against (its own and the next nearest); more is closer
    #: to exact and slower (cost about ``ivf_probe x users / ivf_lists`` similarities per user).
    ivf_probe: Positive = 16
    #: ivf: at most this many users (a seeded hash sample) fit the lists' centroids on the
    #: driver, which holds ``ivf_sample x dim`` floats (384 MiB at 262,144 x 384); the automatic
    #: ``ivf_lists`` keeps 16 or more of them per list.
    ivf_sample: Positive = 262_144


@section
class TrainConfig:
    model: str = "llmesr_sasrec"
    #: A cap: training stops earlier when validation NDCG@10 has not improved for ``patience``
    #: validations. With the averaged weights (``weight_average``) the validation curve is smooth: over
    #: the 12 averaged runs of both models on Beauty and Sports (benchmarks/README.md, "Tenth round") a new
    #: best never came more than 2 validations after the previous one, so 4 (5 before the average: 4 of 93
    #: runs with the last step's weights found a new best 5 validations later; the paper's 200 / 20 in
    #: conf/paper.yaml spends 20 epochs after the best on every run).
    epochs: Positive = 100
    patience: Positive = 4
    batch_size: Positive = 128
    lr: PositiveFloat = 1e-3
    #: Linear warm-up of the learning rate over this many optimiser steps (0: none).
    lr_warmup_steps: NonNegative = 0
    #: ``plateau``: multiply the learning rate by ``lr_decay_factor`` whenever ``lr_decay_patience``
    #: validations in a row did not beat the best (keep it below ``patience``); ``none``: constant.
    lr_decay: Literal["none", "plateau"] = "none"
    lr_decay_factor: Fraction = 0.5
    lr_decay_patience: Positive = 2
    weight_decay: NonNegativeFloat = 0.0
    #: Adam's second-moment decay (its ``beta2``; ``beta1`` is 0.9): 0.98 as in SASRec's own code, not
    #: torch's 0.999 (the official LLM-ESR code's, kept in conf/paper.yaml). A shorter memory of each
    #: weight's gradient scale: on validation +4.3% NDCG@10 for ``llmesr_sasrec`` on Beauty (3 seeds,
    #: every seed above) and on Sports (+5.3%, 2 seeds); ``sasrec`` gains as much or more (benchmarks/
    #: README.md, "Eighth round").
    adam_beta2: Fraction = 0.98
    #: Validate and keep an exponential moving average of the trained weights instead of the last step's
    #: (Polyak averaging; ``models.optim.WeightAverage``): each step keeps this share of the average (0.995:
    #: about the last 200 steps, one Beauty epoch at batch 128; lowered where that spans more than two epochs
    #: of a small catalogue's steps). 0: off, the last step's weights (conf/paper.yaml). 0.995 lifted
    #: validation NDCG@10 of ``llmesr_sasrec`` on every seed of both catalogues (Beauty +2.1%, Sports +2.8%,
    #: 3 seeds; ``sasrec`` more: benchmarks/README.md, "Ninth round", "Tenth round"). Costs a copy of the
    #: trainable weights and a pass over them per step (0.4 ms against a Beauty step of about 140 ms; with
    #: row-wise item updates on a large catalogue that pass is what the sparse step avoids).
    weight_average: Decay = 0.995
    #: Width of every item and user vector (the dual view scores ``2 x hidden``). 128, not 64 (the
    #: paper's): ``llmesr_sasrec`` gained on validation on Beauty (+3.1%, 3 seeds) and on Sports (thin
    #: text; +1.3%, 3 seeds), with more tail items in its lists; ``sasrec`` stayed level (its semantic view
    #: passes 128 of the LLM's 384 dimensions on, an ID table gains nothing). A Beauty ``train`` takes
    #: 1.9x the previous default's time, the issue's budget being 2x (benchmarks/README.md, issue 26).
    #: Item tables and scoring costs grow with it (docs/scaling.md: 64 for a 10M-item catalogue).
    hidden: Positive = 128
    max_len: Positive = 200
    dropout: Dropout = 0.5
    layers: Positive = 2
    heads: Positive = 1
    #: Self-distillation weight (MSE towards the similar users' mean representation); 0 turns it off.
    #: Off by default: on Beauty under full ranking (2 seeds) it left NDCG@10 as it was and cost a tenth
    #: of the tail-item HR@10 and tail coverage (benchmarks/README.md); on Sports (thin text, seed 42) it was
    #: level on validation (.0429 against .0428) in 3 more epochs ("Tenth round"); the paper's 0.1 is in
    #: conf/paper.yaml.
    alpha: NonNegativeFloat = 0.0
    #: How many of each user's retrieved similar users the distillation uses.
    distill_neighbors: NonNegative = 10
    #: The paper's fusion: each view's sequence attends over the other's before the shared encoder.
    #: Off by default: at the scored position it replaces the last item by a mixture of the history,
    #: and on Beauty the dual view without it beat it on validation, also with the residual kept
    #: (``cross_residual: 1``; benchmarks/README.md). conf/paper.yaml turns it on.
    cross_attention: bool = False
    #: Weight of each view's own sequence added to the cross-attention output (``Attn + w * x``):
    #: 0 (or false) is the paper's fusion, which replaces item t by a mixture of the history up to t;
    #: 1 (or true) keeps each item's identity and adds what the other view says.
    cross_residual: NonNegativeFloat | bool = 0.0
    #: LLM-ESR's views: ``semantic_view: true`` (the default, the paper's model) scores with the
    #: frozen-LLM semantic view and the collaborative view (initialised from the PCA of the LLM
    #: item embeddings) side by side; ``false`` keeps the collaborative view alone. With the
    #: fusion off (``cross_attention: false``) the dual view won on validation on Beauty (rich text)
    #: and on Sports (thin text) over 3 seeds each (benchmarks/README.md, issue 26). ``pca_init:
    #: false`` starts the collaborative view at random.
    semantic_view: bool = True
    #: ``popularity``: with both views, a learned weight per view and per popularity bucket
    #: (log2 of the training count) on the item side of the score, so that rarely seen items can
    #: lean on the semantic view and popular ones on the collaborative view; ``none``: equal weights.
    view_gate: Literal["none", "popularity"] = "none"
    pca_init: bool = True
    #: Scale of the PCA table that initialises the collaborative view: ``raw`` (as encoded, the
    #: paper) or ``backbone`` (rescaled to the spread of the backbone's random init).
    pca_init_scale: Literal["raw", "backbone"] = "raw"
    #: Centre and scale the frozen LLM table per dimension before the adapter.
    llm_standardize: bool = False
    bert_mask_prob: Probability = 0.6
    #: Objective: ``sampled_softmax`` (``negatives`` shared negatives per batch; the default: on
    #: Beauty it nearly doubles SASRec's full-catalogue HR@10 over ``bce`` at a quarter of ``ce``'s
    #: cost), ``ce`` (softmax over the whole catalogue) or ``bce`` (the paper: one sampled negative
    #: per position; paper reproduction, see conf/paper.yaml). Bert4Rec applies the same choice at
    #: its masked positions.
    loss: Literal["bce", "ce", "sampled_softmax"] = "sampled_softmax"
    #: Items per block of the ``ce`` log-partition (bounds memory to positions x chunk).
    ce_item_chunk: Positive = 16384
    #: Score = ``dot(u, v) / temperature`` or, with ``cosine``, the cosine / temperature.
    similarity: Literal["dot", "cosine"] = "dot"
    temperature: PositiveFloat = 1.0
    #: ``sampled_softmax``: negatives per batch, their draw (``uniform`` or ``popularity``) and
    #: the logQ correction (subtract the log probability of the draw from every logit).
    #: 4,096 (not 1,024): on Beauty and Sports the more negatives, the higher validation NDCG@10 for
    #: every model, at about the same epoch time on CPU (benchmarks/README.md, issue 26).
    negatives: Positive = 4096
    negative_sampling: Literal["uniform", "popularity"] = "popularity"
    logq: bool = True
    #: Model selection: ``full`` (validation item against the whole catalogue minus the user's
    #: training items) or ``sampled`` (against ``evaluate.negatives`` unseen items).
    validate: Literal["full", "sampled"] = "full"
    #: Distillation targets: ``step`` (encode the similar users' histories in every step) or
    #: ``epoch`` (every user's representation once per epoch, from the weights at its start).
    teachers: Literal["step", "epoch"] = "epoch"
    #: Length bucketing: sort each window of this many shuffled batches by history length, so a
    #: batch holds similar lengths and is encoded in one pass (0: off). Faster on CPU.
    length_buckets: NonNegative = 50
    #: Torch threads per process; 0: the default of the mode.
    threads: NonNegative = 0
    seed: Seed = 42
    #: ``single``: one process in the driver; ``local``: TorchDistributor with
    #: ``processes`` ranks on the driver; ``cluster``: one rank per Spark task slot / GPU.
    mode: Literal["single", "local", "cluster"] = "single"
    processes: Positive = 1
    use_gpu: bool = False
    #: Validate every N epochs (NDCG@10 on the validation item).
    eval_every: Positive = 1
    #: Validate on a seeded sample of this many users when there are more (None: all). Rank 0
    #: ranks them against the whole catalogue every validation; the sample bounds that cost on
    #: large catalogues (docs/scaling.md). Beauty's 22,363 users are all validated.
    validation_users: Positive | None = 100_000
    #: Arithmetic of the training steps' forward and backward passes: ``float32``, ``bfloat16``
    #: (torch autocast: matrix products in bfloat16 with float32 weights, Adam state, softmax and
    #: norms; about 2.7x faster products on a CPU with bfloat16 units) or ``auto`` (bfloat16 where
    #: the device has bfloat16 units: AMX or AVX512-BF16 CPUs, GPUs that support it; float32
    #: elsewhere, where bfloat16 is emulated and slower). Validation, the exposure calibration and
    #: every served score stay float32; the model's metrics record what ran.
    precision: Literal["auto", "float32", "bfloat16"] = "float32"
    #: How Adam updates the item tables: ``dense`` (every row, every step), ``sparse`` (only the rows
    #: a step touched: a lazy Adam, whose step costs the same at any catalogue size) or ``auto``
    #: (sparse on CPU from 100,000 items, ``longtail.models.optim``; dense on GPUs). At 1M items a
    #: CPU step is several times cheaper sparse (docs/scaling.md). Needs a step that builds only the
    #: rows it touches: not with ``loss: ce``, ``view_gate: popularity`` or ``weight_decay`` > 0.
    item_updates: Literal["auto", "dense", "sparse"] = "auto"
    #: Largest L2 norm of the gradient per step (0: no clipping). Without it GRU4Rec with the sampled
    #: softmax diverged to NaN after 17-22 epochs on Beauty; the history records the clipped steps.
    grad_clip: NonNegativeFloat = 5.0
    #: After training, the serving-time exposure adjustment (``score.popularity_penalty: model``)
    #: is chosen on the validation items under full ranking: scores minus ``penalty x bias`` per
    #: item, the largest penalty of a fixed grid whose validation NDCG@10 stays within this
    #: relative tolerance of the unadjusted model's. 0 keeps the model unadjusted.
    exposure_tolerance: Share = 0.02
    #: The item bias: ``hubness`` (the mean of the item's 10 highest scores over the validation
    #: users: lowers items that top very many lists, so the lists spread over more distinct
    #: items) or ``popularity`` (``ln(1 + training count)``, a logit adjustment). On Beauty
    #: hubness gave both models a third more distinct tail items in their lists than popularity at
    #: the same tolerance and equal NDCG@10 (benchmarks/README.md).
    exposure_adjustment: Literal["hubness", "popularity"] = "hubness"
    #: Start from the newest registered version of the same model (``longtail train --warm-start``):
    #: its weights, its item rows carried by item_id (new items placed from their text through the
    #: PCA map), its Adam state when it saved one; then train until the usual early stopping. A
    #: version of another architecture is refused; with no version yet, training starts from
    #: scratch (so a scheduled first run works). On, the model also saves its Adam state
    #: (``optimizer.pt``) for the next warm start.
    warm_start: bool = False
    #: Patience of a run that did start from a previous version: it begins next to that version's
    #: best, so fewer validations without improvement are enough to stop (None: ``patience``).
    warm_start_patience: Positive | None = 2
    #: Learning rate of a run that did start from a previous version, as a share of ``lr`` (1: the
    #: same rate). That version stopped at its validation optimum; continued at the full rate it
    #: overshot within 2-4 epochs and ended below a from-scratch retrain, at half the rate it
    #: refined it and ended above (Beauty, 3 seeds, Adam beta2 0.999). With the 0.98 default it ends
    #: about 2.6% below on test NDCG@10 at half the rate (3 seeds; a quarter no better; benchmarks/README.md,
    #: "Warm start").
    warm_start_lr_factor: Probability = 0.5
    #: A warm start's epochs train on every user whose training history changed since the version it
    #: continues (new users included; the version keeps a fingerprint per user) and on this share of
    #: the others, a new seeded sample each epoch, so that they are not forgotten (1: every user, as a
    #: from-scratch epoch). Versions saved before the fingerprints count every user as changed.
    warm_start_replay: Share = 0.2
    #: The version a warm start continues: None (the newest registered version of the model), or a
    #: ``model_version`` of the ``models`` table, e.g. the one before a nightly run that went wrong.
    warm_start_version: NonEmpty | None = None


@section
class EvaluateConfig:
    negatives: Positive = 100
    seed: Seed = 42
    k: TopK = 10
    #: Cut-off of the full protocol's recall (``recall@N`` in the report).
    recall_at: TopK = 20
    protocols: Protocols = field(default_factory=lambda: ["sampled", "full"])
    #: ALS baseline settings (Spark MLlib).
    als_rank: Positive = 64
    als_max_iter: Positive = 10
    als_reg: NonNegativeFloat = 0.1
    #: Users per batch and items per matrix product in each task (bounds memory).
    user_batch: Positive = 1024
    item_chunk: Positive = 8192
    #: Users evaluated: where more users have a test item, a seeded sample of about this many
    #: (hashed on ``user_idx`` with ``seed``); null evaluates every user. The driver holds a few
    #: numbers per evaluated user, so this bounds its memory; the report's ``dataset.evaluated_users``
    #: says how many were ranked.
    max_users: Positive | None = 1_000_000


@section
class HybridConfig:
    """Optional blend of model, ALS and content scores; off by default."""

    model_weight: NonNegativeFloat = 1.0
    als_weight: NonNegativeFloat = 0.0
    content_weight: NonNegativeFloat = 0.0
    #: MMR re-rank for diversity: None is off; 1.0 is pure relevance.
    mmr_lambda: Share | None = None
    #: Candidates kept per user before the MMR re-rank.
    mmr_candidates: Positive = 100


@section
class ScoreConfig:
    top_k: TopK = 10
    #: Items scored per matrix product; bounds memory per task.
    item_chunk: Positive = 8192
    user_batch: Positive = 1024
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    #: Logit adjustment of a trained model's scores by item popularity (Menon et al., ICLR 2021):
    #: ``score - popularity_penalty * log(1 + training count)``, in ``score`` and ``evaluate`` alike.
    #: ``model`` (the default) takes the penalty the model chose on validation when it was trained
    #: (``train.exposure_tolerance``; 0 for models without one); a number sets it (0 is off).
    popularity_penalty: Literal["model"] | NonNegativeFloat = "model"
    #: How each user's top K is found. ``exact`` scores every rankable item (chunked matrix
    #: products). ``ann`` searches a faiss inner-product index of the served item vectors (the
    #: exposure adjustment and the hybrid blend included) for ``candidates`` items per user and
    #: ranks those exactly (the ``ann`` extra). ``auto``: exact up to 200,000 rankable items (the
    #: lists stay exactly what they were), ann above (``longtail.ranking.retrieval``, docs/scaling.md).
    retrieval: Literal["auto", "exact", "ann"] = "auto"
    #: Candidates per user from the index, each scored exactly: K (or ``hybrid.mmr_candidates`` with
    #: MMR) plus the items the user has seen are always asked for, this many when that is fewer. From
    #: 100,000 items the index holds 4-bit codes (IVF-PQ fast scan) and returns at least 100 whatever
    #: is asked; below, its lists hold the full vectors and recall is set by ``ann_nprobe`` alone.
    candidates: Positive = 100
    #: Inverted lists of the index; 0 chooses ``4 x sqrt(items)``, and a flat (exact) index when
    #: that leaves fewer than 39 items per list.
    ann_nlist: NonNegative = 0
    #: Lists scanned per user (more: closer to exact and slower; ``ann_nlist`` or more scans every
    #: item). ``auto``: measured when the index is built, on ``ann_tune_users`` sampled users (their
    #: exact lists against the index's, on the driver): the form of the lists (norm column or
    #: spherical k-means) and the fewest lists that reach ``ann_target_recall``; the run summary
    #: names the choice and its recall. Neither form nor a fixed count suits every model: at nprobe
    #: 64 the norm column gave recall@10 0.97 at 1M synthetic items and 0.89 on Beauty's trained
    #: model, where the spherical lists gave 0.95 (docs/scaling.md). A number skips the measurement.
    ann_nprobe: Literal["auto"] | Positive = "auto"
    #: Recall@10 of the served lists against exact ones that ``ann_nprobe: auto`` aims at.
    ann_target_recall: Probability = 0.98
    #: Users whose lists ``ann_nprobe: auto`` measures (a seeded hash sample; all when fewer).
    ann_tune_users: Positive = 2000
    #: Where each scoring task runs its matrix products and top-K merges. ``auto``: the GPU Spark
    #: assigned the task (``spark.task.resource.gpu.amount`` on GPU executors) when CUDA works
    #: there, else the CPU; ``cpu``: always the CPU; ``cuda``: the task's GPU, and an error when
    #: Spark assigns none (``longtail.inference.bundle.task_device``). The lists are the same.
    device: Literal["auto", "cpu", "cuda"] = "auto"


@section
class AvailabilityConfig:
    """Items that must not be recommended today (out of stock, withdrawn, not allowed in the market):
    read at the start of ``score`` and ``similar-items``, never ranked by either."""

    #: None: every item is available. Else a Delta table: a name in the warehouse (``availability``)
    #: or a path/URI (``s3a://bucket/availability``), with columns ``item_id`` string, ``available``
    #: boolean and optionally ``valid_from`` / ``valid_to`` (date or timestamp; from inclusive, to
    #: exclusive, null open). An item is unavailable on the run date when a row in force then says
    #: ``available`` false (or null); items without such a row are available.
    table: NonEmpty | None = None


@section
class SimilarItemsConfig:
    """``longtail similar-items``: the item -> items table (``similar_items``)."""

    #: A step of ``longtail run`` (after ``train``; its table feeds the evaluation's item-to-item figures).
    enabled: bool = True
    top_k: TopK = 10
    #: Which lists to write: ``collaborative`` (cosine of the trained model's item vectors),
    #: ``semantic`` (cosine of the LLM item embeddings: text-only items get and are neighbours) and
    #: ``blend`` (the weighted sum of both adjusted similarities, each z-scored per query item).
    sources: Sources = field(default_factory=lambda: ["collaborative", "semantic", "blend"])
    #: The blend's weights when ``semantic_weight`` is a number: ``collaborative_weight x z_c +
    #: semantic_weight x z_s`` (only their ratio changes the lists; a weight of 0 leaves that source
    #: out, and the blend's lists are then the other source's).
    collaborative_weight: NonNegativeFloat = 1.0
    #: ``auto``: chosen on validation pairs (a user's last training item -> the validation item; never
    #: a test item): of the semantic shares s in 0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1 (weights ``1 - s``
    #: and ``s``; ``collaborative_weight`` is not read; 0 and 1 are the two sources themselves), the one
    #: whose lists (hubness adjustment and availability as in the table) show the most tail items (the
    #: tail share of the lists of a sample of items) among the shares that hold the validation item in
    #: the top K within ``hr_tolerance`` of the best share; then more tail validation items, then the
    #: smaller share. The choice and every share's figures are in the run's report
    #: (``_reports/similar-items-<model>.json``, ``blend``).
    semantic_weight: Literal["auto"] | NonNegativeFloat = "auto"
    #: The relative item-to-item HR@K (validation) ``auto`` may give up to the best share for more
    #: tail items. On Beauty (validation) shares 0.05 and 0.1 were within 0.1% of the best with a higher
    #: tail share, 0.2 lost 1.8%: 0.005 keeps the lists' quality and leans to the long tail.
    hr_tolerance: Share = 0.005
    #: Validation pairs (a seeded hash sample of users, the same on every run) ``auto`` chooses on.
    weight_pairs: Positive = 20000
    #: Exposure adjustment: similarity minus ``hubness_penalty x hubness`` of the candidate (the mean of
    #: its 10 highest similarities to other items, CSLS), so the head does not fill every list; 0 is off.
    hubness_penalty: NonNegativeFloat = 0.5
    #: Items (a seeded sample where there are more) whose lists the hubness is measured on.
    hubness_queries: Positive = 5000
    #: Query items per batch and items per matrix product in each task (bound memory).
    item_batch: Positive = 1024
    item_chunk: Positive = 8192
    #: As ``score.retrieval``: ``auto`` is exact up to 200,000 items, a faiss index of candidates above.
    retrieval: Literal["auto", "exact", "ann"] = "auto"
    candidates: Positive = 100
    ann_nlist: NonNegative = 0
    #: As ``score.ann_nprobe``; ``auto`` measures on ``ann_tune_items`` sampled items' own lists.
    ann_nprobe: Literal["auto"] | Positive = "auto"
    ann_target_recall: Probability = 0.98
    ann_tune_items: Positive = 2000


@section
class DemoConfig:
    users: Positive = 2000
    items: Positive = 800
    seed: Seed = 7
    #: The demo caps training epochs so it finishes in a few minutes on a laptop.
    train_epochs: Positive = 15


@section
class VacuumConfig:
    """What ``longtail vacuum`` keeps (see ``docs/reliability.md``)."""

    #: Files no current table version needs (removed by a commit, or never committed: a killed
    #: write's) and scratch folders (``_tmp/``, ``_train/``, ``*.tmp-*``) are deleted once they
    #: are older than this. At least 1 hour, so that no write still in progress loses its files.
    retention_hours: Retention = 168.0
    #: Model versions kept per model (the latest by ``trained_at``); older folders are deleted.
    keep_models: Positive = 3


@section
class TrackingConfig:
    """MLflow tracking of ``train`` and ``evaluate`` (the ``mlflow`` extra); off by default."""

    mlflow: bool = False
    #: None: Databricks' tracking server when running there, else a file store in
    #: ``<warehouse>/_mlruns`` (local warehouses only); or any MLflow tracking URI.
    uri: str | None = None
    experiment: str = "longtail"
    #: Also register each trained model version in the MLflow model registry under its model name.
    register: bool = False


@section
class Config:
    warehouse: NonEmpty = "./warehouse"
    spark: SparkConfig = field(default_factory=SparkConfig)
    delta: DeltaConfig = field(default_factory=DeltaConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    sequences: SequencesConfig = field(default_factory=SequencesConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    neighbors: NeighborsConfig = field(default_factory=NeighborsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    availability: AvailabilityConfig = field(default_factory=AvailabilityConfig)
    similar_items: SimilarItemsConfig = field(default_factory=SimilarItemsConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    vacuum: VacuumConfig = field(default_factory=VacuumConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def replace(self, **overrides: Any) -> "Config":
        """A copy with dotted-key overrides applied, e.g. ``replace(**{"train.epochs": 3})``."""
        data = to_dict(self)
        for key, value in overrides.items():
            _set_dotted(data, key, value)
        return from_dict(data)


# --------------------------------------------------------------------------- loading

#: The embedded default, inside the package (``conf/local.yaml`` in the checkout links to it). Where
#: the package is not on a disk (a zip on ``--py-files``) the built-in defaults, equal to it, apply.
DEFAULT_CONF = Path(__file__).resolve().parents[1] / "conf" / "local.yaml"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build the :class:`Config` from a YAML file and ``KEY=VALUE`` overrides.

    Args:
        path: YAML file; None uses the embedded default ``conf/local.yaml``
            (or the built-in defaults it mirrors when the package is installed without it).
        overrides: ``dotted.key=value`` strings; values are parsed as YAML scalars.

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: the file is missing or not a mapping, a key is unknown, a value has the
            wrong type or is out of range, or two sections disagree; the message names the file
            or dotted key.
    """
    data: dict[str, Any] = {}
    if path is None and DEFAULT_CONF.exists():
        path = DEFAULT_CONF
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p}: not found")
        loaded = _read_yaml(p)
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
            value = yaml.load(raw, Loader=_Loader) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key.strip(), value)
    return from_dict(data)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, whose values that Python cannot build (an integer of more than 4,300
    digits, the date 2024-02-30) are YAML errors at their line instead of a bare ValueError."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read the value {_show(node.value)} ({exc})", node.start_mark
            ) from None


def _read_yaml(p: Path) -> Any:
    """The document of a YAML file; errors name the file and the line."""
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"config file {p}: not valid UTF-8 at line {line} (byte {raw[exc.start]:#04x})") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow: it has a position, not a line
        line = text.count("\n", 0, exc.position) + 1
        what = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
        raise ConfigError(f"config file {p}: not valid YAML at line {line}: {what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p}: not valid YAML: {_one_line(exc)}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts (for saving next to a model, or printing)."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> Config:
    """Validate nested dicts into a :class:`Config` (types, ranges, cross-section checks);
    see :func:`load_config` for errors."""
    cfg = _build(Config, data, "")
    check_config(cfg)
    return cfg


def check_config(cfg: Config) -> None:
    """Checks across sections, at load time (and by the CLI for the model it was given).

    Raises:
        ConfigError: naming both keys.
    """
    check_model(cfg, cfg.train.model)
    t, s, e = cfg.train, cfg.score, cfg.evaluate
    if t.hidden % t.heads:
        raise ConfigError(f"config key train.heads: train.hidden {t.hidden} is not divisible by {t.heads} heads")
    if t.item_updates == "sparse" and (t.loss == "ce" or t.view_gate == "popularity" or t.weight_decay > 0):
        raise ConfigError(
            "config key train.item_updates: sparse updates only the item rows a step touches, which "
            "train.loss=ce, train.view_gate=popularity and train.weight_decay > 0 do not allow; use auto or dense"
        )
    if s.hybrid.mmr_lambda is not None and s.hybrid.mmr_candidates < s.top_k:
        raise ConfigError(
            f"config key score.hybrid.mmr_candidates: {s.hybrid.mmr_candidates} candidates cannot fill "
            f"score.top_k={s.top_k} lists; set it to at least {s.top_k}"
        )
    if "sampled" in e.protocols and e.k > e.negatives:
        raise ConfigError(
            f"config key evaluate.k: {e.k} is more than the evaluate.negatives={e.negatives} sampled items "
            "it ranks against (every test item would be a hit)"
        )
    if cfg.vacuum.retention_hours < MIN_RETENTION_HOURS:
        raise ConfigError(
            f"config key vacuum.retention_hours: must be >= {MIN_RETENTION_HOURS:g} (a shorter retention could "
            f"delete the files of a write still in progress), got {cfg.vacuum.retention_hours:g}"
        )


def check_model(cfg: Config, model: str) -> None:
    """Settings that must agree for ``model`` (a dual-view ``llmesr_`` model, or any other).

    Raises:
        ConfigError: ``encode.pca_dim`` differs from ``train.hidden`` for an ``llmesr_`` model: its
            collaborative view places items through the encoder's PCA map (the initial table with
            ``pca_init``, and items known only from their text at scoring time, either way).
    """
    dual = model.startswith(DUAL_VIEW_PREFIX)
    if dual and cfg.encode.pca_dim != cfg.train.hidden:
        raise ConfigError(
            f"config key encode.pca_dim: {cfg.encode.pca_dim} differs from train.hidden={cfg.train.hidden}, but "
            f"{model} places items in its collaborative view through the PCA map; set both to the same value"
        )


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key {_dotted(parts[: i + 1])}: is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def _build(cls: type, data: Any, prefix: str) -> Any:
    """``cls`` from a mapping: sections first (depth first), then pydantic checks the fields."""
    where = prefix.rstrip(".") or "top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key {where}: expected a section (mapping), got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(k if isinstance(k, str) else _show(k) for k in set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"config key {prefix}{_dotted([unknown[0]])}: unknown (known keys here: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in data.items():
        sub = fields[name].type
        sub = _SECTIONS.get(sub, sub) if isinstance(sub, str) else sub
        kwargs[name] = _build(sub, value, f"{prefix}{name}.") if sub in _SECTIONS.values() else value
    instance = cls.__new__(cls)
    try:
        cls.__pydantic_validator__.validate_python(
            ArgsKwargs((), kwargs), self_instance=instance, context={_LOADING: True}
        )
    except ValidationError as exc:
        raise ConfigError(_message(exc, prefix)) from None
    return instance


def _message(exc: ValidationError, prefix: str) -> str:
    """The first pydantic error as ``config key a.b: what is wrong, got value``; of a union's
    errors for that key (``Literal["model"] | float``), a range error before a type error."""
    errors = exc.errors()
    key = _error_key(errors[0], prefix)
    same_key = [e for e in errors if _error_key(e, prefix) == key]
    error = next((e for e in same_key if e["type"] == "value_error"), errors[0])
    kind, value = error["type"], error.get("input")
    if kind == "value_error":
        what = str(error["msg"]).removeprefix("Value error, ")
        return f"config key {key}: {what}"
    expected = _EXPECTED.get(kind)
    if expected is None:
        expected = str(error["msg"]).replace("Input should be", "expected").replace("'", "")
    return f"config key {key}: {expected}, got {_show(value)}"


def _error_key(error: dict, prefix: str) -> str:
    # A location holds field names, list indexes and the tags of the union member tried
    # ("literal['model']", "function-after[check(), float]"); the key is the field names.
    loc = [str(p) for p in error["loc"]
           if not isinstance(p, int) and p not in _TYPE_WORDS and not _UNION_TAG.fullmatch(str(p))]
    return f"{prefix}{_dotted(loc)}" if loc else prefix.rstrip(".")


def _dotted(parts: list[str]) -> str:
    """A dotted key for a one-line message: an empty part, or one with a line break or another
    unprintable character, as its repr."""
    return ".".join(p if p and p.isprintable() else repr(p) for p in parts)


def _show(value: Any) -> str:
    """A value's repr for a message, shortened (a long string, a self-containing list, a huge integer)."""
    return _REPR.repr(value)


class _ShortRepr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        # Python will not print an integer of more than 4,300 digits (and a long one is no help).
        return f"<an integer of {x.bit_length()} bits>" if x.bit_length() > 256 else super().repr_int(x, level)


_REPR = _ShortRepr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 80


_EXPECTED = {
    "int_type": "expected an integer", "int_from_float": "expected an integer",
    "float_type": "expected a number", "bool_type": "expected true or false",
    "string_type": "expected a string", "list_type": "expected a list", "dict_type": "expected a mapping",
    "finite_number": "expected a finite number",
}
#: Parts of pydantic error locations that name a type tried in a union, not a key.
_TYPE_WORDS = {"int", "float", "str", "bool", "list", "dict", "none", "function-after[run(), str]"}
_UNION_TAG = re.compile(r"(literal|function-\w+|nullable|union)\[.*\]")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


_SECTIONS: dict[str, type] = {
    c.__name__: c
    for c in (SparkConfig, DeltaConfig, IngestConfig, SegmentConfig, SequencesConfig, EncodeConfig, NeighborsConfig,
              TrainConfig, EvaluateConfig, HybridConfig, ScoreConfig, AvailabilityConfig, SimilarItemsConfig,
              DemoConfig, VacuumConfig,
              TrackingConfig)
}
