"""LLM-ESR (Liu et al., NeurIPS 2024): dual-view sequential recommendation around a backbone.

- semantic view: frozen LLM item embeddings through a trainable adapter (E -> E/2 -> hidden);
- collaborative view: trainable item embeddings initialised from the PCA-reduced LLM
  embeddings (the ``item_embeddings_pca`` table);
- optional cross-attention between the two views, ONE encoder shared by both views;
- user vector = concatenation of both views' outputs; items scored against the
  concatenated item views;
- self-distillation: ``alpha * MSE(user rep, mean of the similar users' detached reps)``.

The backbone (SASRec, GRU4Rec, Bert4Rec) contributes its encoder and objective only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from longtail.models import bert4rec, gru4rec, sasrec
from longtail.models.layers import (
    CrossViewAttention,
    IdView,
    PopularityGate,
    SemanticView,
    SequentialRecommender,
    loss_options,
    xavier_init,
)


@dataclass
class TextTables:
    """The item tables an LLM-ESR model is built from (row = item idx, row 0 zeros).

    Attributes:
        llm: ``[n_items + 1, E]`` LLM item embeddings (frozen in the model).
        pca: ``[n_items + 1, hidden]`` their PCA reduction (initial collaborative view).
        pca_mean, pca_components, pca_offset: ``[E]``, ``[hidden, E]``, ``[hidden]``: the
            map ``pca = (llm - mean) @ components.T + offset`` that places new items (the
            encoder's PCA map, :mod:`longtail.encoders.pca`; offset zero).
    """

    llm: Tensor
    pca: Tensor
    pca_mean: Tensor
    pca_components: Tensor
    pca_offset: Tensor
    #: ``[n_items + 1]`` training counts, for ``view_gate: popularity`` (None: all zero; a saved
    #: model brings its buckets in its weights).
    popularity: Tensor | None = None

    @classmethod
    def zeros(cls, n_items: int, llm_dim: int, hidden: int) -> "TextTables":
        """Placeholder tables of the right shapes, to load saved weights into."""
        return cls(
            torch.zeros(n_items + 1, llm_dim), torch.zeros(n_items + 1, hidden),
            torch.zeros(llm_dim), torch.zeros(hidden, llm_dim), torch.zeros(hidden),
        )

    @classmethod
    def from_arrays(
        cls, llm: np.ndarray, pca: np.ndarray, pca_mean: np.ndarray, pca_components: np.ndarray
    ) -> "TextTables":
        """Tables from ``[n_items + 1, E]`` and ``[n_items + 1, hidden]`` arrays (row 0 padding)
        and the PCA map (``[E]``, ``[hidden, E]``) that produced the second from the first."""
        t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
        # An exact PCA has no offset; the buffer stays so that saved models keep one format.
        return cls(t(llm), t(pca), t(pca_mean), t(pca_components), torch.zeros(pca.shape[1]))


def build(backbone: str, n_items: int, hp: Mapping[str, Any], text: TextTables) -> SequentialRecommender:
    """The LLM-ESR version of ``backbone`` (``sasrec``, ``gru4rec``, ``bert4rec``).

    Args:
        backbone: encoder and objective to use.
        n_items: catalogue size.
        hp: hyperparameters (``hidden``, ``layers``, ``heads``, ``dropout``, ``max_len``,
            ``alpha``, ``cross_attention``, ``cross_residual``, ``view_gate``; ablations:
            ``semantic_view`` false keeps only the collaborative view, ``pca_init`` false starts
            it from a random init; ``loss``).
        text: the LLM and PCA item tables.

    Raises:
        ValueError: the PCA width differs from ``hidden`` or a table has the wrong rows.
    """
    part = {"sasrec": sasrec, "gru4rec": gru4rec, "bert4rec": bert4rec}[backbone]
    hidden = hp["hidden"]
    if text.pca.shape != (n_items + 1, hidden):
        raise ValueError(
            f"PCA item table is {tuple(text.pca.shape)}, expected ({n_items + 1}, {hidden})"
        )
    if text.llm.shape[0] != n_items + 1:
        raise ValueError(f"LLM item table has {text.llm.shape[0]} rows, expected {n_items + 1}")
    llm, pca = text.llm.float(), text.pca.float()
    if part.OBJECTIVE == "cloze":  # a mask-token row, zero like the reference's
        llm = torch.cat([llm, torch.zeros_like(llm[:1])])
        pca = torch.cat([pca, torch.zeros_like(pca[:1])])
    pca_init = bool(hp.get("pca_init", True))
    scale = 1.0
    if hp.get("pca_init_scale", "raw") == "backbone" and pca.shape[0] > 2:
        # The same per-entry spread as the backbone's random (Xavier-normal) table: the
        # PCA geometry is kept, and Adam's fixed-size steps move it as fast as a plain id
        # table (a raw PCA table is ~10x larger, so it would stay near its init far longer).
        target = (2.0 / (pca.shape[0] + hidden)) ** 0.5
        spread = float(pca[1 : n_items + 1].std())
        scale = target / spread if spread > 0 else 1.0
    collaborative = IdView(
        pca.shape[0], hidden, init=pca * scale if pca_init else None,
        projection=(text.pca_mean, text.pca_components * scale, text.pca_offset * scale),
    )
    views: list = [collaborative]
    cross = None
    if hp.get("semantic_view", True):
        views.append(SemanticView(llm, hidden, standardize=bool(hp.get("llm_standardize", False))))
        cross = (
            CrossViewAttention(hidden, causal=part.CAUSAL, residual=float(hp.get("cross_residual", 0.0)))
            if hp["cross_attention"] else None
        )
    gate = None
    if hp.get("view_gate", "none") == "popularity" and len(views) == 2:
        popularity = text.popularity if text.popularity is not None else torch.zeros(n_items + 1)
        gate = PopularityGate(popularity, views=2, rows=pca.shape[0])
    model = SequentialRecommender(
        n_items, part.encoder(hp), views, hp["max_len"], part.OBJECTIVE,
        cross=cross, alpha=hp["alpha"], item_gate=gate, **loss_options(hp),
    )
    # Without pca_init the collaborative view starts like a plain backbone's (Xavier).
    # The gate's weights start at 1 (the ungated score), not at random.
    skip = ([collaborative.embedding.weight] if pca_init else []) + ([gate.weight] if gate is not None else [])
    xavier_init(model, skip=skip)
    return model
