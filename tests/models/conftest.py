"""Tiny hyperparameters and sequences for the model tests (pure torch, no Spark)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from longtail.models import TextTables
from tiny_models import HIDDEN, LLM_DIM, N_ITEMS


@pytest.fixture()
def hp():
    return dict(hidden=HIDDEN, layers=2, heads=2, dropout=0.0, max_len=10, alpha=0.5, cross_attention=True)


@pytest.fixture()
def seqs():
    return torch.tensor([[0, 0, 0, 3, 4, 5], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 9]])


@pytest.fixture()
def batch(seqs):
    pos = torch.zeros_like(seqs)
    pos[:, :-1] = seqs[:, 1:]
    pos[seqs == 0] = 0
    pos[:, -1] = torch.tensor([11, 12, 13])
    neg = torch.where(pos > 0, torch.full_like(pos, 30), torch.zeros_like(pos))
    return {"seqs": seqs, "pos": pos, "neg": neg}


@pytest.fixture()
def text():
    rng = np.random.default_rng(0)
    llm = np.zeros((N_ITEMS + 1, LLM_DIM), dtype=np.float32)
    llm[1:] = rng.normal(size=(N_ITEMS, LLM_DIM))
    centred = llm[1:] - llm[1:].mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    pca = np.zeros((N_ITEMS + 1, HIDDEN), dtype=np.float32)
    pca[1:] = centred @ vt[:HIDDEN].T
    return TextTables.from_arrays(llm, pca, llm[1:].mean(axis=0), vt[:HIDDEN])
