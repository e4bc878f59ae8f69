"""LLM-ESR: dual views, the frozen semantic table, cross-attention, self-distillation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import HIDDEN, LLM_DIM, N_ITEMS, assert_all_parameters_get_gradients, fit, full_hr5, planted_walks
from longtail.models import TextTables, build_model

BACKBONES = ["llmesr_sasrec", "llmesr_gru4rec", "llmesr_bert4rec"]


@pytest.mark.parametrize("name", BACKBONES)
def test_shapes_and_backward(name, hp, seqs, batch, text):
    torch.manual_seed(0)
    model = build_model(name, N_ITEMS, hp, text)
    assert model.user_vectors(seqs).shape == (3, 2 * HIDDEN)
    items = model.item_vectors()
    assert items.shape == (N_ITEMS + 1, 2 * HIDDEN) and torch.all(items[0] == 0)
    loss = model.loss(batch)
    loss.backward()
    assert_all_parameters_get_gradients(model)
    # The LLM table is frozen: a buffer, not a parameter.
    assert "views.1.llm" in dict(model.named_buffers())
    assert all("llm" not in n for n, _ in model.named_parameters())


def test_collaborative_view_starts_from_pca_and_new_items_use_the_projection(hp, text):
    torch.manual_seed(0)
    model = build_model("llmesr_sasrec", N_ITEMS, hp, text)
    assert torch.allclose(model.views[0].table()[1:], text.pca[1:])
    # Before training, an item placed from its text alone lands where the model has it.
    from_text = model.item_vectors_from_text(text.llm[1:6])
    assert from_text.shape == (5, 2 * HIDDEN)
    assert torch.allclose(from_text, model.item_vectors()[1:6], atol=1e-4)


def test_plain_backbone_cannot_place_items_from_text(hp):
    model = build_model("sasrec", N_ITEMS, hp)
    assert not model.supports_text
    with pytest.raises(TypeError):
        model.item_vectors_from_text(torch.zeros(1, LLM_DIM))


def test_cross_attention_is_switchable(hp, seqs, text):
    torch.manual_seed(0)
    on = build_model("llmesr_sasrec", N_ITEMS, hp, text)
    off = build_model("llmesr_sasrec", N_ITEMS, {**hp, "cross_attention": False}, text)
    assert on.cross is not None and off.cross is None
    assert sum(p.numel() for p in on.parameters()) > sum(p.numel() for p in off.parameters())


def test_cross_attention_keeps_sasrec_causal(hp, text):
    torch.manual_seed(0)
    model = build_model("llmesr_sasrec", N_ITEMS, hp, text).eval()
    fa = model.features(torch.tensor([[1, 2, 3, 4]]))
    fb = model.features(torch.tensor([[1, 2, 3, 9]]))
    assert torch.allclose(fa[:, :3], fb[:, :3])


def _with_neighbors(batch):
    # Users 0 and 1 have similar users; user 2 has none. Items 20-25 appear only in the
    # neighbours' sequences (not in any input, target or negative of the batch).
    out = dict(batch)
    out["neighbor_seqs"] = torch.tensor([[0, 20, 21, 22], [23, 24, 25, 3], [0, 0, 21, 24]])
    out["neighbor_index"] = torch.tensor([[0, 1], [2, -1], [-1, -1]])
    return out


@pytest.mark.parametrize("name", BACKBONES)
def test_distillation_moves_only_the_student(name, hp, batch, text):
    torch.manual_seed(0)
    model = build_model(name, N_ITEMS, hp, text)  # dropout 0: forward passes are repeatable
    full = _with_neighbors(batch)

    model.zero_grad()
    model.loss(full).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    # Reference: the same loss with the teachers' mean as a constant.
    model.zero_grad()
    with torch.no_grad():
        teacher = model.features(full["neighbor_seqs"])[:, -1]
        target = torch.stack([teacher[[0, 1]].mean(0), teacher[[2]].mean(0)])
    student = model.features(batch["seqs"])[:, -1][:2]
    reference = model.loss(batch) + hp["alpha"] * F.mse_loss(student, target)
    reference.backward()
    for n, p in model.named_parameters():
        assert torch.allclose(grads[n], p.grad, rtol=1e-4, atol=1e-5), (n, (grads[n] - p.grad).abs().max())

    # Items seen only by the teachers get no gradient at all.
    collaborative = dict(model.named_parameters())["views.0.embedding.weight"]
    model.zero_grad()
    model.loss(full).backward()
    assert torch.all(collaborative.grad[20:26] == 0)
    assert torch.any(collaborative.grad[3:7] != 0)


def test_distillation_term_changes_the_loss_by_alpha_times_mse(hp, batch, text):
    torch.manual_seed(0)
    model = build_model("llmesr_sasrec", N_ITEMS, hp, text)
    full = _with_neighbors(batch)
    plain, with_kd = model.loss(batch), model.loss(full)
    assert with_kd > plain
    model.alpha = 0.0
    assert torch.allclose(model.loss(full), plain)


def test_semantic_table_is_the_two_layer_adapter(hp, text):
    torch.manual_seed(0)
    model = build_model("llmesr_sasrec", N_ITEMS, hp, text)
    semantic = model.views[1]
    stepwise = semantic.adapter(text.llm[1:])
    assert torch.allclose(semantic.table()[1:], stepwise, atol=1e-5)
    assert semantic.adapter[0].out_features == LLM_DIM // 2


def test_standardized_semantic_view_places_new_items_like_catalogue_items(hp, text):
    torch.manual_seed(0)
    model = build_model("llmesr_sasrec", N_ITEMS, {**hp, "llm_standardize": True}, text)
    llm = model.views[1].llm
    assert torch.all(llm[0] == 0)
    assert torch.allclose(llm[1:].mean(0), torch.zeros(LLM_DIM), atol=1e-5)
    assert torch.allclose(model.item_vectors_from_text(text.llm[1:6]), model.item_vectors()[1:6], atol=1e-4)
    # A saved model reloads into a zero table and gets the same buffers back.
    empty = build_model("llmesr_sasrec", N_ITEMS, {**hp, "llm_standardize": True},
                        type(text).zeros(N_ITEMS, LLM_DIM, HIDDEN))
    empty.load_state_dict(model.state_dict())
    assert torch.allclose(empty.item_vectors(), model.item_vectors())


def test_pca_init_at_backbone_scale_keeps_its_geometry(hp, text):
    torch.manual_seed(0)
    model = build_model("llmesr_sasrec", N_ITEMS, {**hp, "pca_init_scale": "backbone"}, text)
    table = model.views[0].table()[1:].detach()
    ratio = table / text.pca[1:]
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), atol=1e-4)  # one common factor
    assert abs(float(table.std()) - (2.0 / (N_ITEMS + 1 + HIDDEN)) ** 0.5) < 1e-3
    assert torch.allclose(model.item_vectors_from_text(text.llm[1:6]), model.item_vectors()[1:6], atol=1e-4)


@pytest.mark.parametrize("coefficient", [0.0, 0.5, 1.0])
def test_residual_fusion_adds_each_views_own_sequence_and_at_0_is_the_papers(hp, text, seqs, coefficient):
    from longtail.models.layers import attention_mask

    torch.manual_seed(0)
    model = build_model("llmesr_sasrec", N_ITEMS, {**hp, "cross_residual": coefficient}, text)
    cross = model.cross
    a, b = torch.randn(3, 6, HIDDEN), torch.randn(3, 6, HIDDEN)
    # The paper's fusion written out: each view becomes the attention over it with the other
    # view's queries (padding zeroed), nothing of its own sequence kept.
    keep = (seqs != 0).unsqueeze(-1)
    allowed = attention_mask(seqs == 0, causal=True)
    paper_a, paper_b = cross.first(b, a, allowed) * keep, cross.second(a, b, allowed) * keep
    fused_a, fused_b = cross(a, b, seqs)
    assert torch.allclose(fused_a, paper_a + coefficient * a, atol=1e-6)
    assert torch.allclose(fused_b, paper_b + coefficient * b, atol=1e-6)
    if coefficient == 0.0:
        assert torch.equal(fused_a, paper_a) and torch.equal(fused_b, paper_b)


# --------------------------------------------------------------------------- the popularity gate


def _gated(hp, text, popularity):
    text.popularity = torch.as_tensor(popularity, dtype=torch.float64)
    return build_model("llmesr_sasrec", N_ITEMS, {**hp, "semantic_view": True, "view_gate": "popularity"}, text)


def test_the_gate_starts_as_no_gate_and_buckets_items_by_log2_popularity(hp, text, batch):
    popularity = torch.zeros(N_ITEMS + 1)
    popularity[1:] = torch.arange(N_ITEMS)  # item i was seen i - 1 times
    torch.manual_seed(0)
    gated = _gated(hp, text, popularity)
    torch.manual_seed(0)
    plain = build_model("llmesr_sasrec", N_ITEMS, {**hp, "semantic_view": True}, text)
    assert gated.item_gate is not None and plain.item_gate is None
    assert torch.allclose(gated.item_vectors(), plain.item_vectors())
    assert torch.allclose(gated.loss(batch), plain.loss(batch))
    # floor(log2(1 + count)), capped at 7: counts 0 | 1 | 2-3 | 4-7 | ... | 64+
    assert gated.item_gate.bucket[[0, 1, 2, 3, 4, 5, 8, 9, 40]].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 5]
    with torch.no_grad():
        gated.item_gate.weight[:] = torch.tensor([[0.5, 2.0]] + [[1.0, 1.0]] * 7)
    items = gated.item_vectors()
    # Item 1 (never seen, bucket 0): the collaborative half halved, the semantic half doubled.
    assert torch.allclose(items[1, :HIDDEN], 0.5 * plain.item_vectors()[1, :HIDDEN])
    assert torch.allclose(items[1, HIDDEN:], 2.0 * plain.item_vectors()[1, HIDDEN:])
    assert torch.allclose(items[5], plain.item_vectors()[5])
    # Items placed from text get bucket 0's weights; the sequence encoder reads the ungated tables.
    assert torch.allclose(gated.item_vectors_from_text(text.llm[1:2]), items[1:2], atol=1e-5)
    assert torch.allclose(gated.user_vectors(batch["seqs"]), plain.user_vectors(batch["seqs"]), atol=1e-6)


def test_a_saved_gate_comes_back_with_its_buckets(hp, text):
    popularity = torch.arange(N_ITEMS + 1).double()
    model = _gated(hp, text, popularity)
    reloaded = build_model("llmesr_sasrec", N_ITEMS, {**hp, "semantic_view": True, "view_gate": "popularity"},
                           TextTables.zeros(N_ITEMS, LLM_DIM, HIDDEN))
    reloaded.load_state_dict(model.state_dict())
    assert torch.equal(reloaded.item_gate.bucket, model.item_gate.bucket)


@pytest.mark.parametrize("settings", [
    {"cross_residual": 1.0}, {"cross_attention": False}, {"cross_attention": False, "view_gate": "popularity"},
], ids=["residual-fusion", "no-fusion", "popularity-gate"])
def test_the_dual_view_learns_a_planted_pattern_under_full_ranking(hp, text, settings):
    data = planted_walks()
    popularity = torch.bincount(data[:, :-2].flatten(), minlength=N_ITEMS + 1).double()
    text.popularity = popularity
    torch.manual_seed(0)
    model = build_model("llmesr_sasrec", N_ITEMS, {**hp, "dropout": 0.0, "alpha": 0.0, "semantic_view": True,
                                                    "loss": "sampled_softmax", **settings}, text)
    before = full_hr5(model, data)
    fit(model, data, steps=60)
    after = full_hr5(model, data)
    assert after > 3 * 5 / N_ITEMS and after > before + 0.2, (before, after)
