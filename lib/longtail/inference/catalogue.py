"""The items that can be ranked, as the driver holds them for evaluation and serving."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
from pyspark.sql import functions as F

from longtail.core import schemas
from longtail.core.errors import InputError
from longtail.inference.items import ItemIndex
from longtail.ranking.vectors import unit_rows


#: Embedding rows copied into the matrix per step (the gather's index array: this many x dim int64).
GATHER_ROWS = 16_384


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
        # copy=False: unit_rows already made the one new float32 matrix (a second copy here was
        # the driver's largest transient in `score`: docs/scaling.md, "The driver's memory").
        return unit_rows(self.embeddings).astype(np.float32, copy=False)


def load_catalogue(wh, include_new_items: bool = True) -> Catalogue:
    """Read ``item_stats`` (required), ``item_embeddings`` and ``items`` (optional) into a catalogue.

    Catalogue-sized arrays live on the driver (items x embedding dimension); users never do.
    Columns come as Arrow (no Python object per embedding), only the chosen encoder's rows are
    collected, and the text-only items are found by Spark: the driver's peak is about twice the
    embedding matrix plus the item ids (docs/scaling.md, "The driver's memory").

    Args:
        include_new_items: append items with an embedding but no ``item_stats`` row.

    Raises:
        TableNotFoundError: no ``item_stats``. SchemaError: a table lacks a contract column.
        InputError: bad item idxs, or embeddings of different lengths.
    """
    stats = wh.read(schemas.ITEM_STATS)
    schemas.require_columns(stats, schemas.ITEM_STATS_SCHEMA, schemas.ITEM_STATS)
    tbl = stats.select("item_id", "item_idx", "popularity", "segment").toArrow()
    idx = tbl.column("item_idx").to_numpy(zero_copy_only=False) if tbl.num_rows else np.zeros(0)
    known_index = ItemIndex.from_pairs(idx, tbl.column("item_id").to_pylist(), schemas.ITEM_STATS)
    emb, embedding_model = _embeddings(wh)
    new_ids = _text_only_items(wh, stats, emb) if include_new_items and emb is not None else []
    index = known_index.extended(new_ids)
    n_known, size = known_index.size, index.size
    known = np.zeros(size, dtype=bool)
    tail = np.zeros(size, dtype=bool)
    popularity = np.zeros(size, dtype=np.int64)
    idx = idx.astype(np.int64)
    known[idx] = True
    known[0] = False
    tail[idx] = pc.fill_null(pc.equal(tbl.column("segment"), schemas.TAIL), False).to_numpy(zero_copy_only=False)
    tail[n_known:] = True
    popularity[idx] = pc.fill_null(tbl.column("popularity"), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    embeddings, has_embedding = _embedding_rows(index, emb)
    return Catalogue(index, known, tail, popularity, embeddings, has_embedding, n_known, embedding_model)


def _embeddings(wh):
    """The ``item_embeddings`` rows (a DataFrame of ``item_id``, ``embedding``) of the encoder with
    most items, and its name (ties: the first name); (None, None) without any row."""
    if not wh.exists(schemas.ITEM_EMBEDDINGS):
        return None, None
    emb = wh.read(schemas.ITEM_EMBEDDINGS)
    schemas.require_columns(emb, schemas.ITEM_EMBEDDINGS_SCHEMA, schemas.ITEM_EMBEDDINGS)
    # One row per encoder, counted by Spark: other encoders' vectors never reach the driver.
    counted = emb.where(F.col("model").isNotNull()).groupBy("model").agg(F.count(F.lit(1)).alias("n")).collect()
    counts = {r["model"]: int(r["n"]) for r in counted}
    if not counts:
        return None, None
    model = sorted(m for m, n in counts.items() if n == max(counts.values()))[0]
    return emb.where(F.col("model") == model).select("item_id", "embedding"), model


def _text_only_items(wh, stats, emb) -> list[str]:
    """Items with an embedding (``emb``) but no ``item_stats`` row that ``items`` still lists, in
    id order; the set operations run in Spark, only the new ids come back."""
    candidates = emb.select("item_id").where(F.col("item_id").isNotNull()).join(stats.select("item_id"), "item_id",
                                                                                "left_anti")
    if wh.exists(schemas.ITEMS):
        candidates = candidates.join(wh.read(schemas.ITEMS).select("item_id"), "item_id", "left_semi")
    return sorted(set(candidates.toArrow().column("item_id").to_pylist()))


def _embedding_rows(index: ItemIndex, emb) -> tuple[np.ndarray, np.ndarray]:
    """``([N, E] float32, [N] bool)``: each idx's embedding (the first row of an item id), zero where
    it has none; ``emb``: the chosen encoder's rows (None: no embeddings)."""
    has_embedding = np.zeros(index.size, dtype=bool)
    embeddings = np.zeros((index.size, 1), dtype=np.float32)
    if emb is None:
        return embeddings, has_embedding
    tbl = emb.toArrow()
    # A search over the ids' bytes, not ItemIndex.position()'s dict: that dict stayed cached on
    # the catalogue for the whole job at about 100 bytes per item (docs/scaling.md).
    at = index.sorted_ids().first(tbl.column("item_id").to_pylist())
    vectors = tbl.column("embedding")  # chunked as collected: combining the chunks copied every vector
    _, first = np.unique(at, return_index=True)  # an item id's first row counts, as it always did
    first = first[at[first] >= 0]
    rows = np.sort(first[~vectors.is_null().to_numpy(zero_copy_only=False)[first]])
    if not len(rows):
        return embeddings, has_embedding
    lengths = pc.fill_null(pc.list_value_length(vectors), 0).to_numpy(zero_copy_only=False)[rows]
    dim = int(lengths[0])
    bad = np.nonzero(lengths != dim)[0]
    if len(bad):
        row = rows[bad[0]]
        raise InputError(
            f"table {schemas.ITEM_EMBEDDINGS}: item {index.ids[at[row]]!r} has a {lengths[bad[0]]}-d embedding, "
            f"others {dim}-d"
        )
    embeddings = np.zeros((index.size, dim), dtype=np.float32)
    start = 0
    for chunk in vectors.chunks:
        mine = rows[(rows >= start) & (rows < start + len(chunk))]
        offsets, values = chunk.offsets.to_numpy(), chunk.values.to_numpy(zero_copy_only=False)
        for s in range(0, len(mine), GATHER_ROWS):  # bounded index arrays: GATHER_ROWS x dim int64
            part = mine[s : s + GATHER_ROWS]
            embeddings[at[part]] = values[(offsets[part - start][:, None] + np.arange(dim)[None, :])]
        start += len(chunk)
    has_embedding[at[rows]] = True
    return embeddings, has_embedding
