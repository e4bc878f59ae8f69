"""The items that can be ranked, as the driver holds them for evaluation and serving."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from longtail.core import schemas
from longtail.core.errors import InputError
from longtail.inference.items import ItemIndex
from longtail.ranking.vectors import unit_rows


@dataclass
class Catalogue:
    """The items that can be ranked, in the warehouse's item index (row 0 padding).

    Known items keep their ``item_stats`` idx; new items (text, no interactions) follow from
    ``n_known`` on, in item id order. New items count as tail (they have no interactions).
    """

    index: ItemIndex
    known: np.ndarray  # [N] bool, in item_stats
    tail: np.ndarray  # [N] bool
    popularity: np.ndarray  # [N] int64, item_stats.popularity (training part)
    embeddings: np.ndarray  # [N, E] float32, raw semantic embeddings (zero rows where none)
    has_embedding: np.ndarray  # [N] bool
    n_known: int  # known idxs are < n_known
    embedding_model: str | None = None

    @property
    def item_ids(self) -> list[str]:
        """``item_ids[idx]``: the item_id of each idx (``""`` where none)."""
        return self.index.ids

    @property
    def size(self) -> int:
        return self.index.size

    def unit_embeddings(self) -> np.ndarray | None:
        """L2-normalised semantic embeddings, or None when no item has one."""
        if not self.has_embedding.any():
            return None
        return unit_rows(self.embeddings).astype(np.float32)


def load_catalogue(wh, include_new_items: bool = True) -> Catalogue:
    """Read ``item_stats`` (required), ``item_embeddings`` and ``items`` (optional) into a catalogue.

    Catalogue-sized arrays live on the driver (items x embedding dimension); users never do.

    Args:
        include_new_items: append items with an embedding but no ``item_stats`` row.

    Raises:
        TableNotFoundError: no ``item_stats``. SchemaError: a table lacks a contract column.
        InputError: bad item idxs, or embeddings of different lengths.
    """
    stats = wh.read(schemas.ITEM_STATS)
    schemas.require_columns(stats, schemas.ITEM_STATS_SCHEMA, schemas.ITEM_STATS)
    stats_pd = stats.select("item_id", "item_idx", "popularity", "segment").toPandas()
    known_index = ItemIndex.from_pairs(stats_pd["item_idx"].to_numpy(), list(stats_pd["item_id"]), schemas.ITEM_STATS)
    emb_pd, embedding_model = _embeddings(wh)
    new_ids: list[str] = []
    if include_new_items and emb_pd is not None:
        new_ids = _text_only_items(wh, set(emb_pd["item_id"]) - set(stats_pd["item_id"]))
    index = known_index.extended(new_ids)
    n_known, size = known_index.size, index.size
    known = np.zeros(size, dtype=bool)
    tail = np.zeros(size, dtype=bool)
    popularity = np.zeros(size, dtype=np.int64)
    idx = stats_pd["item_idx"].to_numpy(dtype=np.int64)
    known[idx] = True
    known[0] = False
    tail[idx] = (stats_pd["segment"] == schemas.TAIL).to_numpy()
    tail[n_known:] = True
    popularity[idx] = stats_pd["popularity"].fillna(0).to_numpy(dtype=np.int64)
    embeddings, has_embedding = _embedding_rows(index, emb_pd)
    return Catalogue(index, known, tail, popularity, embeddings, has_embedding, n_known, embedding_model)


def _embeddings(wh):
    """``(item_id, embedding)`` rows of the encoder with most items, and its name; (None, None) without any."""
    if not wh.exists(schemas.ITEM_EMBEDDINGS):
        return None, None
    emb = wh.read(schemas.ITEM_EMBEDDINGS)
    schemas.require_columns(emb, schemas.ITEM_EMBEDDINGS_SCHEMA, schemas.ITEM_EMBEDDINGS)
    emb_pd = emb.select("item_id", "embedding", "model").toPandas()
    if not len(emb_pd):
        return None, None
    counts = emb_pd.groupby("model").size()
    model = sorted(counts[counts == counts.max()].index)[0]
    return emb_pd[emb_pd["model"] == model].drop_duplicates("item_id"), model


def _text_only_items(wh, candidates: set[str]) -> list[str]:
    """Items with an embedding but no interactions, that ``items`` still lists, in id order."""
    if candidates and wh.exists(schemas.ITEMS):
        listed = {r["item_id"] for r in wh.read(schemas.ITEMS).select("item_id").collect()}
        candidates &= listed
    return sorted(candidates)


def _embedding_rows(index: ItemIndex, emb_pd) -> tuple[np.ndarray, np.ndarray]:
    """``([N, E] float32, [N] bool)``: each idx's embedding, zero where it has none."""
    has_embedding = np.zeros(index.size, dtype=bool)
    embeddings = np.zeros((index.size, 1), dtype=np.float32)
    if emb_pd is None:
        return embeddings, has_embedding
    position = index.position()
    rows = [(position[i], e) for i, e in zip(emb_pd["item_id"], emb_pd["embedding"]) if i in position and e is not None]
    if not rows:
        return embeddings, has_embedding
    dim = len(rows[0][1])
    embeddings = np.zeros((index.size, dim), dtype=np.float32)
    for i, e in rows:
        if len(e) != dim:
            raise InputError(
                f"table {schemas.ITEM_EMBEDDINGS}: item {index.ids[i]!r} has a {len(e)}-d embedding, others {dim}-d"
            )
        embeddings[i] = np.asarray(e, dtype=np.float32)
        has_embedding[i] = True
    return embeddings, has_embedding
