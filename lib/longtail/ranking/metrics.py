"""Ranking metrics, pure numpy: no Spark, no torch.

Conventions: items are dense indexes ``1..n_items`` (0 is padding); a rank is 0-based
(0 = the target is first). Ties between the target and other candidates count half,
the expected rank under a random tie-break, so a model that scores everything equal
gets chance-level figures rather than perfect ones.
"""
from __future__ import annotations

import numpy as np

from longtail.ranking.vectors import unit_rows


def target_ranks(scores: np.ndarray, target_col: np.ndarray | int = 0) -> np.ndarray:
    """0-based rank of each row's target among that row's candidates.

    Args:
        scores: ``[B, C]`` candidate scores; excluded candidates may be ``-inf``.
        target_col: column of the target in each row (an int for all rows, or ``[B]``).

    Returns:
        ``[B]`` float ranks (``.5`` where the target ties with an odd number of others; ``C``
        where the target's score is NaN).
    """
    scores = np.asarray(scores, dtype=np.float64)
    rows = np.arange(scores.shape[0])
    cols = np.broadcast_to(np.asarray(target_col), rows.shape)
    target = scores[rows, cols][:, None]
    greater = (scores > target).sum(axis=1)
    ties = (scores == target).sum(axis=1) - 1
    # A NaN target (a diverged model) compares false with everything: count it as a miss, ranked
    # after every candidate, never as a hit at rank 0.
    return np.where(np.isnan(target[:, 0]), float(scores.shape[1]), greater + ties / 2.0)


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """Share of rows whose target is in the top ``k`` (HR@k; equals recall@k with one target)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return float((ranks < k).mean()) if ranks.size else 0.0


def ndcg(ranks: np.ndarray, k: int) -> float:
    """Mean NDCG@k with one relevant item: ``1 / log2(rank + 2)`` if rank < k, else 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if not ranks.size:
        return 0.0
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(gains.mean())


def mrr(ranks: np.ndarray, k: int) -> float:
    """Mean reciprocal rank cut at ``k``: ``1 / (rank + 1)`` if rank < k, else 0 (one relevant item)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if not ranks.size:
        return 0.0
    return float(np.where(ranks < k, 1.0 / (ranks + 1.0), 0.0).mean())


def gini(counts: np.ndarray) -> float:
    """Gini index of how often each item was recommended (items never recommended count, as 0).

    0: every item gets the same number of slots; towards 1: a few items take all slots. The
    standard long-tail concentration measure of a set of top-K lists.
    """
    x = np.sort(np.asarray(counts, dtype=np.float64).ravel())
    n, total = x.size, x.sum()
    if n == 0 or total <= 0:
        return 0.0
    return float((2.0 * np.sum(np.arange(1, n + 1) * x) / (n * total)) - (n + 1.0) / n)


def sample_negatives(
    rng: np.random.Generator, n_items: int, seen: np.ndarray, n: int
) -> np.ndarray:
    """``n`` distinct items drawn uniformly from ``1..n_items`` minus ``seen``.

    Raises:
        ValueError: fewer than ``n`` unseen items exist.
    """
    seen_set = set(int(i) for i in np.asarray(seen).ravel())
    unseen_count = n_items - len({i for i in seen_set if 1 <= i <= n_items})
    if unseen_count < n:
        raise ValueError(f"only {unseen_count} unseen items for {n} negatives")
    out: list[int] = []
    chosen: set[int] = set()
    # Rejection sampling: fast when the history is a small share of the catalogue.
    while len(out) < n:
        for c in rng.integers(1, n_items + 1, size=2 * (n - len(out)) + 8):
            c = int(c)
            if c not in seen_set and c not in chosen:
                chosen.add(c)
                out.append(c)
                if len(out) == n:
                    break
    return np.asarray(out, dtype=np.int64)


def list_diversities(lists: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """Per list, the mean pairwise ``1 - cosine`` of its items' vectors.

    Args:
        lists: ``[U, K]`` item idxs (K >= 2; a list with K < 2 has diversity 0).
        item_vectors: ``[n_items + 1, E]`` (row = item idx), e.g. semantic embeddings; a zero
            row (no embedding) has cosine 0 with everything.

    Returns:
        ``[U]`` float64.
    """
    lists = np.asarray(lists)
    if lists.ndim != 2 or lists.shape[0] == 0:
        return np.zeros(0 if lists.ndim != 2 else lists.shape[0])
    k = lists.shape[1]
    if k < 2:
        return np.zeros(lists.shape[0])
    v = unit_rows(np.asarray(item_vectors, dtype=np.float64))
    pairs = k * (k - 1)
    out = np.empty(lists.shape[0])
    for start in range(0, lists.shape[0], 4096):
        block = v[lists[start : start + 4096]]  # [b, K, E]
        sims = np.einsum("bke,bje->bkj", block, block)
        off_diag = (sims.sum(axis=(1, 2)) - np.einsum("bkk->b", sims)) / pairs
        out[start : start + 4096] = 1.0 - off_diag
    return out
