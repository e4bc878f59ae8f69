"""Shared building blocks: positions, padding trim, attention masks, padding invariance."""
from __future__ import annotations

import torch
from longtail.models.layers import attention_mask, left_positions, trim_padding


def test_left_positions_count_from_the_oldest_item():
    seqs = torch.tensor([[0, 0, 7, 8, 9], [1, 2, 3, 4, 5]])
    assert left_positions(seqs).tolist() == [[0, 0, 1, 2, 3], [1, 2, 3, 4, 5]]


def test_trim_padding_drops_only_all_padding_columns():
    seqs = torch.tensor([[0, 0, 0, 8, 9], [0, 0, 3, 4, 5]])
    assert trim_padding(seqs).tolist() == [[0, 8, 9], [3, 4, 5]]
    assert trim_padding(torch.zeros(2, 4, dtype=torch.long)).shape == (2, 1)


def test_attention_mask_hides_padding_and_the_future():
    pad = torch.tensor([[True, False, False]])
    causal = attention_mask(pad, causal=True)[0, 0]
    assert causal.tolist() == [[True, False, False], [False, True, False], [False, True, True]]
    both = attention_mask(pad, causal=False)[0, 0]
    assert both.tolist() == [[True, True, True], [False, True, True], [False, True, True]]
