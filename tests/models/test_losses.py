"""Training objectives: chunked CE, sampled softmax, logQ, and each loss on every backbone."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import N_ITEMS, fit, full_hr5, next_item, planted_walks

from longtail.models import build_model
from longtail.models.bert4rec import cloze_mask
from longtail.models.losses import (
    ChunkedLogSumExp,
    bce,
    full_softmax_ce,
    logsumexp_items,
    sampled_softmax,
)

torch.set_num_threads(1)


def _data(seed=0, n=7, rows=23, d=5):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    items = torch.randn(rows, d, generator=g, dtype=torch.float64)
    items[0] = 0
    items.requires_grad_(True)
    targets = torch.randint(1, rows, (n,), generator=g)
    return h, items, targets


def _reference_ce(h, items, targets):
    return F.cross_entropy(h @ items[1:].T, targets - 1)


@pytest.mark.parametrize("chunk", [1, 3, 5, 22, 0, 100])
def test_chunked_ce_equals_unchunked_values_and_gradients(chunk):
    h, items, targets = _data()
    ref = _reference_ce(h, items, targets)
    gh, gi = torch.autograd.grad(ref, [h, items])
    got = full_softmax_ce(h, items, targets, chunk=chunk)
    ch, ci = torch.autograd.grad(got, [h, items])
    assert torch.allclose(got, ref, atol=1e-12)
    assert torch.allclose(ch, gh, atol=1e-12) and torch.allclose(ci, gi, atol=1e-12)


def test_chunked_logsumexp_passes_gradcheck_with_bias():
    h, items, _ = _data(n=4, rows=9, d=3)
    bias = torch.randn(9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: ChunkedLogSumExp.apply(a, b, c, 2), (h, items, bias))
    assert torch.allclose(logsumexp_items(h, items, bias, 2), torch.logsumexp(h @ items.T + bias, 1))


def test_chunked_ce_is_stable_for_large_logits():
    h, items, targets = _data()
    with torch.no_grad():
        h.mul_(200.0)
    ref = _reference_ce(h, items, targets)
    got = full_softmax_ce(h, items, targets, chunk=4)
    assert torch.isfinite(got) and torch.allclose(got, ref, rtol=1e-10)


def test_padding_row_is_not_a_candidate():
    h, items, targets = _data()
    with torch.no_grad():
        items[0] = 1000.0  # would dominate the softmax if it were scored
    got = full_softmax_ce(h, items, targets, chunk=4)
    assert torch.allclose(got, _reference_ce(h, items, targets))


def test_sampled_softmax_with_every_item_as_negative_equals_ce():
    h, items, targets = _data()
    negatives = torch.arange(1, items.shape[0])  # the positive is among them: masked
    got = sampled_softmax(h, items, targets, negatives)
    ref = _reference_ce(h, items, targets)
    assert torch.allclose(got, ref, atol=1e-12)
    g1 = torch.autograd.grad(got, [h, items])
    g2 = torch.autograd.grad(ref, [h, items])
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(g1, g2))


def test_positive_is_never_its_own_negative():
    h, items, targets = _data(n=1)
    t = int(targets[0])
    alone = sampled_softmax(h, items, targets, torch.tensor([t, t, t]))
    assert torch.allclose(alone, torch.zeros((), dtype=alone.dtype))  # only the target remains


def _documented_sampled_softmax(h, items, targets, negatives, logq):
    """The documented formula: ``s - log Q(item)`` for the target and every draw (each its own
    column, a draw equal to the target masked), then the plain softmax."""
    pos = (h * items[targets]).sum(-1) - logq[targets]
    neg = h @ items[negatives].T - logq[negatives]
    neg = neg.masked_fill(negatives[None] == targets[:, None], -math.inf)
    return F.cross_entropy(torch.cat([pos[:, None], neg], 1), torch.zeros_like(targets))


def test_logq_subtracts_log_probability_from_every_candidate():
    h, items, targets = _data()
    negatives = torch.tensor([1, 4, 4, 9, 15])
    logq = torch.log(torch.linspace(0.01, 1.0, items.shape[0], dtype=torch.float64))
    got = sampled_softmax(h, items, targets, negatives, logq=logq)
    assert torch.allclose(got, _documented_sampled_softmax(h, items, targets, negatives, logq))
    # A constant log Q (uniform draw) changes nothing; a non-constant one does.
    flat = sampled_softmax(h, items, targets, negatives, logq=torch.full_like(logq, -3.0))
    assert torch.allclose(flat, sampled_softmax(h, items, targets, negatives))
    assert not torch.allclose(got, flat)


def test_bce_matches_the_reference_formula():
    h, items, targets = _data()
    negatives = (targets % (items.shape[0] - 1)) + 1
    pos = (h * items[targets]).sum(-1)
    neg = (h * items[negatives]).sum(-1)
    expected = -F.logsigmoid(pos).mean() - F.logsigmoid(-neg).mean()
    assert torch.allclose(bce(h, items, targets, negatives), expected)


# --------------------------------------------------------------------------- in the models

NAMES = ["sasrec", "gru4rec", "bert4rec", "llmesr_sasrec", "llmesr_gru4rec", "llmesr_bert4rec"]


def _model(name, hp, text, **extra):
    hp = {**hp, **extra}
    return build_model(name, N_ITEMS, hp, text if name.startswith("llmesr") else None)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("loss", ["ce", "sampled_softmax"])
def test_every_model_trains_with_every_loss(name, loss, hp, batch, text):
    torch.manual_seed(0)
    model = _model(name, hp, text, loss=loss, ce_item_chunk=7)
    b = dict(batch)
    b["negatives"] = torch.tensor([2, 5, 7, 30, 31])
    value = model.loss(b)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


@pytest.mark.parametrize("name", ["sasrec", "llmesr_bert4rec"])
def test_model_ce_equals_unchunked_and_sampled_with_all_items(name, hp, batch, text):
    torch.manual_seed(0)
    chunked = _model(name, hp, text, loss="ce", ce_item_chunk=7)
    plain = _model(name, hp, text, loss="ce", ce_item_chunk=0)
    sampled = _model(name, hp, text, loss="sampled_softmax")
    plain.load_state_dict(chunked.state_dict())
    sampled.load_state_dict(chunked.state_dict())
    b = {**batch, "negatives": torch.arange(1, N_ITEMS + 1)}
    a, p, s = chunked.loss(b), plain.loss(b), sampled.loss(b)
    assert torch.allclose(a, p, atol=1e-5) and torch.allclose(a, s, atol=1e-5)


def test_bce_is_the_default_and_unchanged(hp, batch, text):
    torch.manual_seed(0)
    model = _model("sasrec", hp, text)
    assert model.loss_kind == "bce"
    model.eval()
    value = model.loss(batch)
    h = model.features(batch["seqs"])
    target = batch["pos"] > 0
    expected = bce(h[target], model.item_vectors(), batch["pos"][target], batch["neg"][target])
    assert torch.allclose(value, expected, atol=1e-6)


def test_unknown_loss_is_refused(hp):
    with pytest.raises(ValueError, match="unknown loss"):
        build_model("sasrec", N_ITEMS, {**hp, "loss": "hinge"})


def test_epoch_teachers_give_the_step_teachers_target(hp, text):
    torch.manual_seed(0)
    model = build_model("llmesr_sasrec", N_ITEMS, {**hp, "dropout": 0.0}, text)
    seqs = torch.tensor([[0, 3, 4, 5], [1, 2, 3, 4]])
    neighbor_seqs = torch.tensor([[0, 0, 7, 8], [5, 6, 7, 9], [0, 0, 0, 2]])
    index = torch.tensor([[0, 1], [2, -1]])
    pos = torch.tensor([[0, 4, 5, 6], [2, 3, 4, 5]])
    step = {"seqs": seqs, "pos": pos, "neg": torch.where(pos > 0, 30, 0),
            "neighbor_seqs": neighbor_seqs, "neighbor_index": index}
    cache = model.teacher_reps(neighbor_seqs)
    epoch = {"seqs": seqs, "pos": pos, "neg": step["neg"], "teacher": cache, "neighbor_index": index}
    assert torch.allclose(model.loss(step), model.loss(epoch), atol=1e-6)
    assert not cache.requires_grad


# --------------------------------------------------------------------------- planted pattern


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "bert4rec"])
@pytest.mark.parametrize("loss", ["bce", "ce", "sampled_softmax"])
def test_tiny_model_learns_a_planted_pattern_under_full_ranking(name, loss, hp):
    torch.manual_seed(0)
    model = build_model(name, N_ITEMS, {**hp, "dropout": 0.0, "loss": loss, "ce_item_chunk": 16})

    def cloze(rng, walks):  # hide random items, and only the last in half the rows
        inputs, labels = cloze_mask(rng, walks.numpy(), N_ITEMS, 0.3, last_only=np.arange(len(walks)) % 2 == 0)
        return torch.from_numpy(inputs), torch.from_numpy(labels)

    fit(model, planted_walks(), 150 if name == "bert4rec" else 60, batch=cloze if name == "bert4rec" else next_item)
    hr5, random_hr5 = full_hr5(model, planted_walks()), 5 / N_ITEMS
    assert hr5 > 3 * random_hr5, f"{name}/{loss}: HR@5 {hr5:.3f} vs random {random_hr5:.3f}"


@pytest.mark.parametrize("name", ["sasrec", "llmesr_gru4rec"])
def test_cosine_scores_are_bounded_by_the_temperature_and_train(name, hp, batch, text, seqs):
    torch.manual_seed(0)
    model = _model(name, hp, text, loss="ce", similarity="cosine", temperature=0.1)
    model.eval()
    scores = model.user_vectors(seqs) @ model.item_vectors().T
    assert scores.abs().max() <= 10.0 + 1e-4
    assert torch.all(model.item_vectors()[0] == 0)
    # The training logits are the served scores: a batch whose only target is the last
    # position gives the CE of the served scores.
    pos = torch.zeros_like(seqs)
    pos[:, -1] = torch.tensor([11, 12, 13])
    value = model.loss({"seqs": seqs, "pos": pos})
    expected = F.cross_entropy(scores[:, 1:], pos[:, -1] - 1)
    assert torch.allclose(value, expected, atol=1e-5)


def test_repeated_negatives_score_once_with_the_same_loss_and_gradients():
    h, items, targets = _data()
    negatives = torch.tensor([4, 1, 4, 9, 4, 15, 9])
    logq = torch.log(torch.linspace(0.01, 1.0, items.shape[0], dtype=torch.float64))
    got = sampled_softmax(h, items, targets, negatives, logq=logq)
    expected = _documented_sampled_softmax(h, items, targets, negatives, logq)  # every draw its own column
    assert torch.allclose(got, expected, atol=1e-12)
    g1 = torch.autograd.grad(got, [h, items])
    g2 = torch.autograd.grad(expected, [h, items])
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(g1, g2))
