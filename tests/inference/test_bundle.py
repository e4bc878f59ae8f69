"""ScoringBundle.top_k from an index's candidates against the exact scan of the whole catalogue."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from longtail.inference.bundle import ScoringBundle, make_index
from longtail.inference.scorers import ExposureAdjusted
from longtail.models.histories import pad_histories
from longtail.ranking.vectors import unit_rows
from tiny_scorers import MeanOfHistory

pytest.importorskip("faiss")

N, D = 400, 6


def _bundle(scorer, mmr_lambda=None, mmr_candidates=100) -> ScoringBundle:
    items = scorer.item_vectors().to(torch.float32).numpy()
    unit = unit_rows(np.random.default_rng(5).normal(size=(N, 4))).astype(np.float32)
    return ScoringBundle(
        scorer=scorer, items=items, excluded=np.array([0, 11, 12], dtype=np.int64), unit_embeddings=unit,
        tail=np.zeros(N, dtype=bool), item_ids=[f"i{i}" for i in range(N)],
        mmr_lambda=mmr_lambda, mmr_candidates=mmr_candidates,
    )


def _users(seed=0, n_users=40):
    rng = np.random.default_rng(seed)
    histories = [list(rng.choice(np.arange(1, N), size=rng.integers(1, 30), replace=False)) for _ in range(n_users)]
    # seen: the history plus items touched beyond it (some repeated, some unrankable)
    seen = [h + list(rng.choice(np.arange(1, N), size=5)) + [11] for h in histories]
    return pad_histories(histories), pad_histories(seen)


def _items():
    return torch.from_numpy(np.random.default_rng(1).normal(size=(N, D)).astype(np.float32))


def _exposure_adjusted():
    bias = np.abs(np.random.default_rng(2).normal(size=N)).astype(np.float32)
    return ExposureAdjusted(MeanOfHistory(_items()), 0.7, bias, name="mean", version="1", kind="hubness")


@pytest.mark.parametrize("make", [lambda: MeanOfHistory(_items()), _exposure_adjusted], ids=["plain", "adjusted"])
@pytest.mark.parametrize("mmr", [None, 0.3], ids=["top-k", "mmr"])
@pytest.mark.parametrize("nlist", [0, 8], ids=["flat", "ivf-all-lists"])
def test_an_exact_index_gives_the_exact_lists(make, mmr, nlist, monkeypatch):
    import longtail.inference.bundle as bundle_module

    bundle = _bundle(make(), mmr_lambda=mmr, mmr_candidates=30)
    histories, seen = _users()
    index = make_index(bundle, nlist=nlist, nprobe=nlist or 1)
    assert index.size == N - 3 and index.kind == ("ivf" if nlist else "flat")
    exact_scores, exact_items = bundle.top_k(histories, 10, item_chunk=64, seen=seen)
    # Every list comes from the candidates: no user falls back to scanning the catalogue.
    monkeypatch.setattr(bundle_module, "chunked_topk", None)
    scores, items = bundle.top_k(histories, 10, item_chunk=64, seen=seen, index=index, candidates=20)
    np.testing.assert_array_equal(items.numpy(), exact_items.numpy())
    np.testing.assert_allclose(scores.numpy(), exact_scores.numpy(), rtol=1e-5, atol=1e-6)


def test_a_user_short_of_unseen_candidates_is_ranked_over_the_whole_catalogue():
    bundle = _bundle(MeanOfHistory(_items()))
    histories, _ = _users(n_users=3)
    # The third user has seen all but four items: one probed list (about 50 items) holds too few.
    rest = [i for i in range(1, N) if i not in (3, 150, 260, 399)]
    seen = pad_histories([list(h[h > 0].numpy()) for h in histories[:2]] + [rest])
    index = make_index(bundle, nlist=8, nprobe=1)
    scores, items = bundle.top_k(histories, 4, item_chunk=64, seen=seen, index=index, candidates=5)
    assert sorted(items[2].tolist()) == [3, 150, 260, 399]
    exact_scores, exact_items = bundle.top_k(histories, 4, item_chunk=64, seen=seen)
    np.testing.assert_array_equal(items[2].numpy(), exact_items[2].numpy())
    # The others get valid, unseen lists from the probed list (approximate: nprobe 1 of 8).
    for row, user_seen in zip(items[:2].numpy(), seen[:2].numpy()):
        assert (row > 0).all() and not np.isin(row, user_seen).any() and not np.isin(row, [11, 12]).any()


def test_a_user_with_fewer_unseen_items_than_k_gets_the_exact_short_list():
    bundle = _bundle(MeanOfHistory(_items()))
    histories = pad_histories([[1, 2]])
    seen = pad_histories([[i for i in range(1, N) if i not in (7, 8)]])
    index = make_index(bundle)
    scores, items = bundle.top_k(histories, 3, item_chunk=64, seen=seen, index=index, candidates=5)
    assert sorted(items[0, :2].tolist()) == [7, 8] and items[0, 2] == 0 and torch.isneginf(scores[0, 2])


@pytest.mark.parametrize("make", [lambda: MeanOfHistory(_items()), _exposure_adjusted], ids=["plain", "adjusted"])
def test_auto_nprobe_tunes_on_the_sampled_users_and_serves_at_that_recall(make):
    bundle = _bundle(make())
    histories, _ = _users(seed=3, n_users=60)
    sample = [list(h[h > 0].numpy()) for h in histories]
    exact = make_index(bundle, nlist=8, nprobe="auto", histories=sample, target_recall=1.0, candidates=20)
    assert exact.tuning["recall_at_10"] == 1.0 and exact.tuning["queries"] == 60
    want = bundle.top_k(histories, 10, item_chunk=64)[1]
    got = bundle.top_k(histories, 10, item_chunk=64, index=exact, candidates=20)[1]
    np.testing.assert_array_equal(got.numpy(), want.numpy())  # the tuned setting serves the exact lists
    loose = make_index(bundle, nlist=8, nprobe="auto", histories=sample, target_recall=0.5, candidates=20)
    assert loose.nprobe <= exact.nprobe and loose.tuning["recall_at_10"] >= 0.5
    fixed = make_index(bundle, nlist=8, nprobe="auto")  # no users to measure on: the fixed default
    assert fixed.tuning is None and fixed.nprobe == 8
