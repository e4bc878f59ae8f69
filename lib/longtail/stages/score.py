"""``longtail score``: the nightly top-K table of every user.

Shape of the job:

1. The driver builds the *catalogue* (``item_stats`` items, plus items that have text in
   ``item_embeddings``/``items`` but no interactions yet) and a scorer for the model (a
   trained model, a baseline, or a hybrid blend; :mod:`longtail.inference`), computes the item
   matrix once, and ships one :class:`~longtail.inference.bundle.ScoringBundle` to the
   executors as a side file in the warehouse (cloudpickled, so fakes and models defined anywhere
   travel; no Spark broadcast, so it works on Spark Connect and with object-store warehouses).
2. ``mapInPandas`` over ``user_sequences``: each Python worker reads and unpickles the bundle once
   and, per batch of ``user_batch`` users, builds the user
   vectors from the whole history (nothing held out at serving time), scores the catalogue
   in ``item_chunk`` slices with one matrix product each, masks the user's items and keeps
   the exact top K (merge per chunk). Memory per task: ``user_batch x item_chunk`` scores.
3. Users with no usable history (in ``users`` or ``interactions`` but not in
   ``user_sequences``) get popularity within the categories of the items they touched, else
   global popularity, flagged ``fallback = true``.
4. One atomic write replaces the ``run_date`` partition of ``recommendations``; then one row
   is appended to ``recommendation_runs`` (a rerun of the date appends another; the latest
   ``finished_at`` of a date describes its partition).

``score`` is the model's dot product (with ``score.hybrid``: the blend of per-user z-scores);
with the MMR re-rank on, ``rank`` follows the re-rank and ``score`` stays the relevance, so
it need not fall with the rank.

K larger than some user's unseen catalogue fails the run before anything is written
(:class:`~longtail.core.errors.InputError`, found by the same aggregation that computes the run's
figures): the contract promises exactly K rows per user, and padding with seen items would
break its other promise, so a short partition is never written.

Serving-time baselines learn from the whole histories (``item_idxs``): popularity counts
and ALS item factors; ``evaluate`` uses the training part instead.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longtail.core import schemas
from longtail.core.config import EvaluateConfig, ScoreConfig
from longtail.core.errors import InputError
from longtail.core.tables import Warehouse
from longtail.inference import (
    Catalogue,
    ScorerFactory,
    ScoringBundle,
    Staged,
    hybrid_on,
    load_catalogue,
    make_bundle,
    read_user_sequences,
    spread,
    stage,
    stage_bundles,
    worker_bundles,
)
from longtail.inference.scorers import ModelLoader
from longtail.models.histories import pad_histories
from longtail.ranking.metrics import list_diversities


@dataclass
class ScoreReport:
    """What ``longtail score`` wrote."""

    model: str
    model_version: str
    run_date: dt.date
    top_k: int
    users: int
    fallback_users: int
    new_items: int
    coverage: float
    tail_share: float
    diversity: float | None
    seconds: float
    table: str = ""

    def __str__(self) -> str:
        div = "n/a" if self.diversity is None else f"{self.diversity:.3f}"
        return (
            f"recommendations {self.run_date}: {self.users} users x top-{self.top_k} from {self.model} "
            f"{self.model_version} ({self.fallback_users} popularity fallbacks, {self.new_items} new items "
            f"rankable from text); coverage {self.coverage:.3f}, "
            f"tail share {self.tail_share:.3f}, diversity {div}; {self.seconds:.1f}s -> {self.table}"
        )


_SCORED_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType()),
        T.StructField("rank", T.IntegerType()),
        T.StructField("item_id", T.StringType()),
        T.StructField("score", T.FloatType()),
        T.StructField("fallback", T.BooleanType()),
        T.StructField("list_diversity", T.DoubleType()),
        T.StructField("is_tail", T.BooleanType()),
        T.StructField("list_length", T.IntegerType()),
    ]
)


def _list_rows(user_ids: list[str], items: np.ndarray, scores: np.ndarray, bundle: ScoringBundle, fallback: bool) -> pd.DataFrame:
    # Item 0 marks "no candidate left" (unseen catalogue exhausted): dropped here, and the
    # list length lets the driver refuse the run before anything is written. A user with no
    # candidate at all keeps one placeholder row (list_length 0) so that the check sees them.
    k = items.shape[1]
    valid = items > 0
    lengths = valid.sum(axis=1)
    valid[:, 0] |= lengths == 0
    div = (
        list_diversities(items, bundle.unit_embeddings) if bundle.unit_embeddings is not None
        else np.full(len(user_ids), np.nan)
    )
    ids = np.asarray(bundle.item_ids, dtype=object)
    flat = valid.ravel()
    frame = pd.DataFrame(
        {
            "user_id": np.repeat(np.asarray(user_ids, dtype=object), k),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(user_ids)),
            "item_id": ids[items.ravel()],
            "score": scores.ravel().astype(np.float32),
            "fallback": np.full(len(user_ids) * k, fallback),
            "list_diversity": np.repeat(div, k),
            "is_tail": bundle.tail[items.ravel()],
            "list_length": np.repeat(lengths.astype(np.int32), k),
        }
    )
    return frame[flat] if not flat.all() else frame


def score_users_frame(
    users: DataFrame, token: str, staged: Staged, k: int, user_batch: int, item_chunk: int
) -> DataFrame:
    """Top-``k`` rows for every ``(user_id, item_idxs, seen_idxs)`` row of ``users`` (lazy).

    ``item_idxs`` feeds the model; the list excludes those and ``seen_idxs`` (every catalogue
    item the user ever touched, beyond the ``max_len`` kept in ``user_sequences``; may be null).
    """

    def score_partition(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        bundle = worker_bundles(token, staged)[0]
        for frame in frames:
            for start in range(0, len(frame), user_batch):
                part = frame.iloc[start : start + user_batch]
                histories = pad_histories(list(part["item_idxs"]))
                seen = pad_histories([
                    np.concatenate([np.asarray(h, dtype=np.int64), np.asarray([] if s is None else s, dtype=np.int64)])
                    for h, s in zip(part["item_idxs"], part["seen_idxs"])
                ])
                scores, items = bundle.top_k(histories, k, item_chunk, seen=seen)
                yield _list_rows(list(part["user_id"]), items.numpy(), scores.numpy(), bundle, False)

    if "seen_idxs" not in users.columns:
        users = users.withColumn("seen_idxs", F.lit(None).cast("array<int>"))
    return spread(users.select("user_id", "item_idxs", "seen_idxs")).mapInPandas(score_partition, _SCORED_SCHEMA)


def seen_items(wh: Warehouse, seqs: DataFrame, catalogue: Catalogue) -> DataFrame:
    """``seqs`` plus ``seen_idxs``: every catalogue item of the user's ``interactions``.

    ``user_sequences`` keeps only the latest ``max_len`` items, and items dropped by the
    k-core can come back as text-only items; neither may be recommended to someone who has
    them. Without an ``interactions`` table ``seen_idxs`` is null (histories only).
    """
    if not wh.exists(schemas.INTERACTIONS):
        return seqs.withColumn("seen_idxs", F.lit(None).cast("array<int>"))
    interactions = wh.read(schemas.INTERACTIONS)
    schemas.require_columns(interactions, schemas.INTERACTIONS_SCHEMA, schemas.INTERACTIONS)
    ids = pd.DataFrame({"item_id": catalogue.item_ids, "item_idx": np.arange(catalogue.size, dtype=np.int32)})
    ids = wh.spark.createDataFrame(ids[ids["item_id"] != ""], "item_id string, item_idx int")
    seen = (
        interactions.select("user_id", "item_id")
        .join(ids, "item_id")
        .groupBy("user_id")
        .agg(F.collect_set("item_idx").alias("seen_idxs"))
    )
    return seqs.join(seen, "user_id", "left")


@dataclass
class FallbackPlan:
    """Catalogue-sized lookups for popularity lists, built on the driver and shipped once.

    Attributes:
        ranked: known item idxs, most popular first; share: their popularity / the largest.
        rank_of: item_id -> position in ``ranked``; item_categories: item_id -> categories.
        members: category -> positions in ``ranked`` of its items, ascending.
    """

    ranked: np.ndarray
    share: np.ndarray
    rank_of: dict[str, int]
    item_categories: dict[str, list[str]]
    members: dict[str, np.ndarray]

    def list_for(self, seen: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(item idxs [k], scores [k])`` for a user who touched ``seen``: the most popular items
        sharing a category with them first (score 1 + share), then global popularity (share);
        never a seen item; item 0 and ``-inf`` where the catalogue runs out."""
        seen_ranks = np.asarray([self.rank_of[s] for s in seen if s in self.rank_of], dtype=np.int64)
        categories = {c for s in seen for c in self.item_categories.get(s, [])}
        # Only the k + |seen| most popular of each list can make the top k.
        depth = k + len(seen_ranks)
        in_cats = [self.members[c][:depth] for c in categories if c in self.members]
        first = np.unique(np.concatenate(in_cats)) if in_cats else np.zeros(0, dtype=np.int64)
        first = first[~np.isin(first, seen_ranks)][:k]
        rest = np.arange(min(len(self.ranked), depth + len(first)))
        rest = rest[~np.isin(rest, seen_ranks) & ~np.isin(rest, first)][: k - len(first)]
        chosen = np.concatenate([first, rest])
        picked = np.zeros(k, dtype=np.int64)
        picked[: len(chosen)] = self.ranked[chosen]
        score = np.full(k, -np.inf)
        score[: len(chosen)] = np.concatenate([1.0 + self.share[first], self.share[rest]])
        return picked, score


def _fallback_plan(wh: Warehouse, catalogue: Catalogue, popularity: np.ndarray) -> FallbackPlan:
    """Known items by popularity, their categories (from ``items``) and each category's items."""
    ranked = np.argsort(-popularity[: catalogue.n_known], kind="stable")
    ranked = ranked[catalogue.known[ranked]]  # known items, most popular first
    rank_of = {catalogue.item_ids[i]: r for r, i in enumerate(ranked)}
    item_categories: dict[str, list[str]] = {}
    members: dict[str, list[int]] = {}
    if wh.exists(schemas.ITEMS):
        for row in wh.read(schemas.ITEMS).select("item_id", "categories").collect():
            categories = list(row["categories"] or [])
            item_categories[row["item_id"]] = categories
            r = rank_of.get(row["item_id"])
            if r is not None:
                for c in categories:
                    members.setdefault(c, []).append(r)
    top = float(max(int(popularity.max()), 1))
    sorted_members = {c: np.sort(np.asarray(v, dtype=np.int64)) for c, v in members.items()}
    return FallbackPlan(ranked, popularity[ranked] / top, rank_of, item_categories, sorted_members)


def _fallback_users(wh: Warehouse, seqs: DataFrame) -> DataFrame | None:
    """``(user_id, seen)`` of users in ``users`` or ``interactions`` but not in ``user_sequences``."""
    parts = []
    if wh.exists(schemas.USERS):
        parts.append(wh.read(schemas.USERS).select("user_id", F.lit(None).cast("string").alias("item_id")))
    if wh.exists(schemas.INTERACTIONS):
        interactions = wh.read(schemas.INTERACTIONS)
        schemas.require_columns(interactions, schemas.INTERACTIONS_SCHEMA, schemas.INTERACTIONS)
        parts.append(interactions.select("user_id", "item_id"))
    if not parts:
        return None
    touched = parts[0]
    for other in parts[1:]:
        touched = touched.unionByName(other)
    return (
        touched.where(F.col("user_id").isNotNull())
        .join(seqs.select("user_id"), "user_id", "left_anti")
        .groupBy("user_id")
        .agg(F.collect_set("item_id").alias("seen"))  # nulls (users without interactions) drop out
    )


def _fallback_frame(
    wh: Warehouse, seqs: DataFrame, catalogue: Catalogue, popularity: np.ndarray, k: int, token: str, staged: Staged
) -> tuple[DataFrame, Staged] | None:
    """Popularity lists for users without a usable history, or None when there are none to find.

    Users come from ``users`` and ``interactions``; those in ``user_sequences`` are scored by
    the model. A fallback user's list is the most popular known items sharing a category with
    an item the user touched (most popular first), then global popularity; never an item the
    user touched. Scores: popularity share of the item (``count / max count``), plus 1 for a
    category match, so they fall with the rank. Returns the lists and the staged
    :class:`FallbackPlan` (to unpersist when the job is done).
    """
    candidates = _fallback_users(wh, seqs)
    if candidates is None:
        return None
    plan_staged = stage(wh.root, _fallback_plan(wh, catalogue, popularity))

    def fallback_partition(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        bundle = worker_bundles(token, staged)[0]
        plan = plan_staged.value()
        for frame in frames:
            lists = [plan.list_for([] if seen is None else list(seen), k) for seen in frame["seen"]]
            if lists:
                items, scores = np.stack([a for a, _ in lists]), np.stack([b for _, b in lists])
                yield _list_rows(list(frame["user_id"]), items, scores, bundle, True)

    return candidates.mapInPandas(fallback_partition, _SCORED_SCHEMA), plan_staged


def run_score(
    wh: Warehouse,
    model_name: str,
    cfg: ScoreConfig,
    version: str | None = None,
    run_date: dt.date | None = None,
    top_k: int | None = None,
    *,
    als_cfg: EvaluateConfig | None = None,
    model_loader: ModelLoader | None = None,
) -> ScoreReport:
    """Write the top-K recommendations of every user into the ``run_date`` partition.

    Args:
        wh: warehouse (carries the session).
        model_name: a trained model, or a baseline (``popularity``, ``als``, ``content``).
        cfg: the ``score`` section (``item_chunk``, ``user_batch``, ``hybrid``, ``popularity_penalty``).
        version: model version (default: the latest).
        run_date: partition to replace (default: today, UTC).
        top_k: K (default: ``cfg.top_k``).
        als_cfg: ALS settings when ALS is the model or a hybrid part (default ``EvaluateConfig()``).
        model_loader: ``load_model`` replacement (tests); default :func:`longtail.inference.load_model`.

    Returns:
        :class:`ScoreReport` with users scored, fallbacks, coverage, tail share, diversity.

    Raises:
        ModelNotFoundError: unknown model name or version. InputError: K larger than some
            user's unseen catalogue, or a bad hybrid. TableNotFoundError / SchemaError: inputs.
        Nothing is written when any of these is raised.
    """
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.timezone.utc)
    run_date = run_date or started_at.date()
    k = int(top_k if top_k is not None else cfg.top_k)
    if k < 1:
        raise InputError(f"--top-k {k}: must be at least 1")
    seqs = read_user_sequences(wh)
    catalogue = load_catalogue(wh, include_new_items=True)
    factory = ScorerFactory(
        wh, catalogue, "all", als_cfg or EvaluateConfig(), model_loader, popularity_penalty=cfg.popularity_penalty
    )
    hybrid = cfg.hybrid if hybrid_on(cfg.hybrid) else None
    scorer = factory.hybrid(model_name, version, hybrid) if hybrid is not None else factory.scorer(model_name, version)
    bundle = make_bundle(scorer, catalogue, hybrid)
    rankable = max(catalogue.size - len(bundle.excluded), 1)
    if k > rankable:  # before anything is allocated per user: no user could get K unseen items
        raise InputError(f"--top-k {k}: larger than the whole rankable catalogue ({rankable} items); nothing written")
    token, staged = stage_bundles(wh, [bundle])
    shipped = [staged]
    scored = score_users_frame(seen_items(wh, seqs, catalogue), token, staged, k, cfg.user_batch, cfg.item_chunk)
    # Fallback lists rank by item_stats popularity (training part): already loaded, no extra pass.
    fallback = _fallback_frame(wh, seqs, catalogue, catalogue.popularity, k, token, staged)
    if fallback is not None:
        scored = scored.unionByName(fallback[0])
        shipped.append(fallback[1])
    scored = scored.persist()
    try:
        figures = _run_figures(scored, k, rankable)
        recs = _recommendations(scored, scorer.name, scorer.version, run_date, started_at)
        with wh.job():
            wh.write(recs, schemas.RECOMMENDATIONS, mode="overwrite", partition_by=["run_date"],
                     replace_partitions={"run_date": run_date})
            wh.append_rows(schemas.RECOMMENDATION_RUNS, [(
                run_date, scorer.name, scorer.version, figures["users"], figures["coverage"],
                figures["tail_share"], figures["diversity"], started_at, dt.datetime.now(dt.timezone.utc),
            )])
    finally:
        scored.unpersist()
        for handle in shipped:
            handle.unpersist()
    new_items = int(np.isin(np.arange(catalogue.n_known, catalogue.size), bundle.excluded, invert=True).sum())
    return ScoreReport(
        model=scorer.name, model_version=scorer.version, run_date=run_date, top_k=k, new_items=new_items,
        seconds=time.perf_counter() - started, table=wh.path(schemas.RECOMMENDATIONS), **figures,
    )


def _run_figures(scored: DataFrame, k: int, rankable: int) -> dict[str, Any]:
    """Users, fallbacks, coverage, tail share and diversity of the lists, in one aggregation.

    Raises:
        InputError: some user's list is shorter than ``k`` (K larger than their unseen catalogue).
    """
    # Every user has exactly one rank-1 row; one distinct count keeps it a single aggregation.
    first = F.col("rank") == 1
    stats = scored.agg(
        F.count(F.when(first, 1)).alias("users"),
        F.count(F.when(first & F.col("fallback"), 1)).alias("fallback_users"),
        F.countDistinct("item_id").alias("items"),
        F.avg(F.col("is_tail").cast("double")).alias("tail_share"),
        F.avg("list_diversity").alias("diversity"),
        F.min("list_length").alias("shortest"),
    ).collect()[0]
    if stats["users"] and stats["shortest"] < k:
        raise InputError(
            f"--top-k {k}: larger than the unseen catalogue of some users (a user has only "
            f"{stats['shortest']} unseen items of {rankable} rankable); nothing written"
        )
    return {
        "users": int(stats["users"] or 0), "fallback_users": int(stats["fallback_users"] or 0),
        "coverage": float(stats["items"] or 0) / rankable, "tail_share": float(stats["tail_share"] or 0.0),
        "diversity": None if stats["diversity"] is None else float(stats["diversity"]),
    }


def _recommendations(scored: DataFrame, model: str, version: str, run_date: dt.date, at: dt.datetime) -> DataFrame:
    """The scored lists as rows of the ``recommendations`` table."""
    recs = (
        scored.withColumn("model", F.lit(model))
        .withColumn("model_version", F.lit(version))
        .withColumn("run_date", F.lit(run_date).cast("date"))
        .withColumn("generated_at", F.lit(at).cast("timestamp"))
    )
    return schemas.conform(recs, schemas.RECOMMENDATIONS)
