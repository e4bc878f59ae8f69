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
- ``similar_items`` (when the ``similar_items`` table has lists of the model version): for each
  test user, whether the test item is among the K most similar items of the user's last input item
  (item-to-item HR@K, overall and for tail test items), and each source's coverage and tail share.
- ``catalog``: coverage, tail coverage, Gini index of recommendation counts, tail share and
  average popularity of the slots, and diversity of the full-catalogue top-``k`` lists; the
  same for the lists of tail users and of head users; ``exposure``: the share of slots by
  item-popularity decile beside the deciles' share of interactions.

Baselines learn from the same data as the trained models' parameters: ``train_item_idxs``
(popularity counts, ALS item factors); at test time their user side, like the sequence
models', sees train + valid (ALS folds the user in from that history).

Scoring is distributed: ``mapInPandas`` over ``user_sequences`` with the model shipped once
per Python worker (:mod:`longtail.inference.bundle`); per user the task returns ranks, the
segment flags and the top list. Ranks (a few numbers per user; at most about
``evaluate.max_users`` users, a seeded sample) are collected on the driver and turned into the
report with the pure functions of :mod:`longtail.ranking.report`; the distinct recommended items
are aggregated by Spark. Report rows are appended to ``evaluation`` (readers take the latest
``evaluated_at`` of a model version).

With a hybrid config (``score.hybrid``) the blended/MMR variant is evaluated in the same
pass and reported beside the plain model as ``<model>+hybrid``.
"""
from __future__ import annotations

import dataclasses
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
from longtail.core.config import EvaluateConfig, HybridConfig, TrackingConfig
from longtail.core.errors import InputError
from longtail.core.files import write_bytes
from longtail.core.tracking import log_evaluation
from longtail.core.tables import Warehouse
from longtail.inference import (
    Catalogue,
    ScorerFactory,
    broadcast_bundles,
    hybrid_on,
    load_catalogue,
    make_bundle,
    read_user_sequences,
    spread,
    worker_bundles,
)
from longtail.inference.baselines import BASELINES
from longtail.inference.scorers import ModelLoader
from longtail.inference.similar import item_to_item_hits, table_figures
from longtail.inference.users import sample_users
from longtail.models.histories import pad_histories
from longtail.ranking.metrics import list_diversities, sample_negatives
from longtail.ranking.report import USER_SEGMENTS, build_report, report_rows

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
    k = rep.get("k", 10)
    parts = [f"{name} {rep['model_version']}:"]
    for protocol, block in rep["protocols"].items():
        o, t = block["overall"], block["tail_item"]
        parts.append(
            f"{protocol} HR@{k} {o[f'hr@{k}']:.4f} NDCG@{k} {o[f'ndcg@{k}']:.4f} "
            f"(tail items {t[f'hr@{k}']:.4f}/{t[f'ndcg@{k}']:.4f});"
        )
    cat = rep["catalog"]
    div = "n/a" if cat[f"diversity@{k}"] is None else f"{cat[f'diversity@{k}']:.3f}"
    parts.append(
        f"coverage@{k} {cat[f'coverage@{k}']:.3f}, tail coverage@{k} {cat[f'tail_coverage@{k}']:.3f}, "
        f"gini@{k} {cat[f'gini@{k}']:.3f}, tail share@{k} {cat[f'tail_share@{k}']:.3f}, diversity@{k} {div}"
    )
    return " ".join(parts)


def _effect(plain: dict[str, Any], other: dict[str, Any]) -> str:
    k = plain.get("k", 10)
    out = []
    for protocol in plain["protocols"]:
        for metric in (f"hr@{k}", f"ndcg@{k}"):
            a = plain["protocols"][protocol]["overall"][metric]
            b = other["protocols"][protocol]["overall"][metric]
            out.append(f"{protocol} {metric} {b - a:+.4f}")
    for metric in (f"coverage@{k}", f"tail_coverage@{k}", f"gini@{k}", f"tail_share@{k}", f"diversity@{k}"):
        a, b = plain["catalog"][metric], other["catalog"][metric]
        if a is not None and b is not None:
            out.append(f"{metric} {b - a:+.4f}")
    return ", ".join(out)


# --------------------------------------------------------------------------- tasks


def _sampled_negatives(part: pd.DataFrame, targets: np.ndarray, negatives: int, seed: int, max_idx: int,
                       holes: np.ndarray) -> np.ndarray:
    """``[B, negatives]`` unseen items per user, seeded by (seed, user_idx); 0 = no candidate."""
    negs = np.zeros((len(part), negatives), dtype=np.int64)
    for row, (u, h, t) in enumerate(zip(part["user_idx"], part["item_idxs"], targets)):
        seen = np.concatenate([np.asarray(h, dtype=np.int64), [t], holes])
        unseen = max_idx - np.unique(seen[(seen >= 1) & (seen <= max_idx)]).size
        # A catalogue too small for the negatives (tiny demos): all unseen items.
        n = min(negatives, unseen)
        negs[row, :n] = sample_negatives(np.random.default_rng([seed, int(u)]), max_idx, seen, n)
    return negs


def _ranks_frame(
    users: DataFrame, token: str, broadcast: Any, settings: dict[str, Any], max_idx: int, holes: np.ndarray,
    user_batch: int, item_chunk: int,
) -> DataFrame:
    """One row per user and variant: sampled and full rank of the test item, list diversity, top-k."""
    k, negatives, seed = settings["k"], settings["negatives"], settings["seed"]
    depth = max(k, settings["recall_at"])

    def evaluate_partition(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        bundles = worker_bundles(token, broadcast)
        for frame in frames:
            for start in range(0, len(frame), user_batch):
                part = frame.iloc[start : start + user_batch]
                inputs = [np.append(np.asarray(t if t is not None else [], dtype=np.int64), v)
                          for t, v in zip(part["train_item_idxs"], part["valid_item_idx"])]
                targets = part["test_item_idx"].to_numpy(dtype=np.int64)
                negs = _sampled_negatives(part, targets, negatives, seed, max_idx, holes)
                candidates = torch.from_numpy(np.concatenate([targets[:, None], negs], axis=1))
                histories = pad_histories(inputs)
                target_t = torch.from_numpy(targets)
                for v, bundle in enumerate(bundles):
                    sampled, full, top = bundle.ranks(histories, target_t, candidates, k, depth, item_chunk)
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

    return spread(users).mapInPandas(evaluate_partition, _RANKS_SCHEMA)


# --------------------------------------------------------------------------- writing


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
    """Append the reports' figures to ``evaluation`` (one commit; earlier evaluations stay)."""
    wh.append_rows(schemas.EVALUATION, [r for rep in reports for r in report_rows(rep, evaluated_at)])


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
    tracking: TrackingConfig | None = None,
    popularity_penalty: str | float = "model",
) -> EvaluationReport:
    """Evaluate a trained model or a baseline on the test split; write the report and table rows.

    Args:
        wh: warehouse (carries the session); reads ``user_sequences``, ``item_stats``,
            ``user_stats`` and (for diversity and the content parts) ``item_embeddings``.
        model_name: trained model name, or ``popularity``, ``als``, ``content``.
        cfg: the ``evaluate`` section (negatives, seed, k, recall_at, protocols, ALS settings).
        version: model version (default: the latest).
        hybrid: ``score.hybrid``; when it blends or re-ranks, that variant is evaluated too
            and written as ``<model>+hybrid``.
        user_batch, item_chunk: users per batch and items per matrix product in each task
            (default: ``cfg.user_batch``, ``cfg.item_chunk``).
        model_loader: ``load_model`` replacement (tests).
        tracking: the ``tracking`` section: with ``mlflow`` on, each report is logged to MLflow.
        popularity_penalty: ``score.popularity_penalty`` (``model``: the one the model chose at
            training): the model is evaluated as ``score`` serves it; the report records it.

    Returns:
        :class:`EvaluationReport` (``report`` is the contract JSON; ``variants`` the hybrid).

    Raises:
        ModelNotFoundError: unknown model or version. TableNotFoundError / SchemaError: inputs.
        InputError: bad settings (protocols, too few items for the negatives).
    """
    started = time.perf_counter()
    evaluated_at = dt.datetime.now(dt.timezone.utc)
    user_batch = cfg.user_batch if user_batch is None else user_batch
    item_chunk = cfg.item_chunk if item_chunk is None else item_chunk
    _check_settings(cfg, user_batch, item_chunk)
    seqs = read_user_sequences(wh)
    user_stats = wh.read(schemas.USER_STATS)
    schemas.require_columns(user_stats, schemas.USER_STATS_SCHEMA, schemas.USER_STATS)
    catalogue = load_catalogue(wh, include_new_items=False)
    factory = ScorerFactory(wh, catalogue, "train", cfg, model_loader, popularity_penalty=popularity_penalty)
    scorers = [factory.scorer(model_name, version)]
    adjustment = _served_adjustment(scorers[0])
    bundles = [make_bundle(scorers[0], catalogue, restrict_to_known=True)]
    if hybrid_on(hybrid):
        scorers.append(factory.hybrid(model_name, version, hybrid))
        bundles.append(make_bundle(scorers[1], catalogue, hybrid, restrict_to_known=True))
    users, dataset = _evaluation_users(seqs, user_stats, catalogue, cfg.max_users, cfg.seed)
    settings = dataclasses.asdict(cfg)
    holes = np.nonzero(~catalogue.known[1:])[0].astype(np.int64) + 1  # idxs no item has
    token, bc = broadcast_bundles(wh, bundles)
    ranks_df = _ranks_frame(users, token, bc, settings, catalogue.n_known - 1, holes, user_batch, item_chunk).persist()
    try:
        ranks, counts = _collect(ranks_df, len(bundles), catalogue.size)
    finally:
        ranks_df.unpersist()
        bc.unpersist()
    dataset["evaluated_users"] = int((ranks["variant"] == 0).sum())
    items = {"known": catalogue.known, "tail": catalogue.tail, "popularity": catalogue.popularity}
    reports = [
        build_report(
            scorer.name, scorer.version, dataset, ranks[ranks["variant"] == v], counts[v], items, settings,
            bool(catalogue.has_embedding.any()),
        )
        for v, scorer in enumerate(scorers)
    ]
    for rep in reports:  # the model's lists only; a blend of the user lists has no similar items of its own
        rep["similar_items"] = None
    if model_name not in BASELINES:  # a baseline has no item vectors, so no similar items of its own
        reports[0]["similar_items"] = similar_items_figures(wh, scorers[0].name, scorers[0].version, cfg.k, users)
    for rep in reports:
        rep["exposure_adjustment"] = adjustment
        rep["popularity_penalty"] = adjustment["penalty"] if adjustment and adjustment["kind"] == "popularity" else 0.0
    with wh.job():
        write_evaluation_rows(wh, reports, evaluated_at)
    paths = [write_report(wh, rep) for rep in reports]
    for rep, path in zip(reports, paths) if tracking is not None else ():
        log_evaluation(tracking, wh.root, rep["model"], rep["model_version"], rep, path)
    return EvaluationReport(
        model=scorers[0].name, model_version=scorers[0].version, report=reports[0], path=paths[0],
        seconds=time.perf_counter() - started,
        variants={rep["model"]: rep for rep in reports[1:]},
        variant_paths={rep["model"]: p for rep, p in zip(reports[1:], paths[1:])},
    )


def similar_items_figures(
    wh: Warehouse, model: str, version: str, k: int, users: DataFrame | None = None, run_date: dt.date | None = None,
) -> dict[str, Any] | None:
    """The item-to-item figures of the latest ``similar_items`` lists of a model version.

    For each user of ``users`` (default: every user of ``user_sequences`` with a test item) the pair
    (last input item, test item): HR@``k`` is the share of pairs whose test item is among the ``k``
    most similar items of the last one, overall and for tail test items; beside it each source's
    coverage and tail share of the table (:func:`~longtail.inference.similar.table_figures`).

    The lists are those of ``run_date`` (default: the latest date holding lists of the version).

    Returns:
        ``{"run_date", "k", "sources": {source: {"overall": {"hr@k"}, "tail_item": {"hr@k"}, "items",
        "coverage", "tail_share"}}}``; None when the table holds no list of that model version.
    """
    if not wh.exists(schemas.SIMILAR_ITEMS):
        return None
    table = wh.read(schemas.SIMILAR_ITEMS)
    schemas.require_columns(table, schemas.SIMILAR_ITEMS_SCHEMA, schemas.SIMILAR_ITEMS)
    mine = table.where((F.col("model") == model) & (F.col("model_version") == version))
    latest = run_date or mine.agg(F.max("run_date").alias("d")).collect()[0]["d"]
    if latest is None:
        return None
    lists = mine.where(F.col("run_date") == F.lit(latest))
    stats = wh.read(schemas.ITEM_STATS).select("item_idx", "item_id", (F.col("segment") == schemas.TAIL).alias("tail"))
    if users is None:
        users = read_user_sequences(wh).where(F.col("test_item_idx") > 0)
    last = stats.select(F.col("item_idx").alias("valid_item_idx"), F.col("item_id").alias("last_item_id"))
    nxt = stats.select(F.col("item_idx").alias("test_item_idx"), F.col("item_id").alias("next_item_id"),
                       F.col("tail").alias("tail_item"))
    pairs = users.select("valid_item_idx", "test_item_idx").join(last, "valid_item_idx").join(nxt, "test_item_idx")
    hits = item_to_item_hits(lists, pairs, k)
    flags = stats.select(F.col("item_id").alias("similar_item_id"), F.col("tail").alias("is_tail"))
    # Items outside item_stats (known from their text only) are tail, as in the catalogue.
    with_tail = lists.join(flags, "similar_item_id", "left").withColumn("is_tail", F.coalesce("is_tail", F.lit(True)))
    figures = table_figures(with_tail)
    return {
        "run_date": latest.isoformat(), "k": k,
        "sources": {s: {**hits.get(s, {}), **figures[s]} for s in schemas.SIMILAR_SOURCES if s in figures},
    }


def _served_adjustment(scorer) -> dict | None:
    """``{"kind", "penalty"}`` of the exposure adjustment ``scorer`` ranks with; None without one."""
    kind = getattr(scorer, "kind", None)
    return {"kind": kind, "penalty": float(scorer.penalty)} if kind is not None else None


def _check_settings(cfg: EvaluateConfig, user_batch: int, item_chunk: int) -> None:
    unknown = sorted(set(cfg.protocols) - {"sampled", "full"})
    if unknown:
        raise InputError(f"config key evaluate.protocols: unknown protocol {unknown[0]!r} (known: sampled, full)")
    if cfg.negatives < 1:
        raise InputError(f"config key evaluate.negatives: {cfg.negatives}; must be at least 1")
    for key, value in (("user_batch", user_batch), ("item_chunk", item_chunk)):
        if value < 1:
            raise InputError(f"config key evaluate.{key}: {value}; must be at least 1")


def _evaluation_users(seqs: DataFrame, user_stats: DataFrame, catalogue: Catalogue, max_users: int | None,
                      seed: int) -> tuple[DataFrame, dict]:
    """Users with a test item (a seeded sample of about ``max_users`` where there are more) and
    their segment flag; the dataset figures of the report (over every user with a test item).

    Raises:
        InputError: no user has a test item.
    """
    users = (
        seqs.where(F.col("test_item_idx").isNotNull() & (F.col("test_item_idx") > 0))
        .select("user_id", "user_idx", "item_idxs", "train_item_idxs", "valid_item_idx", "test_item_idx")
        .join(user_stats.select("user_idx", (F.col("segment") == schemas.TAIL).alias("tail_user")), "user_idx", "left")
        .withColumn("tail_user", F.coalesce(F.col("tail_user"), F.lit(False)))
    )
    summary = users.agg(F.count(F.lit(1)).alias("users"), F.sum(F.size("item_idxs")).alias("interactions")).collect()[0]
    n_users = int(summary["users"] or 0)
    if n_users == 0:
        raise InputError(f"table {schemas.USER_SEQUENCES}: no user has a test item to evaluate")
    dataset = {"users": n_users, "items": int(catalogue.known.sum()), "interactions": int(summary["interactions"] or 0)}
    if max_users is not None:
        users = sample_users(users, max_users, n_users, seed)
    return users, dataset


def _collect(ranks_df: DataFrame, variants: int, size: int) -> tuple[pd.DataFrame, list[dict[str, np.ndarray]]]:
    """Per-user ranks on the driver; per variant and user segment, how many top-k lists hold each
    item (``[size]`` counts, aggregated by Spark: a catalogue-sized result, never a user-sized one)."""
    ranks = ranks_df.drop("top").toPandas()
    rows = (
        ranks_df.select("variant", "tail_user", F.explode("top").alias("item")).where(F.col("item") > 0)
        .groupBy("variant", "tail_user", "item").count().collect()
    )
    counts = [{s: np.zeros(size, dtype=np.int64) for s in USER_SEGMENTS} for _ in range(variants)]
    for r in rows:
        counts[r["variant"]]["tail_user" if r["tail_user"] else "head_user"][r["item"]] = r["count"]
    return ranks, counts
