"""``longtail evaluate``: test-split metrics overall and by head/tail segment, for trained models and baselines.

Protocol (leave-one-out, as LLM-ESR): the input history of a user is ``train_item_idxs``
plus ``valid_item_idx`` and the target is ``test_item_idx``.

- ``sampled``: the target against ``negatives`` items drawn uniformly from the items the user
  never interacted with (whole history, target included). Seeded per user
  (``default_rng([seed, user_idx])``), so every model gets the same negatives for a seed,
  whatever the partitioning. A user with fewer unseen items than ``negatives`` (tiny demo
  catalogues only) is ranked against all of them.
- ``full``: the target against the whole catalogue minus the input history (the target is
  never removed, even if the user had it before).
- Ties with the target count half (expected rank under a random tie-break).
- ``catalog``: coverage, tail coverage and diversity of the full-catalogue top-``k`` lists.

Baselines learn from the same data as the trained models' parameters: ``train_item_idxs``
(popularity counts, ALS item factors); at test time their user side, like the sequence
models', sees train + valid (ALS folds the user in from that history).

Scoring is distributed: ``mapInPandas`` over ``user_sequences`` with the model shipped once
per Python worker (see :mod:`longtail.stages.score`); per user the task returns ranks, the segment
flags and the top list. Ranks (a few numbers per user) are collected on the driver and
turned into metrics with the pure functions of :mod:`longtail.ranking.metrics`; the distinct
recommended items are aggregated by Spark.

With a hybrid config (``score.hybrid``) the blended/MMR variant is evaluated in the same
pass and reported beside the plain model as ``<model>+hybrid``.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longtail.core import schemas
from longtail.core.config import EvaluateConfig, HybridConfig
from longtail.core.errors import InputError
from longtail.core.files import write_bytes
from longtail.ranking.metrics import coverage, hit_rate, list_diversities, ndcg, sample_negatives, tail_coverage, target_ranks
from longtail.stages.score import (
    ModelLoader,
    ScorerFactory,
    ScoringBundle,
    broadcast_bundles,
    hybrid_on,
    load_catalogue,
    make_bundle,
    read_user_sequences,
    worker_bundles,
    _spread,
)
from longtail.core.tables import Warehouse
from longtail.ranking.topk import candidate_scores, chunked_topk, full_ranks, pad_histories

SEGMENTS = ("overall", "tail_item", "head_item", "tail_user", "head_user")
RECALL_AT = 20

_RANKS_SCHEMA = T.StructType(
    [
        T.StructField("variant", T.IntegerType()),
        T.StructField("user_idx", T.IntegerType()),
        T.StructField("tail_user", T.BooleanType()),
        T.StructField("tail_item", T.BooleanType()),
        T.StructField("sampled_rank", T.DoubleType()),
        T.StructField("full_rank", T.DoubleType()),
        T.StructField("diversity", T.DoubleType()),
        T.StructField("top", T.ArrayType(T.IntegerType())),
    ]
)


@dataclass
class EvaluationReport:
    """The figures of one evaluation run; ``report`` is the contract JSON of the model.

    ``variants`` holds further reports evaluated in the same pass (the hybrid), by name.
    """

    model: str
    model_version: str
    report: dict[str, Any]
    path: str
    seconds: float
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    variant_paths: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return self.report

    def __str__(self) -> str:
        lines = [_summary_line(self.model, self.report) + f" ({self.seconds:.1f}s) -> {self.path}"]
        for name, rep in self.variants.items():
            lines.append(_summary_line(name, rep))
            lines.append("  effect vs plain: " + _effect(self.report, rep))
        return "\n".join(lines)


def _summary_line(name: str, rep: dict[str, Any]) -> str:
    parts = [f"{name} {rep['model_version']}:"]
    for protocol, block in rep["protocols"].items():
        o, t = block["overall"], block["tail_item"]
        parts.append(f"{protocol} HR@10 {o['hr@10']:.4f} NDCG@10 {o['ndcg@10']:.4f} (tail items {t['hr@10']:.4f}/{t['ndcg@10']:.4f});")
    cat = rep["catalog"]
    div = "n/a" if cat["diversity@10"] is None else f"{cat['diversity@10']:.3f}"
    parts.append(f"coverage@10 {cat['coverage@10']:.3f}, tail coverage@10 {cat['tail_coverage@10']:.3f}, diversity@10 {div}")
    return " ".join(parts)


def _effect(plain: dict[str, Any], other: dict[str, Any]) -> str:
    out = []
    for protocol in plain["protocols"]:
        for metric in ("hr@10", "ndcg@10"):
            a = plain["protocols"][protocol]["overall"][metric]
            b = other["protocols"][protocol]["overall"][metric]
            out.append(f"{protocol} {metric} {b - a:+.4f}")
    for metric in ("coverage@10", "tail_coverage@10", "diversity@10"):
        a, b = plain["catalog"][metric], other["catalog"][metric]
        if a is not None and b is not None:
            out.append(f"{metric} {b - a:+.4f}")
    return ", ".join(out)


# --------------------------------------------------------------------------- tasks


def _variant_ranks(
    bundle: ScoringBundle,
    histories: torch.Tensor,
    targets: torch.Tensor,
    candidates: torch.Tensor,
    k: int,
    item_chunk: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sampled ranks, full ranks and full top-k lists of one batch for one bundle."""
    t = bundle.tensors()
    users = bundle.scorer.user_vectors(histories).to(torch.float32)
    # Padding and items this scorer cannot rank score -inf in both protocols alike.
    padding = candidates == 0
    if t["excluded"] is not None and len(t["excluded"]):
        padding = padding | torch.isin(candidates, t["excluded"])
    if bundle.mmr_lambda is None or "unit" not in t:
        sampled = target_ranks(candidate_scores(users, t["items"], candidates).masked_fill(padding, float("-inf")).numpy(), 0)
        full, top = full_ranks(users, t["items"], targets, seen=histories, excluded=t["excluded"], k=k, item_chunk=item_chunk)
        return sampled, full.numpy(), top.numpy()
    # MMR changes the order, not the scores: the target's rank is its pick position (a miss
    # when it is not picked among the first positions the metrics look at).
    depth = max(k, RECALL_AT)
    scores = candidate_scores(users, t["items"], candidates).masked_fill(padding, float("-inf"))
    order_scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    picked, _ = bundle.rerank(torch.gather(candidates, 1, order), order_scores, k)
    sampled = _pick_position(picked, candidates[:, 0], miss=float(candidates.shape[1]))
    seen = histories.masked_fill(histories == targets[:, None], 0)
    pool_scores, pool = chunked_topk(users, t["items"], max(bundle.mmr_candidates, depth), seen=seen,
                                     excluded=t["excluded"], item_chunk=item_chunk)
    picked, _ = bundle.rerank(pool, pool_scores, depth)
    full = _pick_position(picked, targets, miss=float(t["items"].shape[0]))
    return sampled, full, picked[:, :k].numpy()


def _pick_position(picked: torch.Tensor, targets: torch.Tensor, miss: float) -> np.ndarray:
    hits = picked == targets[:, None]
    first = torch.argmax(hits.to(torch.int8), dim=1).to(torch.float64)
    return torch.where(hits.any(dim=1), first, torch.full_like(first, miss)).numpy()


def _ranks_frame(
    users: DataFrame, token: str, broadcast: Any, n_variants: int, k: int, negatives: int, seed: int,
    max_idx: int, holes: np.ndarray, user_batch: int, item_chunk: int,
) -> DataFrame:
    def evaluate_partition(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        bundles = worker_bundles(token, broadcast)
        for frame in frames:
            for start in range(0, len(frame), user_batch):
                part = frame.iloc[start : start + user_batch]
                inputs = [np.append(np.asarray(t if t is not None else [], dtype=np.int64), v)
                          for t, v in zip(part["train_item_idxs"], part["valid_item_idx"])]
                targets = part["test_item_idx"].to_numpy(dtype=np.int64)
                negs = np.zeros((len(part), negatives), dtype=np.int64)  # 0: no candidate (padding)
                for row, (u, h, t) in enumerate(zip(part["user_idx"], part["item_idxs"], targets)):
                    seen = np.concatenate([np.asarray(h, dtype=np.int64), [t], holes])
                    unseen = max_idx - np.unique(seen[(seen >= 1) & (seen <= max_idx)]).size
                    # A catalogue too small for the negatives (tiny demos): all unseen items.
                    n = min(negatives, unseen)
                    negs[row, :n] = sample_negatives(np.random.default_rng([seed, int(u)]), max_idx, seen, n)
                candidates = torch.from_numpy(np.concatenate([targets[:, None], negs], axis=1))
                histories = pad_histories(inputs)
                target_t = torch.from_numpy(targets)
                for v, bundle in enumerate(bundles):
                    sampled, full, top = _variant_ranks(bundle, histories, target_t, candidates, k, item_chunk)
                    div = (list_diversities(top, bundle.unit_embeddings) if bundle.unit_embeddings is not None
                           else np.full(len(part), np.nan))
                    yield pd.DataFrame({
                        "variant": np.full(len(part), v, dtype=np.int32),
                        "user_idx": part["user_idx"].to_numpy(dtype=np.int32),
                        "tail_user": part["tail_user"].to_numpy(dtype=bool),
                        "tail_item": bundle.tail[targets],
                        "sampled_rank": sampled,
                        "full_rank": full,
                        "diversity": div,
                        "top": list(top.astype(np.int32)),
                    })

    return _spread(users).mapInPandas(evaluate_partition, _RANKS_SCHEMA)


# --------------------------------------------------------------------------- figures


def segment_metrics(ranks: pd.DataFrame, column: str, k: int, recall: bool) -> dict[str, dict[str, float]]:
    """HR@k, NDCG@k (and recall@20) overall and per segment from per-user ranks.

    Args:
        ranks: one row per user with ``tail_user``, ``tail_item`` (bool) and the rank column.
        column: which rank column (``sampled_rank`` or ``full_rank``).
        recall: add ``recall@20`` (one target: the share with rank < 20).
    """
    masks = {
        "overall": np.ones(len(ranks), dtype=bool),
        "tail_item": ranks["tail_item"].to_numpy(dtype=bool),
        "head_item": ~ranks["tail_item"].to_numpy(dtype=bool),
        "tail_user": ranks["tail_user"].to_numpy(dtype=bool),
        "head_user": ~ranks["tail_user"].to_numpy(dtype=bool),
    }
    values = ranks[column].to_numpy(dtype=np.float64)
    out = {}
    for segment in SEGMENTS:
        r = values[masks[segment]]
        figures = {f"hr@{k}": hit_rate(r, k), f"ndcg@{k}": ndcg(r, k)}
        if recall:
            figures[f"recall@{RECALL_AT}"] = hit_rate(r, RECALL_AT)
        out[segment] = figures
    return out


def build_report(
    model: str, version: str, dataset: dict[str, int], ranks: pd.DataFrame, top_items: np.ndarray,
    n_items: int, tail_items: np.ndarray, cfg: EvaluateConfig, has_embeddings: bool,
) -> dict[str, Any]:
    """The contract JSON (``_reports/evaluation-<model>.json``) from per-user ranks and recommended items."""
    protocols: dict[str, Any] = {}
    if "sampled" in cfg.protocols:
        protocols["sampled"] = {"negatives": cfg.negatives, **segment_metrics(ranks, "sampled_rank", cfg.k, False)}
    if "full" in cfg.protocols:
        protocols["full"] = segment_metrics(ranks, "full_rank", cfg.k, True)
    diversity = float(ranks["diversity"].mean()) if has_embeddings and len(ranks) else None
    return {
        "model": model,
        "model_version": version,
        "dataset": dataset,
        "protocols": protocols,
        "catalog": {
            f"coverage@{cfg.k}": coverage(top_items, n_items),
            f"tail_coverage@{cfg.k}": tail_coverage(top_items, tail_items),
            f"diversity@{cfg.k}": diversity,
        },
    }


def report_rows(report: dict[str, Any], evaluated_at: dt.datetime) -> list[tuple]:
    """Rows of the ``evaluation`` table for one report (protocol, segment, metric, value)."""
    rows = []
    for protocol, block in report["protocols"].items():
        for segment in SEGMENTS:
            for metric, value in block[segment].items():
                rows.append((report["model"], report["model_version"], protocol, segment, metric, value, evaluated_at))
    for metric, value in report["catalog"].items():
        rows.append((report["model"], report["model_version"], "catalog", "overall", metric, value, evaluated_at))
    return rows


def write_report(wh: Warehouse, report: dict[str, Any]) -> str:
    """Write ``<warehouse>/_reports/evaluation-<model>.json``: a temporary file, then a rename.

    Readers never see a half-written report. Works for local warehouses and object-store
    URIs (through ``pyarrow.fs``; there the rename is the store's copy-and-delete).
    """
    root = wh.root
    name = f"evaluation-{report['model']}.json"
    write_bytes(f"{root.rstrip('/')}/_reports/{name}", json.dumps(report, indent=2).encode("utf-8"))
    return f"{root.rstrip('/')}/_reports/{name}"


def write_evaluation_rows(wh: Warehouse, reports: list[dict[str, Any]], evaluated_at: dt.datetime) -> None:
    """Replace the rows of these (model, version) pairs in ``evaluation``, keeping all others."""
    new_rows = [r for rep in reports for r in report_rows(rep, evaluated_at)]
    replaced = {(rep["model"], rep["model_version"]) for rep in reports}
    kept: list[tuple] = []
    if wh.exists(schemas.EVALUATION):
        # A few dozen rows per model: read to the driver, filter, rewrite in one commit.
        old = schemas.conform(wh.read(schemas.EVALUATION), schemas.EVALUATION).collect()
        kept = [tuple(r) for r in old if (r["model"], r["model_version"]) not in replaced]
    frame = wh.spark.createDataFrame(kept + new_rows, schemas.EVALUATION_SCHEMA)
    wh.write(frame, schemas.EVALUATION, mode="overwrite")


# --------------------------------------------------------------------------- run_evaluate


def run_evaluate(
    wh: Warehouse,
    model_name: str,
    cfg: EvaluateConfig,
    version: str | None = None,
    hybrid: HybridConfig | None = None,
    *,
    user_batch: int | None = None,
    item_chunk: int | None = None,
    model_loader: ModelLoader | None = None,
) -> EvaluationReport:
    """Evaluate a trained model or a baseline on the test split; write the report and table rows.

    Args:
        wh: warehouse (carries the session); reads ``user_sequences``, ``item_stats``,
            ``user_stats`` and (for diversity and the content parts) ``item_embeddings``.
        model_name: trained model name, or ``popularity``, ``als``, ``content``.
        cfg: the ``evaluate`` section (negatives, seed, k, protocols, ALS settings).
        version: model version (default: the latest).
        hybrid: ``score.hybrid``; when it blends or re-ranks, that variant is evaluated too
            and written as ``<model>+hybrid``.
        user_batch, item_chunk: users per batch and items per matrix product in each task
            (default: ``cfg.user_batch``, ``cfg.item_chunk``).
        model_loader: ``load_model`` replacement (tests).

    Returns:
        :class:`EvaluationReport` (``report`` is the contract JSON; ``variants`` the hybrid).

    Raises:
        ModelNotFoundError: unknown model or version. TableNotFoundError / SchemaError: inputs.
        InputError: bad settings (protocols, too few items for the negatives).
    """
    started = time.perf_counter()
    evaluated_at = dt.datetime.now(dt.timezone.utc)
    unknown = sorted(set(cfg.protocols) - {"sampled", "full"})
    if unknown:
        raise InputError(f"config key evaluate.protocols: unknown protocol {unknown[0]!r} (known: sampled, full)")
    if cfg.negatives < 1:
        raise InputError(f"config key evaluate.negatives: {cfg.negatives}; must be at least 1")
    user_batch = cfg.user_batch if user_batch is None else user_batch
    item_chunk = cfg.item_chunk if item_chunk is None else item_chunk
    for key, value in (("user_batch", user_batch), ("item_chunk", item_chunk)):
        if value < 1:
            raise InputError(f"config key evaluate.{key}: {value}; must be at least 1")
    seqs = read_user_sequences(wh)
    user_stats = wh.read(schemas.USER_STATS)
    schemas.require_columns(user_stats, schemas.USER_STATS_SCHEMA, schemas.USER_STATS)
    catalogue = load_catalogue(wh, include_new_items=False)
    factory = ScorerFactory(wh, catalogue, "train", cfg, model_loader)
    plain = factory.scorer(model_name, version)
    bundles = [make_bundle(plain, catalogue, restrict_to_known=True)]
    use_hybrid = hybrid_on(hybrid)
    if use_hybrid:
        assert hybrid is not None
        blended = factory.hybrid(model_name, version, hybrid)
        bundles.append(make_bundle(blended, catalogue, hybrid, restrict_to_known=True))

    max_idx = catalogue.n_known - 1
    holes = np.nonzero(~catalogue.known[1:])[0].astype(np.int64) + 1  # idxs no item has
    users = (
        seqs.where(F.col("test_item_idx").isNotNull() & (F.col("test_item_idx") > 0))
        .select("user_id", "user_idx", "item_idxs", "train_item_idxs", "valid_item_idx", "test_item_idx")
        .join(user_stats.select("user_idx", (F.col("segment") == schemas.TAIL).alias("tail_user")), "user_idx", "left")
        .withColumn("tail_user", F.coalesce(F.col("tail_user"), F.lit(False)))
    )
    summary = users.agg(
        F.count(F.lit(1)).alias("users"), F.sum(F.size("item_idxs")).alias("interactions")
    ).collect()[0]
    n_users = int(summary["users"] or 0)
    if n_users == 0:
        raise InputError(f"table {schemas.USER_SEQUENCES}: no user has a test item to evaluate")
    token, bc = broadcast_bundles(wh, bundles)
    ranks_df = _ranks_frame(users, token, bc, len(bundles), cfg.k, cfg.negatives, cfg.seed, max_idx, holes,
                            user_batch, item_chunk).persist()
    try:
        ranks = ranks_df.drop("top").toPandas()
        recommended = (
            ranks_df.select("variant", F.explode("top").alias("item")).where(F.col("item") > 0).distinct()
            .groupBy("variant").agg(F.collect_list("item").alias("items")).collect()
        )
    finally:
        ranks_df.unpersist()
        bc.unpersist()
    items_by_variant = {r["variant"]: np.asarray(r["items"], dtype=np.int64) for r in recommended}
    dataset = {"users": n_users, "items": int(catalogue.known.sum()), "interactions": int(summary["interactions"] or 0)}
    tail_items = np.nonzero(catalogue.tail & catalogue.known)[0]
    has_embeddings = bool(catalogue.has_embedding.any())
    reports = []
    for v, scorer in enumerate([plain] + ([blended] if use_hybrid else [])):
        reports.append(build_report(
            scorer.name, scorer.version, dataset, ranks[ranks["variant"] == v],
            items_by_variant.get(v, np.zeros(0, dtype=np.int64)), int(catalogue.known.sum()), tail_items, cfg,
            has_embeddings,
        ))
    with wh.job():
        write_evaluation_rows(wh, reports, evaluated_at)
    paths = [write_report(wh, rep) for rep in reports]
    return EvaluationReport(
        model=plain.name, model_version=plain.version, report=reports[0], path=paths[0],
        seconds=time.perf_counter() - started,
        variants={rep["model"]: rep for rep in reports[1:]},
        variant_paths={rep["model"]: p for rep, p in zip(reports[1:], paths[1:])},
    )
