"""The one item-idx space every stage and model uses, and the mapping between its versions.

``sequences`` gives every item a dense, stable ``item_idx`` (1..n, 0 is padding) in
``item_stats``; ids never change once given, new items get new idxs. Three views of that
space exist, all as an :class:`ItemIndex`:

- the warehouse's, read from ``item_stats`` (:func:`read_item_index`);
- a trained model's, saved beside its weights (``item_ids.json``): ``item_stats`` as it was
  when the model was trained;
- the serving catalogue's: ``item_stats`` plus items that have text but no interactions yet,
  appended after the last idx.

They agree wherever both know an item; :meth:`ItemIndex.lookup` maps one onto another by
item_id (0 where the other does not know the item), so a model trained before new items
arrived still scores the catalogue of today.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from longtail.core.errors import InputError


class ItemIndex:
    """``ids[idx]`` is the item_id of item idx; ``""`` for padding (idx 0) and for unused idxs.

    Args:
        ids: item_id per idx, index 0 first (``""`` there).
    """

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = list(ids)
        self._position: dict[str, int] | None = None
        self._sorted: SortedIds | None = None

    @classmethod
    def from_pairs(cls, idxs: np.ndarray, ids: Sequence[str], table: str, size: int | None = None) -> "ItemIndex":
        """The index of ``(item_idx, item_id)`` pairs, e.g. the rows of ``item_stats``.

        Args:
            idxs, ids: one pair per item. table: named in errors.
            size: at least this many idxs (0..size-1), for appending after them.

        Raises:
            InputError: no items, an idx below 1 or missing, or an idx given twice.
        """
        idx = np.asarray(idxs)
        if idx.size == 0:
            raise InputError(f"table {table}: no items")
        if np.isnan(idx.astype(float)).any() or idx.min() < 1:
            raise InputError(f"table {table}: column item_idx must be 1 or more (0 is padding)")
        idx = idx.astype(np.int64)
        if len(np.unique(idx)) != len(idx):
            raise InputError(f"table {table}: column item_idx has duplicates")
        out = [""] * max(int(idx.max()) + 1, size or 0)
        for i, item_id in zip(idx, ids):
            out[int(i)] = item_id or ""
        return cls(out)

    @property
    def size(self) -> int:
        """Number of idxs, padding included (item vectors have this many rows)."""
        return len(self.ids)

    def position(self) -> dict[str, int]:
        """item_id -> idx."""
        if self._position is None:
            self._position = {item_id: i for i, item_id in enumerate(self.ids) if i > 0 and item_id}
        return self._position

    def sorted_ids(self) -> "SortedIds":
        """item_id -> idx as :class:`SortedIds`, built once per index (every catalogue-sized lookup
        of a job shares it: a few bytes per item, where :meth:`position`'s dict costs about 100)."""
        if self._sorted is None:
            self._sorted = SortedIds(self.ids)
        return self._sorted

    def extended(self, new_ids: Sequence[str]) -> "ItemIndex":
        """This index with ``new_ids`` appended after its last idx, in the given order."""
        return ItemIndex(self.ids + list(new_ids))

    def lookup(self, other: "ItemIndex") -> np.ndarray:
        """``[self.size]`` int64: for each idx here, the idx of the same item in ``other`` (0: absent)."""
        # A search over sorted id bytes: a dict of ``other``'s ids cost about 100 bytes per item.
        return np.maximum(other.sorted_ids().first(self.ids), 0)


def read_item_index(stats) -> ItemIndex:
    """The warehouse's index from an ``item_stats`` DataFrame (one small collect to the driver).

    Raises:
        InputError: as :meth:`ItemIndex.from_pairs`.
    """
    from longtail.core.schemas import ITEM_STATS

    tbl = stats.select("item_idx", "item_id").toArrow()
    idx = tbl.column("item_idx").to_numpy(zero_copy_only=False) if tbl.num_rows else np.zeros(0)
    return ItemIndex.from_pairs(idx, tbl.column("item_id").to_pylist(), ITEM_STATS)


class SortedIds:
    """A compact map from string ids to rows: the ids as sorted UTF-8 byte strings, searched.

    What a Python dict of a catalogue's ids costs (100-200 bytes per id, more with a list or an
    array per value, and the same again in every worker that unpickles it) becomes the ids'
    own bytes plus 8 per id; a lookup is a binary search, done for a whole batch of ids at once.
    An id may map to several rows (a table that repeats it): every row is found.

    The keys are fixed-width (numpy ``S``): each takes as many bytes as the longest id (ids of
    similar length, as catalogues' are, cost what they hold), and trailing NUL bytes are not
    part of an id (``"a\\x00"`` is ``"a"``).

    Args:
        ids: the id of each row; ``""`` and None rows are never found.
        rows: what each id maps to (default: its position in ``ids``).
    """

    def __init__(self, ids: Sequence[str | None], rows: np.ndarray | None = None) -> None:
        rows = np.arange(len(ids), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        keep = np.fromiter((bool(i) for i in ids), dtype=bool, count=len(ids))
        keys = _as_bytes([i.encode("utf-8") for i, k in zip(ids, keep) if k])
        order = np.argsort(keys, kind="stable")
        self.keys, self.rows = keys[order], rows[keep][order]

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, ids: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, which)``: every row of every id in ``ids`` that is known, and for each the
        position in ``ids`` of the id it came from (ascending); unknown ids add nothing."""
        if not len(ids) or not len(self.keys):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        width = self.keys.dtype.itemsize
        # An id longer than every key is unknown: searching with a wider dtype would convert the
        # whole key array on every call (a milliseconds-long copy at 1M ids).
        encoded = [(i or "").encode("utf-8") for i in ids]
        query = np.array([e if len(e) <= width else b"" for e in encoded], dtype=self.keys.dtype)
        left = np.searchsorted(self.keys, query, side="left")
        counts = np.searchsorted(self.keys, query, side="right") - left
        counts[query == b""] = 0
        which = np.repeat(np.arange(len(ids), dtype=np.int64), counts)
        # Each id's run of matches: its first position plus 0, 1, ... within the run.
        within = np.arange(len(which), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        return self.rows[np.repeat(left, counts) + within], which

    def first(self, ids: Sequence[str | None]) -> np.ndarray:
        """The row of each id of ``ids`` (the first of its rows in ``ids`` order), -1 where unknown."""
        rows, which = self.lookup(ids)
        out = np.full(len(ids), -1, dtype=np.int64)
        found, at = np.unique(which, return_index=True)  # each id's matches come in row order
        out[found] = rows[at]
        return out


def _as_bytes(encoded: Sequence[bytes]) -> np.ndarray:
    """UTF-8 ids as one fixed-width bytes array (numpy compares bytes as the sort does)."""
    if not len(encoded):
        return np.zeros(0, dtype="S1")
    return np.array(encoded, dtype=bytes)
