"""The evaluation report (``docs/contracts.md``) from per-user ranks: pure pandas and numpy.

Evaluation stays apart from the models: the ``evaluate`` stage turns any scorer into one
rank per user and protocol, per-list figures and recommendation counts per item; everything
below is arithmetic on those.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd

from longtail.ranking.metrics import gini, hit_rate, mrr, ndcg

SEGMENTS = ("overall", "tail_item", "head_item", "tail_user", "head_user")
#: Segments the catalogue figures are also given for: the lists of tail and of head users.
USER_SEGMENTS = ("tail_user", "head_user")


def segment_masks(ranks: pd.DataFrame) -> dict[str, np.ndarray]:
    """Boolean row masks of every segment, from the ``tail_item`` and ``tail_user`` flags."""
    tail_item = ranks["tail_item"].to_numpy(dtype=bool)
    tail_user = ranks["tail_user"].to_numpy(dtype=bool)
    return {
        "overall": np.ones(len(ranks), dtype=bool), "tail_item": tail_item, "head_item": ~tail_item,
        "tail_user": tail_user, "head_user": ~tail_user,
    }


def segment_metrics(ranks: pd.DataFrame, column: str, k: int, recall_at: int | None) -> dict[str, dict[str, float]]:
    """HR@k, NDCG@k, MRR@k (and recall@``recall_at``) overall and per segment from per-user ranks.

    Args:
        ranks: one row per user with ``tail_user``, ``tail_item`` (bool) and the rank column.
        column: which rank column (``sampled_rank`` or ``full_rank``).
        k: the cut-off of HR, NDCG and MRR.
        recall_at: add recall at this cut-off (one target: the share with rank below it); None: none.
    """
    values = ranks[column].to_numpy(dtype=np.float64)
    out = {}
    for segment, mask in segment_masks(ranks).items():
        r = values[mask]
        figures = {f"hr@{k}": hit_rate(r, k), f"ndcg@{k}": ndcg(r, k), f"mrr@{k}": mrr(r, k)}
        if recall_at is not None:
            figures[f"recall@{recall_at}"] = hit_rate(r, recall_at)
        out[segment] = figures
    return out


def catalog_metrics(counts: np.ndarray, lists: pd.DataFrame, known: np.ndarray, tail: np.ndarray,
                    popularity: np.ndarray, k: int, has_embeddings: bool) -> dict[str, float | None]:
    """Figures of a set of top-``k`` lists over the catalogue.

    Args:
        counts: ``[N]`` how many lists hold each item idx.
        lists: one row per list with ``diversity`` (NaN without embeddings).
        known: ``[N]`` items that can be recommended; tail: ``[N]`` tail items among them.
        popularity: ``[N]`` training interactions per item.

    Returns:
        ``coverage@k`` (share of items in some list), ``tail_coverage@k`` (the same among tail
        items), ``gini@k`` (concentration of slots over the items), ``tail_share@k`` (share of
        slots on tail items), ``avg_popularity@k`` (mean training popularity of a slot's item)
        and ``diversity@k`` (mean in-list ``1 - cosine``; None without embeddings).
    """
    counts = np.asarray(counts, dtype=np.float64)
    known = np.asarray(known, dtype=bool)
    tail_known = known & np.asarray(tail, dtype=bool)
    slots = counts[known].sum()
    return {
        f"coverage@{k}": float((counts[known] > 0).mean()) if known.any() else 0.0,
        f"tail_coverage@{k}": float((counts[tail_known] > 0).mean()) if tail_known.any() else 0.0,
        f"diversity@{k}": float(lists["diversity"].mean()) if has_embeddings and len(lists) else None,
        f"gini@{k}": gini(counts[known]),
        f"tail_share@{k}": float(counts[tail_known].sum() / slots) if slots else 0.0,
        f"avg_popularity@{k}": float((counts * popularity)[known].sum() / slots) if slots else 0.0,
    }


def popularity_deciles(known: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """``[N]`` int: the popularity decile of each known item (0 = the most popular tenth), -1 elsewhere.

    Known items are ordered by training popularity (most first, ties by idx) and cut into ten
    groups of (almost) equal size.
    """
    known = np.asarray(known, dtype=bool)
    idx = np.nonzero(known)[0]
    order = idx[np.lexsort((idx, -np.asarray(popularity)[idx]))]
    out = np.full(len(known), -1, dtype=np.int64)
    for d, part in enumerate(np.array_split(order, 10)):
        out[part] = d
    return out


def exposure(counts: np.ndarray, known: np.ndarray, popularity: np.ndarray) -> dict[str, list[float]]:
    """Share of recommended slots by item-popularity decile, beside the deciles' share of interactions.

    Returns:
        ``{"slots": [10], "interactions": [10]}``; decile 1 holds the most popular tenth of the
        catalogue. A model that serves the long tail puts more of its slots in the later deciles
        than their share of interactions.
    """
    deciles = popularity_deciles(known, popularity)
    counts = np.asarray(counts, dtype=np.float64)
    pop = np.asarray(popularity, dtype=np.float64)
    slots = np.array([counts[deciles == d].sum() for d in range(10)])
    inter = np.array([pop[deciles == d].sum() for d in range(10)])
    return {
        "slots": (slots / slots.sum()).tolist() if slots.sum() else [0.0] * 10,
        "interactions": (inter / inter.sum()).tolist() if inter.sum() else [0.0] * 10,
    }


def build_report(
    model: str, version: str, dataset: dict[str, int], ranks: pd.DataFrame, counts: dict[str, np.ndarray],
    catalogue: dict[str, np.ndarray], settings: dict[str, Any], has_embeddings: bool,
) -> dict[str, Any]:
    """The contract JSON (``_reports/evaluation-<model>.json``) from per-user ranks and recommendation counts.

    Args:
        ranks: one row per user (ranks, segment flags, list diversity).
        counts: ``[N]`` recommendation counts per item in the full-protocol top-k lists of the
            ``tail_user`` and of the ``head_user`` lists.
        catalogue: ``known``, ``tail`` and ``popularity`` arrays over item idxs.
        settings: ``protocols``, ``negatives``, ``k`` and ``recall_at`` (the ``evaluate`` section).
    """
    k = settings["k"]
    protocols: dict[str, Any] = {}
    if "sampled" in settings["protocols"]:
        protocols["sampled"] = {"negatives": settings["negatives"], **segment_metrics(ranks, "sampled_rank", k, None)}
    if "full" in settings["protocols"]:
        protocols["full"] = segment_metrics(ranks, "full_rank", k, settings["recall_at"])
    masks = segment_masks(ranks)
    known, tail, popularity = catalogue["known"], catalogue["tail"], catalogue["popularity"]
    total = sum(counts.values())
    return {
        "model": model,
        "model_version": version,
        "k": k,
        "dataset": dataset,
        "protocols": protocols,
        "catalog": catalog_metrics(total, ranks, known, tail, popularity, k, has_embeddings),
        "catalog_by_segment": {
            s: catalog_metrics(counts[s], ranks[masks[s]], known, tail, popularity, k, has_embeddings)
            for s in USER_SEGMENTS
        },
        "exposure": exposure(total, known, popularity),
    }


def report_rows(report: dict[str, Any], evaluated_at: dt.datetime) -> list[tuple]:
    """Rows of the ``evaluation`` table for one report (protocol, segment, metric, value)."""
    model, version, k = report["model"], report["model_version"], report.get("k", 10)

    def row(protocol: str, segment: str, metric: str, value) -> tuple:
        return (model, version, protocol, segment, metric, value, evaluated_at)

    rows = [
        row(protocol, segment, metric, value)
        for protocol, block in report["protocols"].items()
        for segment in SEGMENTS
        for metric, value in block[segment].items()
    ]
    rows += [row("catalog", "overall", metric, value) for metric, value in report["catalog"].items()]
    rows += [
        row("catalog", segment, metric, value)
        for segment, block in report.get("catalog_by_segment", {}).items()
        for metric, value in block.items()
    ]
    for kind, shares in report.get("exposure", {}).items():
        suffix = f"@{k}" if kind == "slots" else ""
        rows += [row("exposure", "overall", f"{kind}_decile_{d + 1:02d}{suffix}", s) for d, s in enumerate(shares)]
    return rows + similar_items_rows(report.get("similar_items"), row)


def similar_items_rows(block: dict[str, Any] | None, row) -> list[tuple]:
    """The ``similar_items`` figures as rows: protocol ``similar_items``, segment ``overall`` or
    ``tail_item``, metric ``<source>_hr@K`` (and ``<source>_coverage``, ``<source>_tail_share`` overall)."""
    rows: list[tuple] = []
    for source, figures in ((block or {}).get("sources") or {}).items():
        for segment in ("overall", "tail_item"):
            rows += [row("similar_items", segment, f"{source}_{m}", v) for m, v in figures.get(segment, {}).items()]
        rows += [row("similar_items", "overall", f"{source}_{m}", figures[m]) for m in ("coverage", "tail_share")]
    return rows
