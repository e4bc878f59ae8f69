"""GRU4Rec: a recurrent encoder over trainable item embeddings (Hidasi et al., 2016).

Trained like SASRec (next item at every position, one sampled negative); no dropout and
no position embedding, as in the LLM-ESR reference.
"""
from __future__ import annotations

from typing import Any, Mapping

from longtail.models.layers import GRUEncoder, IdView, SequentialRecommender, loss_options, xavier_init

OBJECTIVE = "next"
CAUSAL = True


def encoder(hp: Mapping[str, Any]) -> GRUEncoder:
    """The GRU encoder (``hidden``, ``layers``)."""
    return GRUEncoder(hp["hidden"], hp["layers"])


def build(n_items: int, hp: Mapping[str, Any]) -> SequentialRecommender:
    """GRU4Rec with ``n_items`` items and hyperparameters ``hp``."""
    model = SequentialRecommender(
        n_items, encoder(hp), [IdView(n_items + 1, hp["hidden"])], hp["max_len"], OBJECTIVE,
        **loss_options(hp),
    )
    xavier_init(model)
    return model
