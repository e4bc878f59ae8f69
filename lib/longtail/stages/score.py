"""``longtail score``: the nightly top-K table of every user.

Shape of the job:

1. The driver builds the *catalogue* (``item_stats`` items, plus items that have text in
   ``item_embeddings``/``items`` but no interactions yet) and a scorer for the model (a
   trained model, a baseline, or a hybrid blend; :mod:`longtail.inference`), computes the item
   matrix once, and ships one :class:`~longtail.inference.bundle.ScoringBundle` to the
   executors as a side file in the warehouse (cloudpickled, so fakes and models defined anywhere
   travel; no Spark broadcast, so it works on Spark Connect and with object-store warehouses).
2. One ``mapInPandas`` over every user: ``user_sequences`` joined once with the item ids each
   user touched (one aggregation of ``users`` and ``interactions``). Each Python worker reads
   and unpickles the bundle once and, per batch of ``user_batch`` users, builds the user
   vectors from the whole history (nothing held out at serving time), scores the catalogue
   in ``item_chunk`` slices with one matrix product each, masks the user's items and keeps
   the exact top K (merge per chunk). Memory per task: ``user_batch x item_chunk`` scores.
   With ``score.retrieval: ann`` (``auto`` above 200,000 rankable items) the driver also builds
   a faiss index of the bundle's item matrix once (:func:`~longtail.inference.make_index`) and
   stages it the same way; each batch searches it for its users' candidates and scores only
   those exactly (seen items masked, the hybrid blend and MMR as above; a user left with too
   few unseen candidates is ranked over the whole catalogue).
3. Users with no usable history (in ``users`` or ``interactions`` but not in
   ``user_sequences``) get popularity within the categories of the items they touched, else
   global popularity, flagged ``fallback = true`` (in the same tasks).
   With ``availability.table`` the items unavailable on the run date (:mod:`longtail.inference.availability`,
   read first, before anything else) join the items the scorer cannot rank: masked in the exact
   scan and in the candidates' ranking, left out of the candidate index and of the fallbacks.
4. The lists are computed once (persisted: the figures and the K-check read them); then one
   atomic write replaces the ``run_date`` partition of ``recommendations``; then one row
   is appended to ``recommendation_runs`` (a rerun of the date appends another; the latest
   ``finished_at`` of a date describes its partition; ``unavailable_items`` says how many
   items the availability rules kept out).

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

import dataclasses
import datetime as dt
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow.compute as pc
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
    make_index,
    read_user_sequences,
    spread,
    stage,
    stage_bundles,
    worker_bundles,
)
from longtail.inference.availability import Availability, read_availability
from longtail.inference.bundle import check_device
from longtail.inference.items import SortedIds
from longtail.inference.scorers import ModelLoader
from longtail.inference.users import tuning_histories
from longtail.models.histories import pad_histories
from longtail.ranking.metrics import list_diversities
from longtail.ranking.retrieval import CandidateIndex, choose_retrieval

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
    #: How the lists were found: ``exact``, or ``ann (<index>, <candidates> candidates)``.
    retrieval: str = "exact"
    #: Catalogue items the availability table kept out of every list (``availability.table``).
    unavailable_items: int = 0

    def __str__(self) -> str:
        div = "n/a" if self.diversity is None else f"{self.diversity:.3f}"
        return (
            f"recommendations {self.run_date}: {self.users} users x top-{self.top_k} from {self.model} "
            f"{self.model_version} ({self.fallback_users} popularity fallbacks, {self.new_items} new items "
            f"rankable from text; {self.unavailable_items} unavailable items excluded); coverage {self.coverage:.3f}, "
            f"tail share {self.tail_share:.3f}, diversity {div}; {self.retrieval}; "
            f"{self.seconds:.1f}s -> {self.table}"
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
    users: DataFrame, token: str, staged: Staged, lookups: Staged | None, k: int, user_batch: int, item_chunk: int,
    index: Staged | None = None, candidates: int = 0, device: str = "auto",
) -> DataFrame:
    """Top-``k`` rows for every row of ``users`` (lazy), from :func:`_scoring_input`.

    One pass over the users: rows with ``modelled`` get the model's list (``item_idxs`` feeds
    the model; the list excludes those and the catalogue items among ``seen``, every item the
    user ever touched, beyond the ``max_len`` kept in ``user_sequences``; may be null); the
    others get the popularity fallback of their ``seen`` (``lookups``: the staged
    :class:`FallbackPlan`, None when no user can lack a history). With ``index`` (the staged
    :func:`~longtail.inference.make_index` of the bundle) the model's lists come from
    ``candidates`` retrieved per user and ranked exactly, else from the whole catalogue.
    ``device`` (``score.device``): where each task's products run
    (:func:`~longtail.inference.bundle.task_device`: ``auto``, ``cpu`` or ``cuda``).
    """

    def score_partition(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        bundle = worker_bundles(token, staged, device)[0]
        search = (index.value(), candidates) if index is not None else None
        for frame in frames:
            # Arrow gives an object column when a batch holds nulls; nulls are not modelled.
            modelled = frame["modelled"].astype("boolean").fillna(False).to_numpy(dtype=bool)
            users = frame[modelled]
            for start in range(0, len(users), user_batch):
                yield _model_rows(users.iloc[start : start + user_batch], bundle, lookups, k, item_chunk, search)
            if not modelled.all():
                yield _fallback_rows(frame[~modelled], bundle, lookups, k)

    # Users of like history length share a batch: the model trims a batch's padding only down to
    # its longest history, so a batch of mixed lengths pays for its longest one throughout
    # (Beauty, one core: 21.7 s -> 8.8 s of model time). A sort within each task, no shuffle.
    ordered = spread(users).sortWithinPartitions(F.size("item_idxs"))
    return ordered.mapInPandas(score_partition, _SCORED_SCHEMA)


def _model_rows(
    part: pd.DataFrame, bundle: ScoringBundle, lookups: Staged | None, k: int, item_chunk: int,
    search: tuple[CandidateIndex, int] | None = None,
) -> pd.DataFrame:
    """The model's lists of one batch of users (``item_idxs``, ``seen`` item ids); ``search``:
    ``(candidate index, score.candidates)`` with ``score.retrieval: ann``, else None (exact)."""
    histories = pad_histories(list(part["item_idxs"]))
    touched = _catalogue_idxs(list(part["seen"]), lookups.value().catalogue if lookups is not None else None)
    seen = pad_histories([
        np.concatenate([np.asarray([] if h is None else h, dtype=np.int64), t])
        for h, t in zip(part["item_idxs"], touched)
    ])
    index, candidates = search if search is not None else (None, 0)
    scores, items = bundle.top_k(histories, k, item_chunk, seen=seen, index=index, candidates=candidates)
    return _list_rows(list(part["user_id"]), items.numpy(), scores.numpy(), bundle, False)


def _catalogue_idxs(seen: list, catalogue: SortedIds | None) -> list[np.ndarray]:
    """For each user of a batch, the catalogue idxs of the item ids it touched (``seen``: one list
    of ids or None per user); ids outside the catalogue drop out. One search for the batch."""
    empty = np.zeros(0, dtype=np.int64)
    if catalogue is None:
        return [empty] * len(seen)
    lengths = np.array([0 if s is None else len(s) for s in seen], dtype=np.int64)
    ids = [i for s in seen if s is not None for i in s]
    idxs, which = catalogue.lookup(ids)
    owner = np.repeat(np.arange(len(seen)), lengths)[which]  # the user of each found idx
    return np.split(idxs, np.searchsorted(owner, np.arange(1, len(seen))))


def _fallback_rows(frame: pd.DataFrame, bundle: ScoringBundle, lookups: Staged | None, k: int) -> pd.DataFrame:
    """Popularity lists of users without a usable history (``seen``: the item ids they touched).

    A list is the most popular known items sharing a category with an item the user touched
    (most popular first), then global popularity; never an item the user touched. Scores:
    popularity share of the item (``count / max count``), plus 1 for a category match, so they
    fall with the rank (:meth:`FallbackPlan.list_for`).
    """
    assert lookups is not None  # such users come only from users/interactions, which stage the plan
    plan = lookups.value()
    lists = [plan.list_for([] if seen is None else list(seen), k) for seen in frame["seen"]]
    items, scores = np.stack([a for a, _ in lists]), np.stack([b for _, b in lists])
    return _list_rows(list(frame["user_id"]), items, scores, bundle, True)


@dataclass
class FallbackPlan:
    """Catalogue-sized lookups built on the driver and shipped once: popularity lists and the
    catalogue idxs of item ids (what a user touched, read as ids from ``interactions``).

    Arrays, not Python dicts: about 100 bytes per item with three categories each (ids as bytes,
    idxs, ranks, category offsets and codes) where dicts of ids, lists and arrays held about 380,
    on the driver and again in every Python worker (docs/scaling.md, "The driver's memory").

    Attributes:
        ranked: known item idxs, most popular first; share: their popularity / the largest.
        rank_by_idx: ``[N]`` position in ``ranked`` of each catalogue idx (-1: not ranked).
        catalogue: item_id -> its catalogue idxs (one: ``sequences`` gives an item one idx; were an
            id repeated, a user who touched it would be spared every idx of it, and the category
            lists would hold the first).
        categorised: item_id of an ``items`` row -> that row; the row's category codes are
            ``category_codes[category_offsets[row]:category_offsets[row + 1]]``.
        member_offsets, member_ranks: category code c -> positions in ``ranked`` of its items,
            ascending: ``member_ranks[member_offsets[c]:member_offsets[c + 1]]``.
    """

    ranked: np.ndarray
    share: np.ndarray
    rank_by_idx: np.ndarray
    catalogue: SortedIds
    categorised: SortedIds
    category_offsets: np.ndarray
    category_codes: np.ndarray
    member_offsets: np.ndarray
    member_ranks: np.ndarray

    def list_for(self, seen: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(item idxs [k], scores [k])`` for a user who touched ``seen``: the most popular items
        sharing a category with them first (score 1 + share), then global popularity (share);
        never a seen item; item 0 and ``-inf`` where the catalogue runs out."""
        seen_ranks = self.rank_by_idx[self.catalogue.lookup(seen)[0]]
        seen_ranks = np.unique(seen_ranks[seen_ranks >= 0])
        rows = self.categorised.lookup(seen)[0]
        codes = np.unique(np.concatenate(
            [self.category_codes[self.category_offsets[r] : self.category_offsets[r + 1]] for r in rows]
        )) if len(rows) else np.zeros(0, dtype=np.int64)
        # Only the k + |seen| most popular of each list can make the top k.
        depth = k + len(seen_ranks)
        starts, ends = self.member_offsets[codes], self.member_offsets[codes + 1]
        in_cats = [self.member_ranks[s : min(s + depth, e)] for s, e in zip(starts, ends)]
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


def _fallback_plan(
    wh: Warehouse, catalogue: Catalogue, popularity: np.ndarray, unavailable: np.ndarray | None = None
) -> FallbackPlan:
    """Known items by popularity (never an ``unavailable`` one: ``[N]`` bool), their categories (from
    ``items``), each category's items, and the catalogue idxs of every item id."""
    ranked = np.argsort(-popularity[: catalogue.n_known], kind="stable")
    ranked = ranked[catalogue.known[ranked]]  # known items, most popular first
    if unavailable is not None:
        ranked = ranked[~unavailable[ranked]]
    rank_by_idx = np.full(catalogue.size, -1, dtype=np.int64)
    rank_by_idx[ranked] = np.arange(len(ranked))
    ids = catalogue.index.sorted_ids()  # the one load_catalogue built
    categorised, offsets, codes, members = _category_lists(wh, ids, rank_by_idx)
    top = float(max(int(popularity.max()), 1))
    return FallbackPlan(ranked, popularity[ranked] / top, rank_by_idx, ids, categorised, offsets, codes, *members)


def _category_lists(wh: Warehouse, catalogue: SortedIds, rank_by_idx: np.ndarray):
    """``(item_id -> items row, [rows + 1] offsets, category codes, (member offsets, member ranks))``
    from the ``items`` table's ``categories`` (Arrow buffers, no Python object per item; empty
    without the table). Each category's members are the ranked items listing it, ascending."""
    if not wh.exists(schemas.ITEMS):
        none = np.zeros(1, dtype=np.int64)
        return SortedIds([]), none, np.zeros(0, dtype=np.int64), (none, np.zeros(0, dtype=np.int64))
    tbl = wh.read(schemas.ITEMS).select("item_id", "categories").toArrow()
    item_ids = tbl.column("item_id").to_pylist()
    listed = tbl.column("categories").combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(listed), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(listed)  # the entries of the non-null lists, in row order
    named = pc.is_valid(flat)  # a null entry names no category
    row_of_entry = np.repeat(np.arange(len(item_ids), dtype=np.int64), lengths)[named.to_numpy(zero_copy_only=False)]
    codes = pc.dictionary_encode(flat.filter(named)).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate(([0], np.cumsum(np.bincount(row_of_entry, minlength=len(item_ids)))))
    found = catalogue.first(item_ids)
    rank_of_row = np.where(found >= 0, rank_by_idx[np.maximum(found, 0)], -1)
    entry_rank = rank_of_row[row_of_entry]
    member = entry_rank >= 0
    # One (category, rank) pair each, by category then rank: a repeated row or entry adds nothing.
    pairs = np.unique(np.stack([codes[member], entry_rank[member]], axis=1), axis=0).reshape(-1, 2)
    n_codes = int(codes.max()) + 1 if len(codes) else 0
    member_offsets = np.concatenate(([0], np.cumsum(np.bincount(pairs[:, 0], minlength=n_codes))))
    member_ranks = pairs[:, 1].copy()
    return SortedIds(item_ids), offsets, codes, (member_offsets, member_ranks)


def _candidate_index(bundle: ScoringBundle, seqs: DataFrame, cfg: ScoreConfig, k: int) -> CandidateIndex:
    """The ann index of ``bundle``; with ``ann_nprobe: auto``, tuned on ``ann_tune_users`` users'
    histories (a seeded hash sample, collected to the driver: their vectors and exact lists)."""
    histories = tuning_histories(seqs, cfg.ann_tune_users) if cfg.ann_nprobe == "auto" else None
    return make_index(bundle, cfg.ann_nlist, cfg.ann_nprobe, histories=histories,
                      target_recall=cfg.ann_target_recall, candidates=cfg.candidates, k=k)


def _scoring_input(wh: Warehouse, seqs: DataFrame) -> tuple[DataFrame, bool]:
    """Every user to list, once: ``(user_id, item_idxs, modelled, seen)``, and whether any
    user can lack a usable history (``users`` or ``interactions`` exists).

    ``modelled`` marks the rows of ``user_sequences`` (scored by the model); the other users
    come from ``users`` or ``interactions`` and get popularity fallbacks. ``seen`` holds the item
    ids each user touched in ``interactions``: ``user_sequences`` keeps only the latest
    ``max_len`` items, and items dropped by the k-core can come back as text-only items;
    neither may be recommended to someone who has them (null without ``interactions``).

    One aggregation of ``interactions`` serves both the model's exclusions and the fallbacks,
    and item ids become catalogue idxs in the Python workers (:class:`FallbackPlan`): no
    second pass over ``interactions`` and no item-id table built on the driver.
    """
    modelled = seqs.select("user_id", "item_idxs", F.lit(True).alias("modelled"))
    parts = []
    if wh.exists(schemas.USERS):
        parts.append(wh.read(schemas.USERS).select("user_id", F.lit(None).cast("string").alias("item_id")))
    if wh.exists(schemas.INTERACTIONS):
        interactions = wh.read(schemas.INTERACTIONS)
        schemas.require_columns(interactions, schemas.INTERACTIONS_SCHEMA, schemas.INTERACTIONS)
        parts.append(interactions.select("user_id", "item_id"))
    if not parts:
        return modelled.withColumn("seen", F.lit(None).cast("array<string>")), False
    touched = parts[0]
    for other in parts[1:]:
        touched = touched.unionByName(other)
    seen = (
        touched.where(F.col("user_id").isNotNull())
        .groupBy("user_id")
        .agg(F.collect_set("item_id").alias("seen"))  # nulls (users without interactions) drop out
    )
    return modelled.join(seen, "user_id", "full"), True


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
    availability: str | None = None,
) -> ScoreReport:
    """Write the top-K recommendations of every user into the ``run_date`` partition.

    Args:
        wh: warehouse (carries the session).
        model_name: a trained model, or a baseline (``popularity``, ``als``, ``content``).
        cfg: the ``score`` section (``item_chunk``, ``user_batch``, ``hybrid``, ``popularity_penalty``,
            ``retrieval`` with ``candidates``, ``ann_nlist``, ``ann_nprobe``; ``device``: where the tasks score).
        version: model version (default: the latest).
        run_date: partition to replace (default: today, UTC).
        top_k: K (default: ``cfg.top_k``).
        als_cfg: ALS settings when ALS is the model or a hybrid part (default ``EvaluateConfig()``).
        model_loader: ``load_model`` replacement (tests); default :func:`longtail.inference.load_model`.
        availability: ``availability.table`` (None: every item available): its items unavailable on
            ``run_date`` are never ranked, by the model (exact or candidate retrieval) or the fallbacks.

    Returns:
        :class:`ScoreReport` with users scored, fallbacks, coverage, tail share, diversity and
        the items the availability rules excluded (also in the run row, ``unavailable_items``).

    Raises:
        ModelNotFoundError: unknown model name or version. InputError: K larger than some
            user's unseen catalogue, or a bad hybrid. TableNotFoundError / SchemaError: inputs.
            EnvironmentProblem: ``retrieval`` is ann and faiss is not installed; ``device`` is cuda and
            Spark assigns the tasks no GPU (:func:`~longtail.inference.bundle.check_device`).
            TableNotFoundError / SchemaError naming ``availability.table``: the table or a column of it.
        Nothing is written when any of these is raised.
    """
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.timezone.utc)
    run_date = run_date or started_at.date()
    k = int(top_k if top_k is not None else cfg.top_k)
    if k < 1:
        raise InputError(f"--top-k {k}: must be at least 1")
    check_device(wh.spark, cfg.device)  # a GPU no task can get stops the job before any work
    rules = read_availability(wh, availability, run_date)  # first: a bad table stops the job at once
    seqs = read_user_sequences(wh)
    catalogue = load_catalogue(wh, include_new_items=True)
    factory = ScorerFactory(
        wh, catalogue, "all", als_cfg or EvaluateConfig(), model_loader, popularity_penalty=cfg.popularity_penalty
    )
    hybrid = cfg.hybrid if hybrid_on(cfg.hybrid) else None
    scorer = factory.hybrid(model_name, version, hybrid) if hybrid is not None else factory.scorer(model_name, version)
    bundle, blocked, excluded = _without_unavailable(make_bundle(scorer, catalogue, hybrid), catalogue, rules)
    rankable = max(catalogue.size - len(bundle.excluded), 1)
    if k > rankable:  # before anything is allocated per user: no user could get K unseen items
        raise InputError(f"--top-k {k}: larger than the whole rankable catalogue ({rankable} items); nothing written")
    # The index is built once, here, before anything is staged (a missing faiss leaves no side file).
    ann = None
    if choose_retrieval(cfg.retrieval, rankable) == "ann":
        ann = _candidate_index(bundle, seqs, cfg, k)
    token, staged = stage_bundles(wh, [bundle])
    shipped = [staged]
    index = None
    if ann is not None:
        index = stage(wh.root, ann)  # a side file next to the bundle's, read once per Python worker
        shipped.append(index)
    retrieval = "exact" if ann is None else f"ann ({ann.describe()}, {cfg.candidates} candidates)"
    users, any_fallback = _scoring_input(wh, seqs)
    lookups = None
    if any_fallback:
        # Fallback lists rank by item_stats popularity (training part): already loaded, no extra pass.
        lookups = stage(wh.root, _fallback_plan(wh, catalogue, catalogue.popularity, blocked))
        shipped.append(lookups)
    scored = score_users_frame(
        users, token, staged, lookups, k, cfg.user_batch, cfg.item_chunk, index=index, candidates=cfg.candidates,
        device=cfg.device,
    )
    # Computed once: the figures (and the K-check) read it, then the write.
    scored = scored.persist()
    try:
        figures = _run_figures(scored, k, rankable)
        recs = schemas.stamped(scored, schemas.RECOMMENDATIONS, model=scorer.name, version=scorer.version,
                               run_date=run_date, at=started_at)
        with wh.job():
            wh.write(recs, schemas.RECOMMENDATIONS, mode="overwrite", partition_by=["run_date"],
                     replace_partitions={"run_date": run_date})
            _append_run_row(wh, (
                run_date, scorer.name, scorer.version, figures["users"], figures["coverage"],
                figures["tail_share"], figures["diversity"], started_at, dt.datetime.now(dt.timezone.utc),
                int(excluded),
            ))
    finally:
        scored.unpersist()
        for handle in shipped:
            handle.unpersist()
    new_items = int(np.isin(np.arange(catalogue.n_known, catalogue.size), bundle.excluded, invert=True).sum())
    return ScoreReport(
        model=scorer.name, model_version=scorer.version, run_date=run_date, top_k=k, new_items=new_items,
        seconds=time.perf_counter() - started, table=wh.path(schemas.RECOMMENDATIONS), retrieval=retrieval,
        unavailable_items=int(excluded), **figures,
    )


def _without_unavailable(
    bundle: ScoringBundle, catalogue: Catalogue, rules: Availability
) -> tuple[ScoringBundle, np.ndarray, int]:
    """The bundle with the unavailable items among its excluded ones, the ``[N]`` unavailable mask,
    and how many items the rules took out of what the scorer could rank (the run row's figure).

    Excluded items are masked in the exact scan and in the candidates' exact ranking alike, and the
    candidate index is built without them (:func:`~longtail.inference.make_index`), so a list of K
    never holds one and never runs short for them.
    """
    blocked = rules.mask(catalogue.item_ids)
    if not blocked.any():
        return bundle, blocked, 0
    excluded = np.union1d(bundle.excluded, np.nonzero(blocked)[0]).astype(np.int64)
    return dataclasses.replace(bundle, excluded=excluded), blocked, len(excluded) - len(bundle.excluded)


def _append_run_row(wh: Warehouse, row: tuple) -> None:
    """Append the run's row to ``recommendation_runs``; a table from before ``unavailable_items``
    gains that column (its older rows read null there)."""
    frame = wh.spark.createDataFrame([row], schemas.RECOMMENDATION_RUNS_SCHEMA)
    wh.write(frame, schemas.RECOMMENDATION_RUNS, mode="append", evolve_schema=True)


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
