"""Chunked top-K, full-catalogue ranks, MMR and the z-score blend against brute force."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from longtail.models.histories import pad_histories
from longtail.ranking.metrics import target_ranks
from longtail.ranking.topk import (
    item_hubness,
    candidate_scores,
    candidate_topk,
    catalogue_moments,
    chunked_topk,
    full_ranks,
    minmax_rows,
    mmr_rerank,
    zscore_blend_items,
    zscore_blend_users,
)


def _brute_topk(users, items, k, seen, excluded=()):
    scores = (users @ items.T).numpy().astype(np.float64)
    scores[:, 0] = -np.inf
    for b, row in enumerate(seen.numpy()):
        scores[b, row[row > 0]] = -np.inf
    scores[:, list(excluded)] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_topk_equals_brute_force(chunk):
    g = torch.Generator().manual_seed(0)
    users, items = torch.randn(9, 5, generator=g), torch.randn(130, 5, generator=g)
    seen = pad_histories([[1, 2, 3], [], [129, 128, 5, 5], [7], [0], [10, 20], [30], [40, 41], [99]])
    scores, top = chunked_topk(users, items, 12, seen=seen, excluded=torch.tensor([17, 18]), item_chunk=chunk)
    want_items, want_scores = _brute_topk(users, items, 12, seen, excluded=(17, 18))
    np.testing.assert_array_equal(top.numpy(), want_items)
    np.testing.assert_allclose(scores.numpy(), want_scores, rtol=1e-5)


def test_chunked_topk_never_returns_seen_padding_or_excluded():
    users = torch.ones(2, 1)
    items = torch.arange(10, dtype=torch.float32)[:, None]  # item 9 best, row 0 padding
    seen = pad_histories([[9, 8], [1]])
    _, top = chunked_topk(users, items, 3, seen=seen, excluded=torch.tensor([7]), item_chunk=4)
    assert top.tolist() == [[6, 5, 4], [9, 8, 6]]


def test_chunked_topk_short_catalogue_marks_missing_slots():
    users = torch.ones(1, 1)
    items = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    scores, top = chunked_topk(users, items, 5, seen=pad_histories([[2]]), item_chunk=2)
    assert top.tolist() == [[3, 1, 0, 0, 0]]
    assert torch.isneginf(scores[0, 2:]).all()


def test_candidate_topk_over_every_item_equals_chunked_topk():
    # An index that returns the whole catalogue (in any order) gives the exact lists back.
    g = torch.Generator().manual_seed(3)
    users, items = torch.randn(9, 5, generator=g), torch.randn(130, 5, generator=g)
    seen = pad_histories([[1, 2, 3], [], [129, 128, 5, 5], [7], [0], [10, 20], [30], [40, 41], [99]])
    excluded = torch.tensor([17, 18])
    every = torch.stack([torch.randperm(129, generator=g) + 1 for _ in range(9)])
    scores, top = candidate_topk(users, items, every, 12, seen=seen, excluded=excluded)
    want_scores, want_top = chunked_topk(users, items, 12, seen=seen, excluded=excluded, item_chunk=64)
    np.testing.assert_array_equal(top.numpy(), want_top.numpy())
    np.testing.assert_allclose(scores.numpy(), want_scores.numpy(), rtol=1e-5)


def test_candidate_topk_drops_padding_seen_and_excluded_and_marks_short_rows(monkeypatch):
    import longtail.ranking.topk as topk

    monkeypatch.setattr(topk, "CANDIDATE_FLOATS", 3)  # one user per gathered block
    users = torch.ones(2, 1)
    items = torch.arange(10, dtype=torch.float32)[:, None]  # item 9 best
    candidates = torch.tensor([[9, 8, 7, 0], [9, 3, 2, 1]])  # 0: the index found nothing more
    seen, excluded = pad_histories([[9], [1]]), torch.tensor([7])
    scores, top = candidate_topk(users, items, candidates, 3, seen=seen, excluded=excluded)
    assert top.tolist() == [[8, 0, 0], [9, 3, 2]]
    assert scores[0, 0] == 8.0 and torch.isneginf(scores[0, 1:]).all()
    scores, top = candidate_topk(users, items, candidates[:, :2], 3)  # fewer candidates than k
    assert top.tolist() == [[9, 8, 0], [9, 3, 0]] and torch.isneginf(scores[:, 2]).all()


def test_full_ranks_match_target_ranks_with_history_excluded():
    g = torch.Generator().manual_seed(1)
    users, items = torch.randn(6, 4, generator=g), torch.randn(50, 4, generator=g)
    histories = pad_histories([[1, 2], [3], [4, 5, 6], [], [7, 8], [9]])
    targets = torch.tensor([10, 11, 12, 13, 14, 9])  # last: target also in its history, still ranked
    ranks, top = full_ranks(users, items, targets, seen=histories, k=5, item_chunk=8)
    scores = (users @ items.T).numpy().astype(np.float64)
    for b in range(6):
        row = scores[b].copy()
        row[0] = -np.inf
        for h in histories[b].tolist():
            if h and h != int(targets[b]):
                row[h] = -np.inf
        want = target_ranks(row[None, :], int(targets[b]))[0]
        assert ranks[b].item() == pytest.approx(want)
        order = np.argsort(-row, kind="stable")[:5]
        assert top[b].tolist() == order.tolist()


def test_full_ranks_without_the_top_lists_rank_the_same():
    g = torch.Generator().manual_seed(2)
    users, items = torch.randn(40, 4, generator=g), torch.randn(300, 4, generator=g)
    items[11] = items[12]  # a tied pair: counts half either way
    targets = torch.randint(1, 300, (40,), generator=g)
    targets[:3] = 11
    seen = torch.randint(1, 300, (40, 6), generator=g)
    ranks, top = full_ranks(users, items, targets, seen=seen, k=5, item_chunk=64)
    alone, none = full_ranks(users, items, targets, seen=seen, k=5, item_chunk=64, with_top=False)
    assert torch.equal(ranks, alone) and none.shape == (40, 0) and top.shape == (40, 5)
    assert (ranks % 1 == 0.5).any()  # the tie was counted


def test_full_ranks_ties_count_half():
    users = torch.ones(1, 1)
    items = torch.tensor([[0.0], [2.0], [1.0], [1.0], [1.0], [3.0]])
    ranks, _ = full_ranks(users, items, torch.tensor([2]), k=2, item_chunk=2)
    # one better (item 5: 3.0, item 1: 2.0 -> two better), two ties -> 2 + 2/2
    assert ranks.item() == 3.0


def test_full_ranks_of_nan_scores_are_misses():
    users = torch.tensor([[float("nan")], [1.0]])
    items = torch.tensor([[0.0], [2.0], [1.0], [3.0]])
    ranks, _ = full_ranks(users, items, torch.tensor([1, 3]), k=2, item_chunk=2)
    assert ranks.tolist() == [4.0, 0.0]


def test_candidate_scores_is_a_gathered_dot_product():
    users = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    items = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, -1.0]])
    got = candidate_scores(users, items, torch.tensor([[2, 1], [1, 2]]))
    assert got.tolist() == [[3.0, 1.0], [2.0, -2.0]]


def test_mmr_with_lambda_one_is_the_plain_ranking():
    g = torch.Generator().manual_seed(2)
    emb = torch.nn.functional.normalize(torch.randn(40, 6, generator=g), dim=1)
    users, items = torch.randn(5, 6, generator=g), torch.randn(40, 6, generator=g)
    scores, cands = chunked_topk(users, items, 15, item_chunk=16)
    picked, picked_scores = mmr_rerank(cands, scores, emb, 10, lam=1.0)
    assert picked.tolist() == cands[:, :10].tolist()
    assert torch.equal(picked_scores, scores[:, :10])


def test_mmr_trades_relevance_for_diversity():
    # Items 1 and 2 are near duplicates, item 3 is different and slightly less relevant.
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.999, 0.0447], [0.0, 1.0]])
    emb = torch.nn.functional.normalize(emb + 1e-9, dim=1)
    cands = torch.tensor([[1, 2, 3]])
    scores = torch.tensor([[1.0, 0.95, 0.9]])
    plain, _ = mmr_rerank(cands, scores, emb, 2, lam=1.0)
    diverse, _ = mmr_rerank(cands, scores, emb, 2, lam=0.5)
    assert plain.tolist() == [[1, 2]]
    assert diverse.tolist() == [[1, 3]]


def test_mmr_skips_invalid_candidates():
    emb = torch.eye(4)
    picked, s = mmr_rerank(torch.tensor([[3, 2, 0]]), torch.tensor([[2.0, 1.0, float("-inf")]]), emb, 3, lam=0.7)
    assert picked.tolist() == [[3, 2, 0]]
    assert torch.isneginf(s[0, 2])


def test_minmax_rows():
    got = minmax_rows(torch.tensor([[2.0, 4.0, 3.0], [5.0, 5.0, float("-inf")]]))
    assert got[0].tolist() == [0.0, 1.0, 0.5]
    assert got[1, :2].tolist() == [1.0, 1.0] and torch.isneginf(got[1, 2])


def test_zscore_blend_equals_explicit_per_user_zscores():
    g = torch.Generator().manual_seed(3)
    n = 30
    allowed = torch.ones(n, dtype=torch.bool)
    allowed[0] = False
    u1, v1 = torch.randn(4, 3, generator=g), torch.randn(n, 3, generator=g)
    u2, v2 = torch.randn(4, 2, generator=g), torch.randn(n, 2, generator=g)
    m1, c1 = catalogue_moments(v1, allowed)
    m2, c2 = catalogue_moments(v2, allowed)
    users = zscore_blend_users([(0.7, u1, m1, c1), (0.3, u2, m2, c2)])
    items = zscore_blend_items([v1, v2])
    got = (users @ items.T)[:, 1:].double()

    def z(s):
        s = s[:, 1:].double()
        return (s - s.mean(dim=1, keepdim=True)) / s.std(dim=1, unbiased=False, keepdim=True)

    want = 0.7 * z(u1 @ v1.T) + 0.3 * z(u2 @ v2.T)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_zscore_blend_part_with_no_spread_contributes_nothing():
    n = 5
    allowed = torch.tensor([False, True, True, True, True])
    v = torch.randn(n, 2)
    m, c = catalogue_moments(v, allowed)
    users = zscore_blend_users([(1.0, torch.zeros(1, 2), m, c)])
    assert torch.count_nonzero(users @ zscore_blend_items([v]).T) == 0


def test_item_hubness_is_the_mean_of_each_items_top_scores_over_users():
    gen = torch.Generator().manual_seed(3)
    users, items = torch.randn(40, 6, generator=gen), torch.randn(23, 6, generator=gen)
    got = item_hubness(users, items, m=5, item_chunk=4)
    want = torch.topk(users @ items.T, 5, dim=0).values.mean(0).numpy()
    want[0] = 0.0  # the padding row
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Fewer users than m: all of them; no users: zeros.
    np.testing.assert_allclose(item_hubness(users[:2], items, m=5)[1:], (users[:2] @ items.T).mean(0)[1:].numpy(),
                               rtol=1e-5, atol=1e-6)
    assert not item_hubness(users[:0], items).any()


# --------------------------------------------------------------------------- devices


def _device_case(seed: int = 4):
    g = torch.Generator().manual_seed(seed)
    users, items = torch.randn(9, 5, generator=g), torch.randn(130, 5, generator=g)
    seen = pad_histories([[1, 2, 3], [], [129, 128, 5, 5], [7], [0], [10, 20], [30], [40, 41], [99]])
    excluded = torch.tensor([17, 18, 64])
    candidates = torch.stack([torch.randperm(129, generator=g)[:40] + 1 for _ in range(9)])
    targets = torch.tensor([10, 11, 12, 13, 14, 9, 17, 64, 1])
    return users, items, seen, excluded, candidates, targets


def _all_paths(users, items, seen, excluded, candidates, targets):
    return [
        *chunked_topk(users, items, 12, seen=seen, excluded=excluded, item_chunk=64),
        *candidate_topk(users, items, candidates, 12, seen=seen, excluded=excluded),
        *full_ranks(users, items, targets, seen=seen, excluded=excluded, k=5, item_chunk=64),
    ]


def test_the_accelerator_masks_give_the_cpu_results_bit_for_bit(monkeypatch):
    # The device code path (positions found on the CPU, one indexed write on the device), run on
    # CPU tensors: identical to the numpy path, so a GPU differs only by its own arithmetic.
    import longtail.ranking.topk as topk

    case = _device_case()
    want = _all_paths(*case)
    monkeypatch.setattr(topk, "_host", lambda t: False)
    got = _all_paths(*case)
    for w, g in zip(want, got):
        assert torch.equal(w, g)


@pytest.mark.gpu
def test_scoring_on_a_gpu_equals_the_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    users, items, seen, excluded, candidates, targets = _device_case()
    want = _all_paths(users, items, seen, excluded, candidates, targets)
    got = _all_paths(users.cuda(), items.cuda(), seen, excluded, candidates, targets)
    assert all(g.device.type == "cuda" for g in got)
    for i, (w, g) in enumerate(zip(want, got)):
        if w.dtype == torch.long:  # items: the same lists (these scores have no near ties)
            assert torch.equal(w, g.cpu()), i
        else:
            torch.testing.assert_close(g.cpu(), w, rtol=1e-5, atol=1e-5)
