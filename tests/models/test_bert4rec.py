"""Bert4Rec: shapes, the mask token, bidirectionality, cloze masking."""
from __future__ import annotations

import numpy as np
import torch
from tiny_models import HIDDEN, N_ITEMS, assert_all_parameters_get_gradients
from longtail.models import build_model
from longtail.models.bert4rec import cloze_mask


def test_shapes_and_backward(hp, seqs, batch):
    torch.manual_seed(0)
    model = build_model("bert4rec", N_ITEMS, hp)
    assert model.mask_token == N_ITEMS + 1
    assert model.user_vectors(seqs).shape == (3, HIDDEN)
    # The mask token's row is not an item: item_vectors stops at n_items.
    assert model.item_vectors().shape == (N_ITEMS + 1, HIDDEN)
    loss = model.loss(batch)
    loss.backward()
    assert_all_parameters_get_gradients(model)


def test_user_vector_reads_the_appended_mask_token(hp):
    torch.manual_seed(0)
    model = build_model("bert4rec", N_ITEMS, hp).eval()
    seqs = torch.tensor([[1, 2, 3]])
    with_mask = torch.tensor([[1, 2, 3, N_ITEMS + 1]])
    # The whole pass's last position (user vectors run the last block for it alone: float rounding apart).
    assert torch.allclose(model.user_vectors(seqs), model.features(with_mask)[:, -1], atol=1e-5)


def test_is_bidirectional(hp):
    torch.manual_seed(0)
    model = build_model("bert4rec", N_ITEMS, hp).eval()
    fa = model.features(torch.tensor([[1, 2, 3, 4]]))
    fb = model.features(torch.tensor([[1, 2, 3, 9]]))
    assert not torch.allclose(fa[:, 0], fb[:, 0])


def test_cloze_mask():
    rng = np.random.default_rng(0)
    tokens = np.tile(np.array([[0, 0, 5, 6, 7, 8, 9, 10]]), (200, 1))
    last_only = np.zeros(200, dtype=bool)
    last_only[:100] = True
    inputs, labels = cloze_mask(rng, tokens, N_ITEMS, 0.5, last_only)
    # Padding is never hidden nor changed.
    assert np.all(labels[:, :2] == 0) and np.all(inputs[:, :2] == 0)
    # Last-only rows: exactly the last item, always as the mask token.
    assert np.all(labels[:100, :-1] == 0) and np.all(labels[:100, -1] == 10)
    assert np.all(inputs[:100, -1] == N_ITEMS + 1) and np.all(inputs[:100, :-1] == tokens[:100, :-1])
    # Random rows: about half the real items hidden; labels are the original items.
    hidden = labels[100:] > 0
    assert 0.4 < hidden[:, 2:].mean() < 0.6
    assert np.all(labels[100:][hidden] == tokens[100:][hidden])
    assert np.all(inputs[100:][~hidden] == tokens[100:][~hidden])
    assert (inputs[100:][hidden] == N_ITEMS + 1).mean() > 0.6
