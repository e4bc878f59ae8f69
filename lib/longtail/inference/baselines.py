"""Baselines: popularity, ALS and content similarity, as :class:`~longtail.inference.scorers.Scorer` s.

Everything is a dot product ``user_vector @ item_vector`` over the catalogue (rows = item idx,
row 0 padding), so trained models, baselines and hybrids share one scoring path:

- ``popularity``: user vector ``[1]``, item vector ``[count]`` (interactions in the history the
  caller chooses: training part for evaluation, everything for serving).
- ``als``: Spark MLlib ALS (implicit feedback) on the same interactions; a user's vector is
  the ALS least-squares step *folded in* from the history given at scoring time, exactly the
  update Spark's last half-iteration applies (so it equals ALS's own user factors on the
  training history, and works for histories ALS never saw).
- ``content``: mean of the history's L2-normalised semantic (LLM) item embeddings against the
  items' normalised embeddings (cosine), the content-similarity part of the hybrid.
"""
from __future__ import annotations

import numpy as np
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from longtail.ranking.vectors import unit_rows

#: Names ``evaluate`` and ``score`` accept besides trained models.
BASELINES = ("popularity", "als", "content")


class PopularityScorer:
    """Most popular first; identical list (minus seen items) for every user."""

    name = "popularity"

    def __init__(self, popularity: np.ndarray, known: np.ndarray, version: str = "1") -> None:
        self.version = version
        self._pop = torch.as_tensor(np.asarray(popularity, dtype=np.float32))[:, None]
        self._known = np.asarray(known, dtype=bool)

    def user_vectors(self, histories: torch.Tensor) -> torch.Tensor:
        return torch.ones((histories.shape[0], 1))

    def item_vectors(self) -> torch.Tensor:
        return self._pop

    def scorable(self) -> np.ndarray:
        return self._known


class ContentScorer:
    """Cosine between the mean of the history's item embeddings and each item's embedding."""

    name = "content"

    def __init__(self, embeddings: np.ndarray, has_embedding: np.ndarray, version: str = "1") -> None:
        self.version = version
        self._emb = unit_rows(torch.as_tensor(np.asarray(embeddings, dtype=np.float32)))
        self._has = np.asarray(has_embedding, dtype=bool)

    def user_vectors(self, histories: torch.Tensor) -> torch.Tensor:
        mask = (histories > 0).to(torch.float32)
        return unit_rows((self._emb[histories] * mask[..., None]).sum(dim=1))

    def item_vectors(self) -> torch.Tensor:
        return self._emb

    def scorable(self) -> np.ndarray:
        return self._has


class ALSScorer:
    """Implicit-feedback ALS item factors; user vectors folded in from the given history.

    Fold-in (Spark MLlib's normal equation for one user, confidence ``1 + alpha * r`` with
    ``r`` the number of times an item occurs in the history and regularisation scaled by
    the number of distinct items):
    ``(Y'Y + sum_j alpha r_j y_j y_j' + reg * n I) x = sum_j (1 + alpha r_j) y_j``.
    """

    name = "als"

    def __init__(
        self, item_factors: np.ndarray, known: np.ndarray, reg: float, alpha: float = 1.0, version: str = "1"
    ) -> None:
        self.version = version
        self.reg = float(reg)
        self.alpha = float(alpha)
        self._y = torch.as_tensor(np.asarray(item_factors, dtype=np.float32))
        y64 = self._y.to(torch.float64)
        self._yty = y64.T @ y64
        self._known = np.asarray(known, dtype=bool)

    def user_vectors(self, histories: torch.Tensor) -> torch.Tensor:
        b, r = histories.shape[0], self._y.shape[1]
        y = self._y.to(torch.float64)[histories]  # [B, L, r]
        present = histories > 0
        # First occurrence of each item per row: duplicates add confidence, not new ratings.
        ordered, _ = torch.sort(histories, dim=1)
        first_sorted = torch.ones_like(ordered, dtype=torch.bool)
        first_sorted[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        distinct = ((ordered > 0) & first_sorted).sum(dim=1).to(torch.float64)  # [B]
        occurrences = present.to(torch.float64)
        weighted = y * occurrences[..., None]
        a = self._yty.expand(b, r, r) + self.alpha * torch.einsum("blr,bls->brs", weighted, y)
        a = a + (self.reg * distinct + 1e-9)[:, None, None] * torch.eye(r, dtype=torch.float64)
        # sum_j (1 + alpha r_j) y_j = sum_positions alpha y + sum_distinct y
        distinct_items = torch.where(first_sorted & (ordered > 0), ordered, torch.zeros_like(ordered))
        rhs = self.alpha * weighted.sum(dim=1) + self._y.to(torch.float64)[distinct_items].sum(dim=1)
        x = torch.linalg.solve(a, rhs[..., None])[..., 0]
        return x.to(torch.float32)

    def item_vectors(self) -> torch.Tensor:
        return self._y

    def scorable(self) -> np.ndarray:
        return self._known


# --------------------------------------------------------------------------- fitting (Spark)


def history_pairs(user_sequences: DataFrame, history: str) -> DataFrame:
    """``(user_idx, item_idx, count)`` from one array column of ``user_sequences``.

    Args:
        history: ``train`` (``train_item_idxs``), ``train_valid`` (``train_item_idxs`` plus
            ``valid_item_idx``) or ``all`` (``item_idxs``).
    """
    if history == "train":
        items = F.col("train_item_idxs")
    elif history == "train_valid":
        items = F.concat(
            F.coalesce(F.col("train_item_idxs"), F.array().cast("array<int>")),
            F.array(F.col("valid_item_idx")),
        )
    elif history == "all":
        items = F.col("item_idxs")
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown history {history!r}")
    return (
        user_sequences.select("user_idx", F.explode(items).alias("item_idx"))
        .where(F.col("item_idx").isNotNull() & (F.col("item_idx") > 0))
        .groupBy("user_idx", "item_idx")
        .agg(F.count(F.lit(1)).alias("count"))
    )


def item_counts(user_sequences: DataFrame, history: str, n: int) -> np.ndarray:
    """Interactions per item idx over the chosen history, as a dense ``[n]`` int64 array."""
    rows = history_pairs(user_sequences, history).groupBy("item_idx").agg(F.sum("count").alias("c")).collect()
    out = np.zeros(n, dtype=np.int64)
    for r in rows:
        if 0 < r["item_idx"] < n:
            out[r["item_idx"]] = r["c"]
    return out


def als_version(rank: int, max_iter: int, reg: float, seed: int, alpha: float = 1.0) -> str:
    """The version string of an ALS baseline: its settings (the data is the warehouse's)."""
    return f"rank{rank}-iter{max_iter}-reg{reg:g}-alpha{alpha:g}-seed{seed}"


def fit_als(
    pairs: DataFrame,
    n: int,
    known: np.ndarray,
    rank: int,
    max_iter: int,
    reg: float,
    seed: int,
    alpha: float = 1.0,
) -> ALSScorer:
    """Train Spark MLlib ALS (implicit preferences) and return its item factors as a scorer.

    Args:
        pairs: ``(user_idx, item_idx, count)`` (see :func:`history_pairs`).
        n: catalogue size (item idxs ``< n``); items without factors get zero vectors.
        known: ``[n]`` bool, the items the scorer may rank.
        rank, max_iter, reg, seed, alpha: ALS settings (``regParam``, ``alpha``).
    """
    from pyspark.ml.recommendation import ALS

    als = ALS(
        rank=rank, maxIter=max_iter, regParam=reg, alpha=alpha, implicitPrefs=True, seed=seed,
        userCol="user_idx", itemCol="item_idx", ratingCol="count", coldStartStrategy="drop",
        nonnegative=False,
    )
    model = als.fit(pairs.withColumn("count", F.col("count").cast("float")))
    factors = np.zeros((n, rank), dtype=np.float32)
    for row in model.itemFactors.collect():
        if 0 < row["id"] < n:
            factors[row["id"]] = np.asarray(row["features"], dtype=np.float32)
    return ALSScorer(factors, known, reg=reg, alpha=alpha, version=als_version(rank, max_iter, reg, seed, alpha))
