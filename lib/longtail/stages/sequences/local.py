"""The ``sequences`` tables computed on the driver, for interactions that fit there.

Spark pays a fixed cost per job (0.1-0.3 s on a local session, more on a cluster or over Spark
Connect), and the distributed path runs about 60-70 jobs (k-core passes, checkpoints, ranked id
maps and segments under adaptive execution) whatever the size: 5-13 s on 3,000 interactions.
Below ``sequences.local_max_rows`` the interactions are collected once (one job) and every step
runs here in pandas and numpy, with the same rules, orders and tie-breaks as the Spark steps in
:mod:`longtail.stages.sequences`, so the tables are equal row for row
(``tests/stages/test_sequences.py`` checks both paths on the same inputs).

Everything here is pure: frames in, frames out; reading and writing stay with the stage.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from longtail.core import schemas
from longtail.core.config import SegmentConfig


@dataclass
class LocalKCore:
    """Result of :func:`k_core_frame` (the driver twin of ``sequences.KCore``)."""

    #: ``user_id``, ``item_id``, ``ts`` (microseconds) of the surviving interactions.
    events: pd.DataFrame
    #: Indexed by ``user_id`` / ``item_id``: ``n`` (interactions) and ``first_ts`` of the survivors.
    users: pd.DataFrame
    items: pd.DataFrame
    before: int
    after: int
    rounds: int


def k_core_frame(events: pd.DataFrame, k: int) -> LocalKCore:
    """Keep only users and items with at least ``k`` interactions, pass after pass, until a pass
    removes nothing (the same passes as ``sequences.k_core``: both sides are judged on the same
    pass, then both filters apply)."""
    current, before, rounds = events, None, 0
    while True:
        users, items = _entities(current, "user_id"), _entities(current, "item_id")
        rows, rounds = len(current), rounds + 1
        before = rows if before is None else before
        if rows == 0 or (users["n"].min() >= k and items["n"].min() >= k):
            return LocalKCore(current, users, items, before, rows, rounds)
        keep = current["user_id"].isin(users.index[users["n"] >= k]) & current["item_id"].isin(
            items.index[items["n"] >= k])
        current = current[keep]


def _entities(events: pd.DataFrame, key: str) -> pd.DataFrame:
    return events.groupby(key, sort=False).agg(n=("ts", "size"), first_ts=("ts", "min"))


def new_ids(entities: pd.DataFrame, known: pd.DataFrame, key: str, idx: str,
            start: int | None = None) -> tuple[pd.DataFrame, int]:
    """The id rows for ``entities`` (indexed by ``key``, with ``first_ts``) missing from the id
    map ``known``: ``max(idx) + 1, ...`` in the order of ``first_ts``, then ``key``.

    Args:
        known: the id map, or only its rows for these entities' keys when ``start`` is given.
        start: the whole map's largest idx (None: ``known``'s own).

    Returns:
        (the new rows: ``key``, ``idx``; the old max id, 0 for an empty map).
    """
    if start is None:
        start = int(known[idx].max()) if len(known) else 0
    fresh = entities.loc[~entities.index.isin(known[key]), ["first_ts"]].reset_index()
    fresh = fresh.sort_values(["first_ts", key], kind="mergesort")
    rows = pd.DataFrame({key: fresh[key].to_numpy(object),
                         idx: np.arange(start + 1, start + 1 + len(fresh), dtype=np.int32)})
    return rows, start


def histories(events: pd.DataFrame, user_map: pd.DataFrame, item_map: pd.DataFrame) -> pd.DataFrame:
    """``user_id``, ``user_idx`` and ``history`` (item_idx list, oldest first; ties on ``ts``
    broken by ``item_id`` then ``item_idx``, as the Spark path's sorted structs are)."""
    rows = events.merge(user_map, on="user_id").merge(item_map, on="item_id")
    rows = rows.sort_values(["user_id", "ts", "item_id", "item_idx"], kind="mergesort")
    users = rows["user_id"].to_numpy(object)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(rows) else np.zeros(0, int)
    return pd.DataFrame({
        "user_id": users[starts], "user_idx": rows["user_idx"].to_numpy(np.int32)[starts],
        "history": np.split(rows["item_idx"].to_numpy(np.int32), starts[1:]) if len(rows) else [],
    })


def train_part(history: np.ndarray) -> np.ndarray:
    """LLM-ESR's training part: all but the last two items; everything below three items."""
    return history[:-2] if len(history) >= 3 else history


def split(history: pd.DataFrame, max_len: int) -> pd.DataFrame:
    """``user_sequences`` rows: the latest ``max_len`` items and their leave-one-out split."""
    seqs = [h[-max_len:] for h in history["history"]]
    valid = [int(s[-2]) if len(s) >= 3 else None for s in seqs]
    test = [int(s[-1]) if len(s) >= 3 else None for s in seqs]
    return pd.DataFrame({
        "user_id": history["user_id"].to_numpy(object), "user_idx": history["user_idx"].to_numpy(np.int32),
        "item_idxs": seqs, "train_item_idxs": [train_part(s) for s in seqs],
        "valid_item_idx": pd.array(valid, dtype="Int32"), "test_item_idx": pd.array(test, dtype="Int32"),
    })


def item_stats(items: pd.DataFrame, item_map: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Per surviving item: ``item_id``, ``item_idx``, ``popularity`` (occurrences in the training
    part of the whole histories) and ``interactions`` (all surviving ones)."""
    parts = [train_part(h) for h in history["history"]]
    counted = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    out = items[["n"]].rename(columns={"n": "interactions"}).reset_index().merge(item_map, on="item_id")
    counts = np.bincount(counted, minlength=int(out["item_idx"].max() or 0) + 1) if len(out) else np.zeros(1)
    out["popularity"] = counts[out["item_idx"].to_numpy()].astype(np.int64)
    out["item_idx"] = out["item_idx"].astype(np.int32)
    return out[["item_id", "item_idx", "popularity", "interactions"]]


def user_stats(history: pd.DataFrame) -> pd.DataFrame:
    """Per user: ``user_id``, ``user_idx``, ``length`` of the whole filtered history."""
    return pd.DataFrame({"user_id": history["user_id"], "user_idx": history["user_idx"],
                         "length": np.fromiter((len(h) for h in history["history"]), np.int32, len(history))})


def segment_items(stats: pd.DataFrame, cfg: SegmentConfig) -> pd.DataFrame:
    """``stats`` with ``segment``: head by ``cfg`` among items with popularity > 0 (as ``sequences.segment_items``)."""
    head = _head(stats, "popularity", "item_idx", cfg.method, cfg.head_item_share, cfg.item_threshold,
                 cfg.head_interaction_share) & (stats["popularity"].to_numpy() > 0)
    return stats.assign(segment=np.where(head, schemas.HEAD, schemas.TAIL))


def segment_users(stats: pd.DataFrame, cfg: SegmentConfig) -> pd.DataFrame:
    """``stats`` with ``segment`` by history length (as ``sequences.segment_users``)."""
    head = _head(stats, "length", "user_idx", cfg.method, cfg.head_user_share, cfg.user_threshold,
                 cfg.head_interaction_share)
    return stats.assign(segment=np.where(head, schemas.HEAD, schemas.TAIL))


def _head(df: pd.DataFrame, value: str, idx: str, method: str, head_share: float, threshold: int,
          interaction_share: float) -> np.ndarray:
    """Whether each row of ``df`` is head, in ``df``'s row order; the arithmetic is the Spark
    path's (doubles where it uses doubles) so that ties at the cut fall the same way."""
    values = df[value].to_numpy(np.int64)
    if method == "threshold":
        return values >= threshold
    order = np.lexsort((df[idx].to_numpy(), -values))  # value descending, then idx ascending
    head = np.zeros(len(df), bool)
    if method == "pareto":
        cut = np.floor(float(head_share) * len(df) + 0.5)
        head[order] = np.arange(1, len(df) + 1) <= cut
    else:  # share: the smallest prefix that reaches the share, the crossing row included
        ranked = values[order]
        before = (np.cumsum(ranked) - ranked).astype(np.float64)
        head[order] = before < float(interaction_share) * np.float64(ranked.sum())
    return head


def figures(items: pd.DataFrame, users: pd.DataFrame, item_start: int, user_start: int) -> dict[str, int]:
    """The summary counts of ``sequences._figures`` from the segmented stats frames."""
    head_items = items["segment"] == schemas.HEAD
    return {
        "items": len(items), "head_items": int(head_items.sum()),
        "head_interactions": int(items.loc[head_items, "interactions"].sum()),
        "new_items": int((items["item_idx"] > item_start).sum()),
        "users": len(users), "tail_users": int((users["segment"] != schemas.HEAD).sum()),
        "new_users": int((users["user_idx"] > user_start).sum()),
    }
