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
from tiny_models import N_ITEMS


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


def test_encode_histories_groups_by_length_class_and_equals_each_history_alone(hp, text):
    """A task's batch mixes short and long histories: each pass holds one length class (so it is
    padded to at most twice its shortest row, not to the batch's longest), and every user's
    vector is the one of its history encoded alone, in the caller's order."""
    from longtail.models import build_model
    from longtail.models.histories import ENCODE_SHORT, encode_histories

    torch.manual_seed(0)
    model = build_model("llmesr_sasrec", N_ITEMS, {**hp, "max_len": 40}, text)
    rng = np.random.default_rng(1)
    lengths = [3, 37, 1, 12, ENCODE_SHORT, 20, 9, 0, 33, 5]
    lists = [rng.integers(1, N_ITEMS + 1, size=n) for n in lengths]
    values, offsets = ragged_from_lists(lists)
    widths = []
    encode = model.user_vectors
    model.user_vectors = lambda seqs: (widths.append(seqs.shape[1]), encode(seqs))[1]
    got = encode_histories(model, values, offsets, np.arange(len(lists)), max_len=40, chunk=4)
    del model.user_vectors
    model.eval()
    with torch.no_grad():
        alone = torch.cat([model.user_vectors(torch.from_numpy(pad_left(values, offsets, np.array([r]), 40)))
                           for r in range(len(lists))])
    torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)
    # Sorted 0 1 3 5 | 8 (the chunk of 4 cut the class <= 8) | 9 12 | 20 | 33 37, each padded to its
    # longest: one pass padded to the batch's longest (37) would be 10 rows x 37.
    assert widths == [5, 8, 12, 20, 37]
