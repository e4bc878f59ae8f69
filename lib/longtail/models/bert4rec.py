"""Bert4Rec: a bidirectional self-attention encoder trained by cloze (Sun et al., 2019).

Items are hidden at random (``bert_mask_prob``) and predicted from both sides; the item
table has a mask token row ``n_items + 1``, which ``user_vectors`` appends to a history so
that the representation is the prediction of the next item. The loss at hidden positions
is the same BCE against one sampled negative as the reference code uses.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from longtail.models.layers import (
    IdView, SequentialRecommender, TransformerEncoder, loss_options, xavier_init,
)

OBJECTIVE = "cloze"
CAUSAL = False


def encoder(hp: Mapping[str, Any]) -> TransformerEncoder:
    """The bidirectional Transformer encoder."""
    return TransformerEncoder(
        hp["hidden"], hp["layers"], hp["heads"], hp["dropout"], hp["max_len"], causal=CAUSAL
    )


def build(n_items: int, hp: Mapping[str, Any]) -> SequentialRecommender:
    """Bert4Rec with ``n_items`` items and hyperparameters ``hp``."""
    model = SequentialRecommender(
        n_items, encoder(hp), [IdView(n_items + 2, hp["hidden"])], hp["max_len"], OBJECTIVE,
        **loss_options(hp),
    )
    xavier_init(model)
    return model


def cloze_mask(
    rng: np.random.Generator, tokens: np.ndarray, n_items: int, prob: float, last_only: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Hide items for the cloze task.

    Args:
        rng: the seeded generator of this rank and epoch.
        tokens: ``[B, L]`` left-padded item idxs.
        n_items: catalogue size; the mask token is ``n_items + 1``.
        prob: share of items hidden; a hidden item becomes the mask token (80%), a random
            item (10%) or stays (10%).
        last_only: ``[B]`` bool; rows that hide only their last item (the next-item task the
            model is used for), as the reference pairs each random row with one such row.

    Returns:
        ``(inputs, labels)``: the masked tokens and, per position, the hidden item (0 = none).
    """
    real = tokens != 0
    draw = rng.random(tokens.shape)
    hidden = real & (draw < prob)
    hidden[last_only] = False
    hidden[last_only, -1] = real[last_only, -1]
    labels = np.where(hidden, tokens, 0)
    how = rng.random(tokens.shape)
    inputs = tokens.copy()
    to_mask = hidden & ((how < 0.8) | last_only[:, None])
    to_random = hidden & ~to_mask & (how < 0.9)
    inputs[to_mask] = n_items + 1
    inputs[to_random] = rng.integers(1, n_items + 1, size=int(to_random.sum()))
    return inputs, labels
