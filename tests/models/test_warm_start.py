"""Warm start: carrying a model's weights and Adam state into a grown catalogue (pure torch)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from longtail.models import TextTables, build_model
from longtail.models.warm_start import carry_optimizer, carry_state, optimizer_state_by_name
from tiny_models import HIDDEN, LLM_DIM, planted_walks

OLD_ITEMS = 40
NEW_ITEMS = 46


def _text(n_items: int, seed: int = 0) -> TextTables:
    rng = np.random.default_rng(seed)
    llm = rng.normal(size=(NEW_ITEMS + 1, LLM_DIM)).astype(np.float32)[: n_items + 1]
    llm[0] = 0
    mean = llm[1:].mean(axis=0)
    _, _, vt = np.linalg.svd(llm[1:] - mean, full_matrices=False)
    pca = (llm - mean) @ vt[:HIDDEN].T
    pca[0] = 0
    return TextTables.from_arrays(llm, pca, mean, vt[:HIDDEN])


def _hp(**kw):
    return {"hidden": HIDDEN, "layers": 1, "heads": 1, "dropout": 0.0, "max_len": 10, "alpha": 0.0,
            "cross_attention": False, "loss": "sampled_softmax", **kw}


def _permuted_rows() -> np.ndarray:
    """New idx -> old idx: items keep ids but NOT positions (old idx 3 and 7 swapped, old 40 dropped),
    and 7 items are new (idxs 40..46 have no old idx)."""
    rows = np.zeros(NEW_ITEMS + 1, dtype=np.int64)
    rows[1:40] = np.arange(1, 40)
    rows[3], rows[7] = 7, 3
    return rows


@pytest.mark.parametrize("name", ["llmesr_sasrec", "llmesr_bert4rec", "sasrec"])
def test_rows_follow_the_item_and_new_items_are_placed_through_the_pca_map(name):
    text = name.startswith("llmesr")
    torch.manual_seed(0)
    old = build_model(name, OLD_ITEMS, _hp(), _text(OLD_ITEMS) if text else None)
    with torch.no_grad():  # weights away from their init, as after training
        for param in old.parameters():
            param.add_(0.1 * torch.randn_like(param))
    new = build_model(name, NEW_ITEMS, _hp(), _text(NEW_ITEMS) if text else None)
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    rows = _permuted_rows()
    new.load_state_dict(carry_state(new, old.state_dict(), rows, _text(NEW_ITEMS).llm if text else None))

    table, old_table = new.views[0].embedding.weight, old.views[0].embedding.weight
    known = np.flatnonzero(rows)
    assert torch.equal(table[known], old_table[rows[known]])  # by item, not by position
    assert torch.equal(table[3], old_table[7]) and torch.equal(table[7], old_table[3])
    unseen = torch.arange(40, NEW_ITEMS + 1)
    if text:  # placed from text through the OLD model's map, as serving places text-only items
        placed = old.views[0].from_text(_text(NEW_ITEMS).llm[unseen])
        assert torch.allclose(table[unseen], placed, atol=1e-6)
    else:  # no map: the fresh init a from-scratch run gives them
        assert torch.equal(table[unseen], fresh["views.0.embedding.weight"][unseen])
    if name.endswith("bert4rec"):  # the mask token row follows the mask token
        assert torch.equal(table[NEW_ITEMS + 1], old_table[OLD_ITEMS + 1])
    for key, value in old.state_dict().items():  # the rest is the old model's, as it was
        if "embedding.weight" not in key.split("views.0.")[-1] and not key.endswith(".llm"):
            assert torch.equal(new.state_dict()[key], value), key
    # The carried model ranks old items for a known history as the old model did.
    history = torch.tensor([[0, 0, 1, 2, 4]])
    with torch.no_grad():
        assert torch.allclose(new.user_vectors(history), old.user_vectors(history), atol=1e-5)


def test_unused_idxs_keep_the_fresh_init():
    text = _text(NEW_ITEMS)
    text.llm[45] = 0  # an id the k-core dropped: no embedding in the run's table
    old = build_model("llmesr_sasrec", OLD_ITEMS, _hp(), _text(OLD_ITEMS))
    new = build_model("llmesr_sasrec", NEW_ITEMS, _hp(), text)
    fresh = new.state_dict()["views.0.embedding.weight"][45].clone()
    state = carry_state(new, old.state_dict(), _permuted_rows(), text.llm)
    assert torch.equal(state["views.0.embedding.weight"][45], fresh)


def test_another_architecture_is_refused():
    old = build_model("sasrec", OLD_ITEMS, _hp())
    for other in (_hp(hidden=2 * HIDDEN), _hp(layers=2)):
        new = build_model("sasrec", NEW_ITEMS, other)
        with pytest.raises(ValueError, match="architecture differs"):
            carry_state(new, old.state_dict(), _permuted_rows())


def test_adam_state_follows_the_items_and_unseen_rows_start_fresh():
    torch.manual_seed(0)
    old = build_model("sasrec", OLD_ITEMS, _hp())
    opt = torch.optim.Adam(old.parameters(), lr=0.01)
    walks = planted_walks(n_items=OLD_ITEMS)
    old.train()
    for _ in range(3):
        opt.zero_grad()
        old.loss({"seqs": walks[:64, :-1], "pos": walks[:64, 1:], "negatives": torch.arange(1, 17)}).backward()
        opt.step()
    saved = optimizer_state_by_name(opt, old)
    assert set(saved) == {n for n, _ in old.named_parameters()}
    new = build_model("sasrec", NEW_ITEMS, _hp())
    new_opt = torch.optim.Adam(new.parameters(), lr=0.01)
    rows = _permuted_rows()
    assert carry_optimizer(new_opt, new, saved, rows) == len(saved)
    state = new_opt.state[new.views[0].embedding.weight]
    old_sq = saved["views.0.embedding.weight"]["exp_avg_sq"]
    assert torch.equal(state["exp_avg_sq"][3], old_sq[7])
    assert torch.equal(state["exp_avg"][40:], torch.zeros(7, HIDDEN))
    # A new item's row has no history: zero moments, so its rare gradients get steps of its own
    # size, not the small ones a popular row's large second moment would impose.
    assert torch.equal(state["exp_avg_sq"][40:], torch.zeros(7, HIDDEN)) and bool((old_sq[1:] > 0).any())
    assert float(state["step"]) == 3
    # The optimizer steps with the carried state.
    new_opt.zero_grad()
    new.loss({"seqs": walks[:8, :-1], "pos": walks[:8, 1:], "negatives": torch.arange(1, 17)}).backward()
    new_opt.step()
    assert float(new_opt.state[new.views[0].embedding.weight]["step"]) == 4
