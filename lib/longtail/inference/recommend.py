"""Top-K lists for a handful of users on the driver: the nightly job's scoring, for notebooks and checks."""
from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from longtail.core import schemas
from longtail.core.config import EvaluateConfig
from longtail.inference.bundle import make_bundle
from longtail.inference.catalogue import load_catalogue
from longtail.inference.scorers import ScorerFactory, read_user_sequences
from longtail.models.histories import pad_histories


def recommend_users(
    wh, model: str, user_ids: list[str], k: int = 10, *, version: str | None = None, item_chunk: int = 8192,
    als_cfg: EvaluateConfig | None = None,
) -> pd.DataFrame:
    """Rank the catalogue for ``user_ids`` as ``longtail score`` does (``score.hybrid`` off), writing nothing.

    The same catalogue (text-only items included), scorer and exclusions as the nightly job:
    a user's list never holds an item they touched anywhere in ``interactions``. Users without a
    sequence are left out (the nightly job gives them popularity lists).

    Args:
        wh: the warehouse; model: a trained model or a baseline; user_ids: at most a few thousand.
        k: list length; version: model version (default: the latest); item_chunk: items per product.
        als_cfg: ALS settings when ``model`` is ``als`` (the ``evaluate`` section).

    Returns:
        ``user_id``, ``rank`` (1..k), ``item_id``, ``score``, one row per recommended item.

    Raises:
        ModelNotFoundError, TableNotFoundError, SchemaError: as ``longtail score``.
    """
    catalogue = load_catalogue(wh, include_new_items=True)
    scorer = ScorerFactory(wh, catalogue, "all", als_cfg or EvaluateConfig()).scorer(model, version)
    bundle = make_bundle(scorer, catalogue)
    rows = read_user_sequences(wh).where(F.col("user_id").isin(list(user_ids))).select("user_id", "item_idxs").collect()
    if not rows:
        return pd.DataFrame({"user_id": [], "rank": [], "item_id": [], "score": []})
    touched = _touched(wh, [r["user_id"] for r in rows], catalogue.index.position())
    histories = [r["item_idxs"] or [] for r in rows]
    seen = [list(h) + touched.get(r["user_id"], []) for r, h in zip(rows, histories)]
    scores, items = bundle.top_k(pad_histories(histories), k, item_chunk, seen=pad_histories(seen))
    ids = np.asarray(catalogue.item_ids, dtype=object)
    return pd.DataFrame({
        "user_id": np.repeat([r["user_id"] for r in rows], k),
        "rank": np.tile(np.arange(1, k + 1), len(rows)),
        "item_id": ids[items.numpy().ravel()],
        "score": scores.numpy().ravel(),
    }).query("item_id != ''").reset_index(drop=True)


def _touched(wh, user_ids: list[str], position: dict[str, int]) -> dict[str, list[int]]:
    """Catalogue idxs of every item each user has in ``interactions`` (empty without the table)."""
    if not wh.exists(schemas.INTERACTIONS):
        return {}
    out: dict[str, list[int]] = {}
    rows = wh.read(schemas.INTERACTIONS).where(F.col("user_id").isin(user_ids)).select("user_id", "item_id").collect()
    for r in rows:
        if r["item_id"] in position:
            out.setdefault(r["user_id"], []).append(position[r["item_id"]])
    return out
