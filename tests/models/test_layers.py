"""Shared building blocks: positions, padding trim, attention masks, padding invariance."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from longtail.models.layers import (
    MultiHeadAttention,
    _attention_with_dropout,
    attention_mask,
    dropout,
    left_positions,
    length_groups,
    trim_padding,
)
from tiny_models import N_ITEMS


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


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_zeroes_a_share_p_and_keeps_the_mean(p):
    torch.manual_seed(0)
    x = torch.ones(400_000, requires_grad=True)
    y = dropout(x, p, training=True)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    assert abs(y.mean().item() - 1.0) < 0.02
    y.sum().backward()  # the gradient flows through the same mask, scaled alike
    assert torch.equal(x.grad, y.detach())


def test_dropout_is_identity_in_eval_or_at_zero_and_repeatable_under_a_seed():
    x = torch.randn(3, 5, 7)
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0, training=True) is x
    assert torch.all(dropout(x, 1.0, training=True) == 0)
    torch.manual_seed(1)
    a = dropout(x, 0.5, training=True)
    torch.manual_seed(1)
    assert torch.equal(a, dropout(x, 0.5, training=True))
    assert not torch.equal(a, dropout(x, 0.5, training=True))
    # every element position is dropped independently: no 4-element pattern repeats (the mask
    # comes from 16-bit quarters of 64-bit draws)
    mask = dropout(torch.ones(4_000), 0.5, training=True) != 0
    assert 0.4 < (mask.view(-1, 4).float().mean(0)).min().item() and mask.view(-1, 4).float().mean(0).max() < 0.6


def test_attention_with_dropout_is_scaled_dot_product_attention_when_nothing_drops():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 1, 5, 4) for _ in range(3))
    allowed = attention_mask(torch.tensor([[True, False, False, False, False], [False] * 5]), causal=True)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    assert torch.allclose(_attention_with_dropout(q, k, v, allowed, 1e-9), want, atol=1e-6)
    attention = MultiHeadAttention(4, 1, dropout=0.5).train()
    x = torch.randn(2, 5, 4)
    out = attention(x, x, allowed)  # the training path (CPU): some weights dropped, still finite
    assert torch.isfinite(out).all() and not torch.allclose(out, attention.eval()(x, x, allowed))


def test_length_groups_cover_each_row_once_with_similar_lengths():
    lengths = torch.tensor([3, 197, 40, 5, 70, 33, 150, 8, 64, 31, 129])
    groups = length_groups(lengths, group_rows=100)
    rows = torch.cat(groups)
    assert sorted(rows.tolist()) == list(range(lengths.numel()))
    for g in groups:
        longest, shortest = int(lengths[g].max()), int(lengths[g].min())
        assert longest <= 32 or longest <= 2 * shortest  # long rows never padded past twice their length
    assert sorted(lengths[groups[0]].tolist()) == [3, 5, 8, 31]  # short histories share one pass
    assert all(len(g) <= 2 for g in length_groups(lengths, group_rows=2))
    # A shorter first pass (encode_histories' ENCODE_SHORT); one that is no power of two counts as the next.
    assert [sorted(lengths[g].tolist()) for g in length_groups(lengths, 100, short=4)][:3] == [[3], [5, 8], [31]]
    assert sorted(lengths[length_groups(lengths, 100, short=5)[0]].tolist()) == [3, 5, 8]
    assert sorted(lengths[length_groups(lengths, 100, short=0)[0]].tolist()) == [3]


@pytest.mark.parametrize(
    "name,loss,extra",
    [
        ("sasrec", "bce", {}),
        ("sasrec", "sampled_softmax", {"logq": True}),
        ("llmesr_sasrec", "sampled_softmax", {"logq": True, "teachers": True}),
        ("llmesr_gru4rec", "bce", {}),
        ("bert4rec", "bce", {}),
        ("llmesr_bert4rec", "sampled_softmax", {"logq": True, "mask": True}),
    ],
)
def test_a_step_on_the_touched_rows_equals_the_whole_tables(name, loss, extra, hp, batch, text):
    """The loss and every gradient are those of the whole item tables (the rows a batch does not
    touch get zero gradient either way)."""
    from longtail.models import build_model

    hp = {**hp, "loss": loss, "dropout": 0.0, "cross_attention": False, "semantic_view": True}
    batch = dict(batch)
    if loss == "sampled_softmax":
        batch["negatives"] = torch.tensor([7, 30, 7, 2, 33, 12])
        if extra.get("logq"):
            batch["logq"] = torch.log(torch.linspace(0.001, 0.05, N_ITEMS + 1))
    if extra.get("mask"):  # the cloze mask token (idx N_ITEMS + 1) among the inputs
        batch["seqs"] = torch.where(batch["pos"] == 5, torch.full_like(batch["seqs"], N_ITEMS + 1), batch["seqs"])
    if extra.get("teachers"):
        batch["neighbor_seqs"] = torch.tensor([[0, 21, 22], [17, 18, 19]])
        batch["neighbor_index"] = torch.tensor([[0, 1], [1, -1], [-1, -1]])
    grads = []
    for touched in (True, False):
        torch.manual_seed(0)
        model = build_model(name, N_ITEMS, hp, text if name.startswith("llmesr") else None)
        model.gather_touched_rows = touched
        value = model.loss(batch)
        value.backward()
        grads.append((value.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (a, ga), (b, gb) = grads
    assert torch.allclose(a, b, atol=1e-6)
    assert ga.keys() == gb.keys() and ga
    for n in ga:
        assert torch.allclose(ga[n], gb[n], atol=1e-6), n


@pytest.mark.parametrize("name,cross", [("sasrec", False), ("llmesr_sasrec", True), ("llmesr_bert4rec", False),
                                        ("gru4rec", False)])
def test_user_vectors_from_the_touched_rows_equal_the_whole_tables(name, cross, hp, seqs, text):
    """A user's vector is built from the rows of its own items (its cost does not grow with the
    catalogue) and equals the one built from every row."""
    from longtail.models import build_model

    torch.manual_seed(0)
    model = build_model(name, N_ITEMS, {**hp, "cross_attention": cross}, text if name.startswith("llmesr") else None)
    model.eval()
    with torch.no_grad():
        touched = model.user_vectors(seqs)
        model.gather_touched_rows = False
        whole = model.user_vectors(seqs)
    assert touched.shape == whole.shape and torch.allclose(touched, whole, atol=1e-6)


@pytest.mark.parametrize("name,cross,layers", [
    ("sasrec", False, 2), ("sasrec", False, 1), ("llmesr_sasrec", True, 2), ("llmesr_sasrec", False, 3),
    ("bert4rec", False, 2), ("llmesr_bert4rec", True, 2), ("gru4rec", False, 1), ("llmesr_gru4rec", False, 2),
])
def test_the_last_position_alone_equals_the_last_position_of_the_whole_pass(name, cross, layers, hp, seqs, text):
    """User vectors run the last block for the scored position only: the same vector as the whole pass
    (every position of every block), for causal, bidirectional and recurrent encoders, with and
    without the cross-attention; in training mode the loss still sees every position."""
    from longtail.models import build_model

    torch.manual_seed(0)
    model = build_model(name, N_ITEMS, {**hp, "cross_attention": cross, "layers": layers},
                        text if name.startswith("llmesr") else None)
    model.eval()
    with torch.no_grad():
        whole = model.features(seqs)
        last = model.features(seqs, last_only=True)
        vectors = model.user_vectors(seqs)
    assert whole.shape[1] == seqs.shape[1] and last.shape == (seqs.shape[0], 1, whole.shape[2])
    assert torch.allclose(last[:, 0], whole[:, -1], atol=1e-5)
    if model.mask_token is None:  # a cloze model's vector reads an appended mask token
        assert torch.allclose(vectors, whole[:, -1], atol=1e-5)
    assert not torch.allclose(whole[:, -2], whole[:, -1], atol=1e-3)  # positions differ: a real check


@pytest.mark.parametrize("name", ["sasrec", "llmesr_sasrec"])
def test_a_bfloat16_step_gives_the_float32_loss_and_finite_gradients(name, hp, batch, text):
    # train.precision: bfloat16 runs the step under autocast; the weights stay float32.
    from longtail.models import build_model

    torch.manual_seed(0)
    hp = {**hp, "loss": "sampled_softmax", "dropout": 0.0, "cross_attention": False, "semantic_view": True}
    model = build_model(name, N_ITEMS, hp, text if name.startswith("llmesr") else None)
    batch = {**batch, "negatives": torch.arange(1, N_ITEMS + 1)}
    exact = model.loss(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.loss(batch)
    low.backward()
    assert abs(low.item() - exact.item()) < 0.02 * abs(exact.item())
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
