"""SASRec: shapes, gradients, causality, padding invariance."""
from __future__ import annotations

import torch
from tiny_models import HIDDEN, N_ITEMS, assert_all_parameters_get_gradients
from longtail.models import build_model


def test_shapes_and_backward(hp, seqs, batch):
    torch.manual_seed(0)
    model = build_model("sasrec", N_ITEMS, hp)
    assert model.user_vectors(seqs).shape == (3, HIDDEN)
    items = model.item_vectors()
    assert items.shape == (N_ITEMS + 1, HIDDEN)
    assert torch.all(items[0] == 0)
    loss = model.loss(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert_all_parameters_get_gradients(model)


def test_is_causal(hp):
    torch.manual_seed(0)
    model = build_model("sasrec", N_ITEMS, hp).eval()
    a = torch.tensor([[1, 2, 3, 4]])
    b = torch.tensor([[1, 2, 3, 9]])  # only the last item differs
    fa, fb = model.features(a), model.features(b)
    assert torch.allclose(fa[:, :3], fb[:, :3])
    assert not torch.allclose(fa[:, 3], fb[:, 3])


def test_extra_left_padding_changes_nothing(hp):
    torch.manual_seed(0)
    model = build_model("sasrec", N_ITEMS, hp).eval()
    short = torch.tensor([[3, 4, 5]])
    padded = torch.tensor([[0, 0, 0, 0, 3, 4, 5]])
    assert torch.allclose(model.user_vectors(short), model.user_vectors(padded), atol=1e-6)


def test_only_the_last_max_len_items_count(hp):
    torch.manual_seed(0)
    model = build_model("sasrec", N_ITEMS, hp).eval()
    long = torch.arange(1, 16).unsqueeze(0)  # 15 items, max_len 10
    assert torch.allclose(model.user_vectors(long), model.user_vectors(long[:, -10:]))


def test_loss_by_length_groups_equals_one_padded_pass(hp, batch):
    torch.manual_seed(0)
    model = build_model("sasrec", N_ITEMS, hp)  # dropout 0
    model.loss_group_rows = 1000
    whole = model.loss(batch)
    model.loss_group_rows = 1
    assert torch.allclose(model.loss(batch), whole, atol=1e-6)


def test_loss_of_long_and_short_histories_in_one_batch_equals_one_padded_pass(hp, monkeypatch):
    # Lengths 3 to 40 in a batch of one group: split by length class (above 32), the same loss.
    torch.manual_seed(0)
    hp = {**hp, "max_len": 64}
    model = build_model("sasrec", N_ITEMS, hp)  # dropout 0
    lengths = [3, 40, 7, 36, 12]
    seqs = torch.zeros(len(lengths), 41, dtype=torch.long)
    for r, n in enumerate(lengths):
        seqs[r, -n - 1 :] = torch.randint(1, N_ITEMS + 1, (n + 1,))
    batch = {"seqs": seqs[:, :-1], "pos": seqs[:, 1:] * (seqs[:, :-1] != 0), "neg": torch.randint(1, N_ITEMS + 1, (5, 40))}
    model.loss_group_rows = 1000
    grouped = model.loss(batch)
    from longtail.models import layers

    monkeypatch.setattr(layers, "SHORT_HISTORY", 1000)  # one pass over the whole padded batch
    assert torch.allclose(grouped, model.loss(batch), atol=1e-6)
