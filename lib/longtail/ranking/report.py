"""The evaluation report (``docs/contracts.md``) from per-user ranks: pure pandas and numpy.

Evaluation stays apart from the models: the ``evaluate`` stage turns any scorer into one
rank per user and protocol plus the full top-K lists; everything below is arithmetic on those.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd

from longtail.ranking.metrics import coverage, hit_rate, ndcg, tail_coverage

SEGMENTS = ("overall", "tail_item", "head_item", "tail_user", "head_user")


def segment_metrics(ranks: pd.DataFrame, column: str, k: int, recall_at: int | None) -> dict[str, dict[str, float]]:
    """HR@k, NDCG@k (and recall@``recall_at``) overall and per segment from per-user ranks.

    Args:
        ranks: one row per user with ``tail_user``, ``tail_item`` (bool) and the rank column.
        column: which rank column (``sampled_rank`` or ``full_rank``).
        k: the cut-off of HR and NDCG.
        recall_at: add recall at this cut-off (one target: the share with rank below it); None: none.
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
        if recall_at is not None:
            figures[f"recall@{recall_at}"] = hit_rate(r, recall_at)
        out[segment] = figures
    return out


def build_report(
    model: str, version: str, dataset: dict[str, int], ranks: pd.DataFrame, top_items: np.ndarray,
    n_items: int, tail_items: np.ndarray, settings: dict[str, Any], has_embeddings: bool,
) -> dict[str, Any]:
    """The contract JSON (``_reports/evaluation-<model>.json``) from per-user ranks and recommended items.

    Args:
        settings: ``protocols``, ``negatives``, ``k`` and ``recall_at`` (the ``evaluate`` section).
    """
    k = settings["k"]
    protocols: dict[str, Any] = {}
    if "sampled" in settings["protocols"]:
        protocols["sampled"] = {"negatives": settings["negatives"], **segment_metrics(ranks, "sampled_rank", k, None)}
    if "full" in settings["protocols"]:
        protocols["full"] = segment_metrics(ranks, "full_rank", k, settings["recall_at"])
    diversity = float(ranks["diversity"].mean()) if has_embeddings and len(ranks) else None
    return {
        "model": model,
        "model_version": version,
        "dataset": dataset,
        "protocols": protocols,
        "catalog": {
            f"coverage@{k}": coverage(top_items, n_items),
            f"tail_coverage@{k}": tail_coverage(top_items, tail_items),
            f"diversity@{k}": diversity,
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
