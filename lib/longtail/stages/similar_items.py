"""``longtail similar-items``: the item -> items table (``similar_items``) of a trained model.

Shape of the job:

1. The availability rules (``availability.table``) are read first: a bad table stops the job
   before anything else runs (:mod:`longtail.inference.availability`).
2. The driver builds the catalogue (``item_stats`` items and items with text only), the trained
   model's item vectors in its idx space, and one view per source of ``similar_items.sources``
   (:mod:`longtail.inference.similar`: ``collaborative``, ``semantic``, ``blend``; the hubness of every
   item, on a seeded sample of query items). With ``semantic_weight: auto`` the blend's weights are
   chosen on validation pairs (a user's last training item -> the validation item; never a test
   item) from a grid that holds both sources. Above 200,000 allowed items (``retrieval: auto``), or
   with ``retrieval: ann``, a faiss candidate index per view (the choice and the index of
   ``score.retrieval``). Views and indexes go to the executors as one side file in the warehouse.
3. One ``mapInPandas`` over the catalogue's item idxs: each task ranks its items' neighbours per
   source in batches of ``item_batch`` (exact top K over the catalogue in ``item_chunk`` slices,
   or among the index's candidates), never the item itself nor an unavailable item.
4. The rows are computed once (persisted: the figures read them), then one atomic write replaces
   the ``run_date`` partition of ``similar_items`` (every source and model of that date).

``score`` is the ranking score: the similarity (cosine) minus ``hubness_penalty x hubness`` of the
similar item, so it falls with the rank; for ``blend`` the weighted sum of both adjusted scores
z-scored per query item. Unavailable items keep their own lists (a product page of an item out of stock shows its
substitutes) and are never in one.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longtail.core import schemas
from longtail.core.config import SimilarItemsConfig
from longtail.core.errors import InputError, ModelNotFoundError
from longtail.core.files import write_bytes
from longtail.core.session import default_parallelism
from longtail.core.tables import Warehouse
from longtail.inference import Catalogue, ModelScorer, Staged, load_catalogue, stage
from longtail.inference.availability import read_availability
from longtail.inference.baselines import BASELINES
from longtail.inference.scorers import ModelLoader
from longtail.inference.similar import (
    BlendChoice,
    SimilarityView,
    blend_view,
    check_list_length,
    choose_blend,
    make_index,
    source_views,
    table_figures,
)
from longtail.inference.users import sample_users
from longtail.ranking.retrieval import CandidateIndex, choose_retrieval

_ROWS_SCHEMA = T.StructType([
    T.StructField("item_id", T.StringType()),
    T.StructField("rank", T.IntegerType()),
    T.StructField("similar_item_id", T.StringType()),
    T.StructField("score", T.FloatType()),
    T.StructField("source", T.StringType()),
    T.StructField("is_tail", T.BooleanType()),
])


@dataclass
class SimilarItemsReport:
    """What ``longtail similar-items`` wrote; ``figures``: per source ``items``, ``coverage``, ``tail_share``."""

    model: str
    model_version: str
    run_date: dt.date
    top_k: int
    figures: dict[str, dict[str, float]]
    unavailable_items: int
    retrieval: str
    seconds: float
    table: str = ""
    #: The blend's semantic weight, and how it was set (``auto`` on N validation pairs, or the setting).
    semantic_weight: float | None = None
    weight_note: str = ""
    #: The blend block of the run's report (:func:`blend_block`); None without a blend.
    blend: dict | None = None

    def __str__(self) -> str:
        parts = "; ".join(
            f"{s} {int(f['items'])} items, coverage {f['coverage']:.3f}, tail share {f['tail_share']:.3f}"
            for s, f in self.figures.items()
        )
        return (
            f"similar items {self.run_date}: top-{self.top_k} from {self.model} {self.model_version} ({parts}); "
            f"{self.unavailable_items} unavailable items excluded; {self.retrieval}; {self.seconds:.1f}s -> {self.table}"
            + (f"; blend weights collaborative {self.blend['collaborative_weight']:g}, semantic "
               f"{self.blend['semantic_weight']:g} ({self.weight_note})" if self.blend is not None else "")
        )

    def as_json(self) -> dict:
        """The report as ``_reports/similar-items-<model>.json`` holds it (dates as ISO strings)."""
        out = dataclasses.asdict(self)
        out["run_date"] = self.run_date.isoformat()
        return out


@dataclass
class _Plan:
    """What the tasks need, staged once: the views, their indexes (None: exact), ids and tail flags."""

    views: list[SimilarityView]
    indexes: list[CandidateIndex | None]
    item_ids: list[str]
    tail: np.ndarray
    k: int
    item_batch: int
    item_chunk: int
    candidates: int


def run_similar_items(
    wh: Warehouse,
    model_name: str,
    cfg: SimilarItemsConfig,
    version: str | None = None,
    run_date: dt.date | None = None,
    top_k: int | None = None,
    *,
    availability: str | None = None,
    model_loader: ModelLoader | None = None,
) -> SimilarItemsReport:
    """Write the top-K similar items of every catalogue item, per source, into the ``run_date`` partition.

    Args:
        wh: warehouse (carries the session); reads ``item_stats``, ``item_embeddings``, ``items`` and
            the model. model_name, version: a trained model (default version: the latest).
        cfg: the ``similar_items`` section. run_date: partition to replace (default: today, UTC).
        top_k: K (default ``cfg.top_k``). availability: ``availability.table`` (None: all available).
        model_loader: ``load_model`` replacement (tests).

    Returns:
        :class:`SimilarItemsReport`.

    Raises:
        ModelNotFoundError: unknown model or version, or a baseline (no item vectors).
        InputError: K more than a source can fill, a source without vectors.
        TableNotFoundError / SchemaError: inputs, or ``availability.table``.
        EnvironmentProblem: ``retrieval`` is ann and faiss is not installed.
        Nothing is written when any of these is raised.
    """
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.timezone.utc)
    run_date = run_date or started_at.date()
    k = int(top_k if top_k is not None else cfg.top_k)
    if k < 1:
        raise InputError(f"--top-k {k}: must be at least 1")
    rules = read_availability(wh, availability, run_date)  # first: a bad table stops the job at once
    catalogue = load_catalogue(wh, include_new_items=True)
    model = _model_scorer(wh, model_name, version, catalogue, model_loader)
    blocked = rules.mask(catalogue.item_ids)
    semantic = (catalogue.embeddings, catalogue.has_embedding) if catalogue.has_embedding.any() else None
    collaborative = (model.item_vectors().numpy(), model.scorable())
    singles = source_views(list(cfg.sources), collaborative, semantic, blocked, cfg.hubness_penalty, cfg.hubness_queries)
    weights, choice = _blend_weights(wh, cfg, singles, catalogue.tail, k)
    views = [blend_view(singles, weights) if s == "blend" else singles[s] for s in cfg.sources]
    check_list_length(views, k)
    indexes = [
        make_index(v, cfg.ann_nlist, cfg.ann_nprobe, tune_items=cfg.ann_tune_items,
                   target_recall=cfg.ann_target_recall, candidates=cfg.candidates, k=k)
        if choose_retrieval(cfg.retrieval, int(v.allowed.sum())) == "ann" else None
        for v in views
    ]
    plan = _Plan(views, indexes, list(catalogue.item_ids), catalogue.tail.copy(), k, cfg.item_batch, cfg.item_chunk,
                 cfg.candidates)
    staged = stage(wh.root, plan)
    rows = _similar_frame(wh, staged, catalogue.size).persist()
    try:
        figures = table_figures(rows)
        table = schemas.stamped(rows, schemas.SIMILAR_ITEMS, model=model.name, version=model.version,
                                run_date=run_date, at=started_at)
        with wh.job():
            wh.write(table, schemas.SIMILAR_ITEMS, mode="overwrite", partition_by=["run_date"],
                     replace_partitions={"run_date": run_date})
    finally:
        rows.unpersist()
        staged.unpersist()
    report = SimilarItemsReport(
        model=model.name, model_version=model.version, run_date=run_date, top_k=k,
        figures={s: figures[s] for s in cfg.sources if s in figures},
        unavailable_items=int((blocked & (catalogue.known | catalogue.has_embedding)).sum()),
        retrieval=_retrieval(views, indexes, cfg.candidates), seconds=time.perf_counter() - started,
        table=wh.path(schemas.SIMILAR_ITEMS), **_blend_fields(cfg, weights, choice),
    )
    # After the commit: the report says how the table of the run was made (the blend's weights).
    write_bytes(f"{wh.root.rstrip('/')}/_reports/similar-items-{model.name}.json",
                json.dumps(report.as_json(), indent=2).encode("utf-8"))
    return report


def _blend_weights(
    wh: Warehouse, cfg: SimilarItemsConfig, singles: dict[str, SimilarityView], tail: np.ndarray, k: int,
) -> tuple[tuple[float, float], BlendChoice | None]:
    """The blend's ``(collaborative, semantic)`` weights: the settings, or with ``semantic_weight:
    auto`` the share chosen on validation pairs (:func:`choose_blend`; none of the test items)."""
    if cfg.semantic_weight != "auto":
        return (cfg.collaborative_weight, float(cfg.semantic_weight)), None
    if "blend" not in cfg.sources or len(singles) < 2:
        return (1.0, 1.0), None  # no blend, or a blend of one source: the weights do not matter
    choice = choose_blend(singles, _validation_pairs(wh, cfg.weight_pairs), tail, k, tail_queries=cfg.hubness_queries,
                          item_chunk=cfg.item_chunk, hr_tolerance=cfg.hr_tolerance)
    return (choice.weights if choice is not None else (1.0, 1.0)), choice


def _blend_fields(cfg: SimilarItemsConfig, weights: tuple[float, float], choice: BlendChoice | None) -> dict:
    """The report's ``semantic_weight``, ``weight_note`` and ``blend`` (None without a blend)."""
    if "blend" not in cfg.sources:
        return {}
    if cfg.semantic_weight != "auto":
        note = "set"
    elif choice is None:
        note = "auto: nothing to choose on (one source, or no validation pair)"
    else:
        f = choice.figures[choice.share]
        note = (f"auto: share {choice.share:g} of {len(choice.figures)} on {choice.pairs} validation pairs, "
                f"HR@K {f['hr']:.4f}, tail items {f['tail_hr']:.4f}, tail share {f['tail_share']:.3f}")
    return {"semantic_weight": weights[1], "weight_note": note, "blend": blend_block(cfg, weights, choice)}


def blend_block(cfg: SimilarItemsConfig, weights: tuple[float, float], choice: BlendChoice | None) -> dict:
    """``{"collaborative_weight", "semantic_weight", "chosen", "validation"}``: the weights the blend
    was written with, ``chosen`` ``"validation"`` (``auto``) or ``"setting"``, and with ``auto`` the
    validation figures of every share of the grid (``{"pairs", "tail_pairs", "shares": {share: {"hr",
    "tail_hr", "tail_share"}}}``; None otherwise)."""
    validation = None if choice is None else {
        "pairs": choice.pairs, "tail_pairs": choice.tail_pairs,
        "shares": {f"{s:g}": {m: round(v, 6) for m, v in f.items()} for s, f in choice.figures.items()},
    }
    return {"collaborative_weight": weights[0], "semantic_weight": weights[1],
            "chosen": "validation" if choice is not None else "setting", "validation": validation}


def _validation_pairs(wh: Warehouse, most: int) -> np.ndarray:
    """``[P, 2]`` (last training item, validation item) of a seeded hash sample of about ``most`` users."""
    seqs = wh.read(schemas.USER_SEQUENCES)
    schemas.require_columns(seqs, schemas.USER_SEQUENCES_SCHEMA, schemas.USER_SEQUENCES)
    pairs = seqs.select(
        "user_idx", F.element_at("train_item_idxs", -1).alias("query"), F.col("valid_item_idx").alias("next")
    ).where((F.size("train_item_idxs") > 0) & (F.col("next") > 0) & (F.col("query") > 0))
    pairs = sample_users(pairs, most, pairs.count(), seed=42)
    table = pairs.select("query", "next").toArrow()
    return np.stack([table.column("query").to_numpy(zero_copy_only=False),
                     table.column("next").to_numpy(zero_copy_only=False)], axis=1).astype(np.int64)


def _model_scorer(wh, name: str, version: str | None, catalogue: Catalogue, loader: ModelLoader | None) -> ModelScorer:
    """The trained model in catalogue idx space, its own items only (no item placed from text here:
    the ``semantic`` source is where text-only items come in)."""
    if name in BASELINES:
        raise ModelNotFoundError(f"model {name}: a baseline has no item vectors; similar-items needs a trained model")
    if loader is None:
        from longtail.inference.store import load_model as loader  # noqa: PLC0415 - torch models load lazily
    return ModelScorer(loader(wh, name, version), catalogue, text_items=False)


def _retrieval(views: list[SimilarityView], indexes: list[CandidateIndex | None], candidates: int) -> str:
    kinds = {v.source: ("exact" if i is None else f"ann ({i.describe()}, {candidates} candidates)")
             for v, i in zip(views, indexes)}
    return "exact" if set(kinds.values()) == {"exact"} else ", ".join(f"{s} {k}" for s, k in kinds.items())


def _similar_frame(wh: Warehouse, staged: Staged, size: int) -> DataFrame:
    """One row per (source, item, rank): the lists of every catalogue item idx (lazy)."""

    def lists_of(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        plan: _Plan = _worker_plan(staged)
        for frame in frames:
            idxs = frame["id"].to_numpy(dtype=np.int64)
            for view, index in zip(plan.views, plan.indexes):
                mine = idxs[view.rows[idxs]]
                for start in range(0, len(mine), plan.item_batch):
                    yield _rows(plan, view, index, mine[start : start + plan.item_batch])

    spark = wh.spark
    return spark.range(1, max(size, 2), numPartitions=default_parallelism(spark)).mapInPandas(lists_of, _ROWS_SCHEMA)


def _worker_plan(staged: Staged) -> _Plan:
    """The staged plan in this worker (read once, then cached), torch on the task's cores."""
    import torch
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is not None:
        torch.set_num_threads(max(1, int(context.cpus())))
    return staged.value()


def _rows(plan: _Plan, view: SimilarityView, index: CandidateIndex | None, idxs: np.ndarray) -> pd.DataFrame:
    """The rows of one batch of query items of one view; slots without a neighbour dropped."""
    scores, items = view.top_k(idxs, plan.k, plan.item_chunk, index=index, candidates=plan.candidates)
    ids = np.asarray(plan.item_ids, dtype=object)
    keep = (items > 0).ravel()
    frame = pd.DataFrame({
        "item_id": np.repeat(ids[idxs], plan.k),
        "rank": np.tile(np.arange(1, plan.k + 1, dtype=np.int32), len(idxs)),
        "similar_item_id": ids[items.ravel()],
        "score": scores.ravel(),
        "source": view.source,
        "is_tail": plan.tail[items.ravel()],
    })
    return frame[keep]
