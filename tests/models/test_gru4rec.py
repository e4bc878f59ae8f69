"""GRU4Rec: shapes, gradients, causality, exact padding invariance."""
from __future__ import annotations

import torch
from tiny_models import HIDDEN, N_ITEMS, assert_all_parameters_get_gradients
from longtail.models import build_model


def test_shapes_and_backward(hp, seqs, batch):
    torch.manual_seed(0)
    model = build_model("gru4rec", N_ITEMS, hp)
    assert model.user_vectors(seqs).shape == (3, HIDDEN)
    assert model.item_vectors().shape == (N_ITEMS + 1, HIDDEN)
    loss = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert_all_parameters_get_gradients(model)


def test_left_padding_keeps_the_state_zero(hp):
    torch.manual_seed(0)
    model = build_model("gru4rec", N_ITEMS, hp).eval()
    a = model.user_vectors(torch.tensor([[5, 6, 7]]))
    b = model.user_vectors(torch.tensor([[0, 0, 0, 0, 0, 5, 6, 7]]))
    assert torch.equal(a, b)


def test_is_causal(hp):
    torch.manual_seed(0)
    model = build_model("gru4rec", N_ITEMS, hp).eval()
    fa = model.features(torch.tensor([[1, 2, 3, 4]]))
    fb = model.features(torch.tensor([[1, 2, 3, 9]]))
    assert torch.equal(fa[:, :3], fb[:, :3])
