"""Shared building blocks: positions, padding trim, attention masks, padding invariance."""
from __future__ import annotations

import pytest
import torch
from longtail.models.layers import attention_mask, left_positions, trim_padding
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
