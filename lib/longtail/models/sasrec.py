"""SASRec: a causal self-attention encoder over trainable item embeddings (Kang & McAuley, 2018).

Causal on purpose: position t sees items 1..t only. (The LLM-ESR reference code drops the
causal mask, which lets a training position see the items it is asked to predict.)
"""
from __future__ import annotations

from typing import Any, Mapping

from longtail.models.layers import (
    IdView, SequentialRecommender, TransformerEncoder, loss_options, xavier_init,
)

OBJECTIVE = "next"
CAUSAL = True


def encoder(hp: Mapping[str, Any]) -> TransformerEncoder:
    """The causal Transformer encoder (``hidden``, ``layers``, ``heads``, ``dropout``, ``max_len``)."""
    return TransformerEncoder(
        hp["hidden"], hp["layers"], hp["heads"], hp["dropout"], hp["max_len"], causal=CAUSAL
    )


def build(n_items: int, hp: Mapping[str, Any]) -> SequentialRecommender:
    """SASRec with ``n_items`` items and hyperparameters ``hp`` (a TrainConfig as a dict)."""
    model = SequentialRecommender(
        n_items, encoder(hp), [IdView(n_items + 1, hp["hidden"])], hp["max_len"], OBJECTIVE,
        **loss_options(hp),
    )
    xavier_init(model)
    return model
