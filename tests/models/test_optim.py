"""Row-wise (lazy) Adam for the item tables: the same first step as dense Adam, untouched rows kept,
a sparse-aware norm clip, learning, the resolution of ``train.item_updates``, carried state."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from longtail.models import build_model
from longtail.models.optim import (
    SPARSE_ITEMS_FROM,
    ItemRowsAdam,
    WeightAverage,
    clip_grad_norm,
    sparse_item_updates,
)
from longtail.models.warm_start import carry_optimizer, optimizer_state_by_name
from tiny_models import N_ITEMS, fit, full_hr5, planted_walks


def _hp(hp: dict) -> dict:
    return {**hp, "dropout": 0.0, "loss": "sampled_softmax", "cross_attention": False}


def _batch(items: list[int], negatives: list[int]) -> dict:
    seqs = torch.tensor([items[:-1]])
    return {"seqs": seqs, "pos": torch.tensor([items[1:]]), "negatives": torch.tensor(negatives)}


def _pair(hp, eps: float = 1e-8):
    """A dense-Adam model and its copy with sparse item tables under :class:`ItemRowsAdam`."""
    torch.manual_seed(0)
    dense = build_model("sasrec", N_ITEMS, _hp(hp))
    sparse = copy.deepcopy(dense)
    opt_dense = torch.optim.Adam(dense.parameters(), lr=0.01, eps=eps)
    opt_sparse = ItemRowsAdam(sparse.parameters(), sparse.sparse_item_tables(), lr=0.01, eps=eps)
    return dense, opt_dense, sparse, opt_sparse


def _step(model, optimizer, batch, clip: float) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    model.loss(batch).backward()
    norm = clip_grad_norm(model.parameters(), clip)
    optimizer.step()
    return norm


def test_the_first_step_equals_dense_adam_with_the_clip(hp):
    # eps negligible: SparseAdam adds it before the bias correction, Adam after (see ItemRowsAdam).
    dense, opt_dense, sparse, opt_sparse = _pair(hp, eps=1e-14)
    batch = _batch([3, 4, 5, 6], [7, 8, 20])
    norm_dense = _step(dense, opt_dense, batch, clip=0.05)  # small enough to clip
    norm_sparse = _step(sparse, opt_sparse, batch, clip=0.05)
    assert norm_dense > 0.05 and torch.allclose(norm_dense, norm_sparse, rtol=1e-5)
    assert sparse.views[0].embedding.weight.grad.is_sparse
    for (name, a), b in zip(dense.named_parameters(), sparse.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_rows_a_step_did_not_touch_stay_put_only_under_row_wise_updates(hp):
    dense, opt_dense, sparse, opt_sparse = _pair(hp)
    first, second = _batch([3, 4, 5, 6], [7, 8]), _batch([30, 31, 32], [33])
    for model, opt in ((dense, opt_dense), (sparse, opt_sparse)):
        _step(model, opt, first, clip=float("inf"))
    before_dense = dense.views[0].embedding.weight.detach().clone()
    before_sparse = sparse.views[0].embedding.weight.detach().clone()
    for model, opt in ((dense, opt_dense), (sparse, opt_sparse)):
        _step(model, opt, second, clip=float("inf"))
    only_first = torch.tensor([3, 4, 5, 6, 7, 8])
    both_touched = torch.tensor([30, 31, 32, 33])
    after_sparse = sparse.views[0].embedding.weight.detach()
    assert torch.equal(after_sparse[only_first], before_sparse[only_first])
    assert not torch.allclose(after_sparse[both_touched], before_sparse[both_touched])
    # Dense Adam moves the first batch's rows again by their momentum: the difference is real.
    assert not torch.allclose(dense.views[0].embedding.weight.detach()[only_first], before_dense[only_first])


def test_clip_scales_sparse_and_dense_gradients_like_torch_on_their_dense_form():
    torch.manual_seed(0)
    table = torch.nn.Parameter(torch.randn(10, 3))
    weight = torch.nn.Parameter(torch.randn(3, 3))
    ids = torch.tensor([1, 4, 4, 9])  # a repeated row: coalesced before it counts
    (torch.nn.functional.embedding(ids, table, sparse=True) @ weight).square().sum().backward()
    dense_table, dense_weight = table.grad.to_dense().clone(), weight.grad.clone()
    reference = torch.nn.Parameter(table.detach().clone()), torch.nn.Parameter(weight.detach().clone())
    reference[0].grad, reference[1].grad = dense_table, dense_weight
    expected = torch.nn.utils.clip_grad_norm_(reference, 1.0)
    norm = clip_grad_norm([table, weight], 1.0)
    assert torch.allclose(norm, expected)
    assert torch.allclose(table.grad.to_dense(), reference[0].grad, atol=1e-6)
    assert torch.allclose(weight.grad, reference[1].grad, atol=1e-6)
    assert clip_grad_norm([table, weight], float("inf")) == pytest.approx(1.0, rel=1e-4)  # measured, not scaled


@pytest.mark.parametrize("name", ["sasrec", "llmesr_sasrec"])
def test_a_model_with_row_wise_item_updates_learns_a_planted_pattern(name, hp, text):
    torch.manual_seed(0)
    model = build_model(name, N_ITEMS, _hp(hp), text if name.startswith("llmesr") else None)
    tables = model.sparse_item_tables()
    assert len(tables) == 1  # the collaborative view; the semantic view's LLM table is frozen
    optimizer = ItemRowsAdam(model.parameters(), tables, lr=0.01)
    fit(model, planted_walks(), 60, optimizer=optimizer)
    hr5, random_hr5 = full_hr5(model, planted_walks()), 5 / N_ITEMS
    assert hr5 > 3 * random_hr5, f"{name}: HR@5 {hr5:.3f} vs random {random_hr5:.3f}"


def test_whole_table_steps_cannot_be_row_wise(hp):
    with pytest.raises(ValueError, match="loss: ce"):
        build_model("sasrec", N_ITEMS, {**_hp(hp), "loss": "ce"}).sparse_item_tables()


@pytest.mark.parametrize(("setting", "items", "device", "distributed", "expected"), [
    ("auto", SPARSE_ITEMS_FROM, "cpu", False, True),
    ("auto", SPARSE_ITEMS_FROM, "cpu", True, True),  # gloo all-reduces sparse gradients
    ("auto", SPARSE_ITEMS_FROM - 1, "cpu", False, False),
    ("auto", 10 * SPARSE_ITEMS_FROM, "cuda", False, False),
    ("sparse", 100, "cpu", False, True),
    ("sparse", 100, "cuda", False, True),
    ("sparse", 100, "cuda", True, False),  # NCCL has no sparse all-reduce
    ("dense", 10 * SPARSE_ITEMS_FROM, "cpu", False, False),
])
def test_item_updates_resolve_by_catalogue_device_and_backend(setting, items, device, distributed, expected):
    assert sparse_item_updates(setting, items, device, distributed) is expected


def test_unknown_item_updates_setting_is_named():
    with pytest.raises(ValueError, match="train.item_updates 'lazy'"):
        sparse_item_updates("lazy", 10, "cpu", False)


def test_adam_state_carries_between_dense_and_row_wise_optimisers(hp):
    dense, opt_dense, sparse, opt_sparse = _pair(hp)
    batch = _batch([3, 4, 5, 6], [7, 8, 20])
    _step(dense, opt_dense, batch, clip=float("inf"))
    saved = optimizer_state_by_name(opt_dense, dense)
    assert saved["views.0.embedding.weight"]["step"].dtype == torch.float32
    rows = np.arange(N_ITEMS + 1)  # the same catalogue: every row carried
    assert carry_optimizer(opt_sparse, sparse, saved, rows) == len(saved)
    table = sparse.views[0].embedding.weight
    state = opt_sparse.sparse.state[table]
    assert state["step"] == 1 and isinstance(state["step"], int)
    assert torch.equal(state["exp_avg_sq"], saved["views.0.embedding.weight"]["exp_avg_sq"])
    _step(sparse, opt_sparse, batch, clip=float("inf"))  # it resumes
    back = optimizer_state_by_name(opt_sparse, sparse)
    assert back["views.0.embedding.weight"]["step"].item() == 2.0


def test_adam_beta2_reaches_the_dense_and_the_row_wise_updates(hp):
    """``train.adam_beta2``: two steps (Adam's first is the same at any beta2) equal torch's Adam with it,
    and differ from the default's."""
    # The same rows both steps (a row a step skips moves under dense Adam only); eps negligible (see above).
    batches = [_batch([3, 4, 5, 6], [7, 8, 20])] * 2

    def after_two_steps(make):
        torch.manual_seed(0)
        model = build_model("sasrec", N_ITEMS, _hp(hp))
        optimizer = make(model)
        for batch in batches:
            _step(model, optimizer, batch, clip=100.0)
        return dict(model.named_parameters())

    betas = (0.9, 0.98)
    reference = after_two_steps(lambda m: torch.optim.Adam(m.parameters(), lr=0.01, betas=betas, eps=1e-14))
    rowwise = after_two_steps(lambda m: ItemRowsAdam(m.parameters(), m.sparse_item_tables(), lr=0.01, betas=betas,
                                                     eps=1e-14))
    default = after_two_steps(lambda m: ItemRowsAdam(m.parameters(), m.sparse_item_tables(), lr=0.01, eps=1e-14))
    for name, weights in reference.items():
        if name.endswith("key.bias"):  # softmax ignores it: its gradient is rounding noise, which Adam scales up
            continue
        assert torch.allclose(weights, rowwise[name], atol=1e-6), name
    assert any(not torch.allclose(w, default[n], atol=1e-6) for n, w in reference.items())


def test_weight_average_is_the_exponential_average_of_the_trained_weights_and_leaves_them_trained():
    module = torch.nn.Sequential(torch.nn.Embedding(4, 2), torch.nn.Linear(2, 1))
    module[0].weight.requires_grad_(False)  # a frozen table (the LLM's) is neither copied nor averaged
    frozen = module[0].weight.detach().clone()
    start = module[1].weight.detach().clone()
    average = WeightAverage(module, decay=0.5)
    expected = start.clone()
    for value in (1.0, 2.0, 4.0):  # what three optimiser steps left in the weight
        with torch.no_grad():
            module[1].weight.fill_(value)
        average.update()
        expected = 0.5 * expected + 0.5 * value
    with average.applied():
        assert torch.allclose(module[1].weight, expected)
        assert torch.equal(module[0].weight, frozen)
    assert torch.equal(module[1].weight, torch.full_like(start, 4.0))  # training goes on from its own weights
    assert len(average._average) == 2  # the Linear's weight and bias only


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_weight_average_refuses_a_decay_outside_0_1(decay):
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(torch.nn.Linear(2, 1), decay)
