"""Item histories as models read them: ragged arrays, left-padded matrices, batched user vectors.

A set of histories is kept *ragged*: one flat ``values`` array of item idxs and ``offsets``
(row ``r`` is ``values[offsets[r]:offsets[r + 1]]``, oldest first). Models read them as
left-padded matrices (0 = padding, most recent item last). Training, validation, evaluation
and serving all pad through :func:`pad_left`, so every stage sees the same layout.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from longtail.models.layers import length_groups

#: Users per forward pass when encoding many histories without gradients.
ENCODE_CHUNK = 512

#: Histories up to this length share one pass in :func:`encode_histories`; longer ones are
#: encoded by power-of-two length class (``length_groups``), each pass padded to at most twice
#: its shortest row. Against 512-row chunks padded to each chunk's longest, on Beauty: validation's
#: call over every user 1.5x fewer seconds, shuffled batches of 1,024 users (a ``score`` task whose
#: batch spans every length) 10.9x (``benchmarks/user_vectors.py``).
ENCODE_SHORT = 8


def ragged_from_lists(seqs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(values, offsets)`` of per-row item sequences (lists, arrays; None counts as empty)."""
    rows = [np.asarray([] if s is None else s, dtype=np.int64).ravel() for s in seqs]
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.concatenate(rows) if lengths.sum() else np.zeros(0, np.int64)
    return values, offsets


def ragged_from_arrow(column) -> tuple[np.ndarray, np.ndarray]:
    """``(values, offsets)`` of an Arrow list column (chunked or not); null lists are empty."""
    import pyarrow.compute as pc

    col = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    return values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def pad_left(
    values: np.ndarray, offsets: np.ndarray, rows: np.ndarray, width: int, drop_last: bool = False
) -> np.ndarray:
    """Left-padded ``[len(rows), L]`` matrix of the last ``width`` items of each ragged row.

    ``L`` is the longest selected row (at least 1), so all-padding columns never appear.
    ``drop_last`` leaves out each row's last item first.
    """
    rows = np.asarray(rows, dtype=np.int64)
    starts, ends = offsets[rows], offsets[rows + 1]
    if drop_last:
        ends = np.maximum(starts, ends - 1)
    starts = np.maximum(starts, ends - width)
    lengths = ends - starts
    length = max(int(lengths.max()) if lengths.size else 0, 1)
    out = np.zeros((len(rows), length), dtype=np.int64)
    total = int(lengths.sum())
    if total:
        row_ids = np.repeat(np.arange(len(rows)), lengths)
        within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        cols = length - np.repeat(lengths, lengths) + within
        out[row_ids, cols] = values[np.repeat(starts, lengths) + within]
    return out


def pad_histories(histories: Sequence[Any], max_len: int | None = None) -> torch.Tensor:
    """Left-pad (and left-truncate to the ``max_len`` most recent) histories into a LongTensor.

    Args:
        histories: per user, item idxs oldest first (lists, numpy arrays or None for empty).
        max_len: keep at most this many most recent items; None keeps all.

    Returns:
        ``[B, L]`` int64, 0 = padding, most recent last; L is ``max_len`` when given, else the
        longest history (at least 1).
    """
    values, offsets = ragged_from_lists(histories)
    rows = np.arange(len(offsets) - 1)
    longest = int((offsets[1:] - offsets[:-1]).max()) if rows.size else 0
    width = max(longest, 1) if max_len is None else max(max_len, 1)
    out = pad_left(values, offsets, rows, longest if max_len is None else max_len)
    if out.shape[1] < width:
        out = np.pad(out, ((0, 0), (width - out.shape[1], 0)))
    return torch.from_numpy(out)


def compact_left(histories: torch.Tensor) -> torch.Tensor:
    """Move the non-zero entries of each row to the right end, keeping their order.

    Used after mapping item idxs into another idx space where some items became 0 (unknown
    to a model): the model then still sees a left-padded history without holes.
    """
    if histories.numel() == 0:
        return histories
    nonzero = (histories != 0).to(torch.int8)
    # A stable sort on the "is item" flag puts padding first and items in their order after.
    order = torch.sort(nonzero, dim=1, stable=True).indices
    return torch.gather(histories, 1, order)


def encode_histories(
    module, values: np.ndarray, offsets: np.ndarray, rows: np.ndarray, max_len: int,
    chunk: int = ENCODE_CHUNK, device=None,
) -> torch.Tensor:
    """``[len(rows), D]`` user vectors of ragged histories, in length-sorted chunks of one length
    class (:data:`ENCODE_SHORT`; eval, no grad).

    Args:
        module: a :class:`~longtail.models.layers.SequentialRecommender`.
        values, offsets: the ragged histories; rows: which of them, in output order.
        max_len: the most recent items read per history.
        chunk: the most histories per forward pass; device: where the module runs (None: CPU).
    """
    rows = np.asarray(rows, dtype=np.int64)
    lengths = np.minimum(offsets[rows + 1] - offsets[rows], max_len)
    out = None
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for group in length_groups(torch.from_numpy(lengths), chunk, short=ENCODE_SHORT):
                sel = group.numpy()
                seqs = torch.from_numpy(pad_left(values, offsets, rows[sel], max_len))
                if device is not None:
                    seqs = seqs.to(device)
                vec = module.user_vectors(seqs)
                if out is None:
                    out = torch.zeros((len(rows), vec.shape[1]), dtype=vec.dtype, device=vec.device)
                out[torch.from_numpy(sel).to(vec.device)] = vec
    finally:
        module.train(was_training)
    if out is None:
        out = torch.zeros((0, module.item_vectors().shape[1]))
    return out
