"""Ragged histories and their left-padded matrices (no Spark)."""
from __future__ import annotations

import numpy as np
import torch
from longtail.models.histories import (
    compact_left,
    pad_histories,
    pad_left,
    ragged_from_lists,
)


def test_pad_left_keeps_the_last_items():
    values = np.array([1, 2, 3, 4, 5, 6, 7])
    offsets = np.array([0, 3, 3, 7])
    assert pad_left(values, offsets, np.array([0, 1, 2]), 3).tolist() == [[1, 2, 3], [0, 0, 0], [5, 6, 7]]
    assert pad_left(values, offsets, np.array([2, 0]), 10, drop_last=True).tolist() == [[4, 5, 6], [0, 1, 2]]


def test_pad_and_compact_histories():
    h = pad_histories([[1, 2, 3], [4]], max_len=2)
    assert h.tolist() == [[2, 3], [0, 4]]
    assert pad_histories([[], [5, 6]]).tolist() == [[0, 0], [5, 6]]
    assert compact_left(torch.tensor([[1, 0, 2, 0, 3], [0, 0, 0, 0, 0]])).tolist() == [[0, 0, 1, 2, 3], [0] * 5]


def test_ragged_from_lists_takes_arrays_lists_and_none():
    values, offsets = ragged_from_lists([[1, 2], np.array([3]), None, []])
    assert values.tolist() == [1, 2, 3] and offsets.tolist() == [0, 2, 3, 3, 3]
