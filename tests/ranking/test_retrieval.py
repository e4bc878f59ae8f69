"""The candidate index (faiss) against brute force: flat and IVF, the bias column, bytes, the choices."""
from __future__ import annotations

import dataclasses
import pickle
import sys

import numpy as np
import pytest
import torch
from longtail.core.errors import EnvironmentProblem
from longtail.ranking import retrieval
from longtail.ranking.retrieval import (
    EXACT_MAX_ITEMS,
    MIN_ITEMS_PER_LIST,
    build_index,
    candidate_count,
    choose_retrieval,
    list_count,
    seen_counts,
    tune_index,
    with_norm_column,
)
from longtail.ranking.topk import candidate_topk

pytest.importorskip("faiss")


def _data(n_items=400, n_users=30, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_users, dim)).astype(np.float32), rng.normal(size=(n_items, dim)).astype(np.float32)


def _brute(users, items, c, allowed=None, bias=None):
    """Top-``c`` item idxs by ``u . v + b`` over the allowed rows (row 0 never), best first."""
    scores = users.astype(np.float64) @ items.astype(np.float64).T
    if bias is not None:
        scores = scores + bias[None, :]
    scores[:, 0] = -np.inf
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :c]


def test_flat_index_returns_the_brute_force_top_c_with_the_bias_column():
    users, items = _data()
    bias = np.random.default_rng(1).normal(scale=2.0, size=len(items)).astype(np.float32)
    allowed = np.ones(len(items), dtype=bool)
    allowed[[5, 17, 300]] = False  # items the scorer cannot rank
    index = build_index(items, allowed=allowed, bias=bias)
    assert (index.kind, index.size, index.dim, index.biased) == ("flat", len(items) - 4, 6, True)
    found = index.search(users, 25)
    np.testing.assert_array_equal(found, _brute(users, items, 25, allowed, bias))
    assert not np.isin(found, [0, 5, 17, 300]).any()  # padding and unrankable items never come back
    # The bias moves the lists: without it they differ.
    assert (build_index(items, allowed=allowed).search(users, 25) != found).any()


def test_ivf_scanning_every_list_is_exact_and_fewer_lists_stay_close():
    users, items = _data(n_items=600)
    want = _brute(users, items, 20)
    every = build_index(items, nlist=8, nprobe=8)
    assert (every.kind, every.nlist, every.nprobe) == ("ivf", 8, 8)
    np.testing.assert_array_equal(every.search(users, 20), want)
    assert build_index(items, nlist=8, nprobe=100).nprobe == 8  # never more than the lists
    some = build_index(items, nlist=8, nprobe=4).search(users, 20)
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(some, want)])
    assert 0.5 < recall <= 1.0


def test_short_lists_pad_with_item_zero():
    users, items = _data(n_items=400)
    found = build_index(items, nlist=8, nprobe=1).search(users, 300)  # one list holds about 50 items
    assert (found == 0).any(axis=1).all()
    for row in found:
        valid = row[row > 0]
        assert len(np.unique(valid)) == len(valid) and (row[len(valid):] == 0).all()  # found items first


def test_quantised_index_probing_every_list_then_rescored_exactly_gives_the_exact_lists():
    users, items = _data(n_items=600, dim=7)  # odd width + bias + norm column: one zero column pads it
    bias = np.random.default_rng(2).normal(size=len(items)).astype(np.float32)
    index = build_index(items, bias=bias, nlist=4, nprobe=4, kind="ivf_pq", shortlist=599)
    assert (index.kind, index.nlist, index.nprobe, index.shortlist, index.width) == ("ivf_pq", 4, 4, 599, 10)
    found = index.search(users, 10)
    assert found.shape == (30, 599) and (np.sort(found, axis=1) == np.arange(1, 600)).all()  # every item, once
    served = torch.from_numpy(np.concatenate([items, bias[:, None]], axis=1))
    queries = torch.from_numpy(np.concatenate([users, np.ones((len(users), 1), np.float32)], axis=1))
    got = candidate_topk(queries, served, torch.from_numpy(found), 20)[1].numpy()
    np.testing.assert_array_equal(got, _brute(users, items, 20, bias=bias))


def test_quantised_index_returns_its_shortlist_and_auto_quantises_large_catalogues(monkeypatch):
    users, items = _data(n_items=2000)
    index = build_index(items, nlist=8, nprobe=2, kind="ivf_pq", shortlist=50)
    assert index.search(users, 10).shape == (30, 50) and index.search(users, 80).shape == (30, 80)
    assert index.describe() == "ivf_pq 8 lists (norm), nprobe 2, at least 50 candidates, 1999 items"
    some = index.search(users, 50)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(some, _brute(users, items, 10))])
    assert recall > 0.5  # two of eight lists, codes of 4 bits: close, not exact
    assert build_index(items, nlist=8).kind == "ivf"  # auto: full vectors below PQ_MIN_ITEMS
    monkeypatch.setattr(retrieval, "PQ_MIN_ITEMS", 1000)
    assert build_index(items, nlist=8).kind == "ivf_pq" and build_index(items[:40], nlist=8).kind == "ivf"
    assert build_index(items, nlist=8, kind="flat").kind == "flat"
    with pytest.raises(ValueError, match="not one of auto, flat, ivf, ivf_pq"):
        build_index(items, kind="hnsw")


def test_the_norm_column_equalises_norms_and_keeps_inner_products():
    rows = np.array([[3.0, 4.0], [0.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    out = with_norm_column(rows)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 5.0)
    np.testing.assert_allclose(np.array([[1.0, 2.0, 0.0]]) @ out.T, np.array([[1.0, 2.0]]) @ rows.T)
    assert with_norm_column(rows, even=True).shape == (3, 4) and with_norm_column(rows[:, :1], even=True).shape == (3, 2)


@pytest.mark.parametrize("nlist, kind", [(0, "auto"), (8, "ivf"), (8, "ivf_pq")])
def test_the_index_travels_as_bytes_and_searches_the_same_after(nlist, kind):
    users, items = _data()
    index = build_index(items, nlist=nlist, nprobe=8, kind=kind)
    before = index.search(users, 10)
    assert index._index is not None
    copy = pickle.loads(pickle.dumps(index))
    assert copy._index is None and isinstance(copy.data, np.ndarray)  # only the bytes travel
    np.testing.assert_array_equal(copy.search(users, 10), before)
    assert copy.describe() == index.describe()


def test_user_vectors_of_the_wrong_width_are_refused():
    users, items = _data()
    with pytest.raises(ValueError, match="7-d, the index holds 6-d"):
        build_index(items).search(np.ones((2, 7), dtype=np.float32), 3)


def test_missing_faiss_is_one_line_naming_the_extra(monkeypatch):
    users, items = _data()
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(EnvironmentProblem, match=r"pip install 'longtail\[ann\]'") as err:
        build_index(items)
    assert "\n" not in str(err.value)


def test_auto_is_exact_up_to_the_threshold_and_lists_follow_the_catalogue():
    assert choose_retrieval("auto", EXACT_MAX_ITEMS) == "exact"
    assert choose_retrieval("auto", EXACT_MAX_ITEMS + 1) == "ann"
    assert choose_retrieval("ann", 10) == "ann" and choose_retrieval("exact", 10**8) == "exact"
    with pytest.raises(ValueError, match="not one of"):
        choose_retrieval("fast", 10)
    # 4 sqrt(N) lists, flat while that leaves fewer than 39 items per list (N below about 24,300).
    assert list_count(20_000) == 0 and list_count(1_000_000) == 4000 and list_count(10_000_000) == 12649
    assert list_count(30_000) == round(4 * 30_000**0.5) and 30_000 >= MIN_ITEMS_PER_LIST * list_count(30_000)
    assert list_count(100, nlist=8) == 8 and list_count(5, nlist=8) == 5  # a number is taken, one list per item at most


def test_candidate_count_leaves_pool_unseen_items_and_seen_counts_distinct_items():
    assert candidate_count(500, pool=10, seen=30, indexed=10_000) == 500
    assert candidate_count(500, pool=100, seen=450, indexed=10_000) == 550
    assert candidate_count(500, pool=10, seen=30, indexed=200) == 200
    seen = np.array([[0, 0, 3, 3, 5], [1, 2, 3, 4, 5], [0, 0, 0, 0, 0]])
    assert seen_counts(seen).tolist() == [2, 5, 0]
    assert seen_counts(np.zeros((2, 0), dtype=np.int64)).tolist() == [0, 0]


# --------------------------------------------------------------------------- ann_nprobe: auto (tune_index)


def _clustered(n_items=1200, n_users=200, dim=8, topics=12, seed=3):
    """Items around a few topic directions with unequal norms, users leaning to one topic each."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, dim))
    items = centres[rng.integers(topics, size=n_items)] + 0.3 * rng.normal(size=(n_items, dim))
    items *= rng.lognormal(sigma=0.4, size=(n_items, 1))
    users = centres[rng.integers(topics, size=n_users)] + 0.3 * rng.normal(size=(n_users, dim))
    return users.astype(np.float32), items.astype(np.float32)


@pytest.mark.parametrize("quantizer", ["norm", "spherical"])
def test_both_quantizers_are_exact_when_every_list_is_scanned(quantizer):
    users, items = _clustered()
    bias = np.random.default_rng(4).normal(size=len(items)).astype(np.float32)
    index = build_index(items, bias=bias, nlist=16, nprobe=16, kind="ivf", quantizer=quantizer)
    assert index.quantizer == quantizer and (index.width == 10) == (quantizer == "norm")
    np.testing.assert_array_equal(index.search(users, 10), _brute(users, items, 10, bias=bias))
    with pytest.raises(ValueError, match="not one of norm, spherical"):
        build_index(items, nlist=16, quantizer="kmeans")


def test_tuning_reaches_the_target_on_the_served_lists_with_the_fewest_vectors_scanned():
    users, items = _clustered()
    seen = np.random.default_rng(5).integers(1, len(items), size=(len(users), 3))
    index = tune_index(items, users, seen=seen, nlist=32, kind="ivf", target_recall=0.9)
    t = index.tuning
    assert (t["target"], t["queries"], t["quantizer"], t["nprobe"]) == (0.9, 200, index.quantizer, index.nprobe)
    assert t["recall_at_10"] >= 0.9 and 1 <= index.nprobe < 32  # clustered data: not every list
    reached = [r for r in t["tried"] if r["recall_at_10"] >= 0.9]
    assert t["scanned"] == min(r["scanned"] for r in reached) < 1.0
    assert "tuned: recall@10 0." in index.describe() and "on 200 sampled queries (target 0.9)" in index.describe()
    # What it measured is what it serves: the same queries' lists, seen items left out, at that recall.
    mask = torch.zeros((len(users), len(items)), dtype=torch.bool).scatter_(1, torch.from_numpy(seen), True)
    exact = _brute(users, items, 10 + 3)
    want = [[i for i in row if not mask[u, i]][:10] for u, row in enumerate(exact)]
    found = torch.from_numpy(index.search(users, 13))
    got = candidate_topk(torch.from_numpy(users), torch.from_numpy(items), found, 10,
                         seen=torch.from_numpy(seen))[1].numpy()
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want)])
    assert recall == pytest.approx(t["recall_at_10"])


def test_a_tuned_index_short_of_its_target_says_so_and_what_to_change():
    users, items = _clustered()
    index = tune_index(items, users, nlist=16, kind="ivf", target_recall=0.9)
    assert index.tuning["recall_at_10"] >= 0.9 and "BELOW" not in index.describe()
    tried = [{"quantizer": "norm", "nprobe": 16, "recall_at_10": 0.01, "scanned": 1.0}]
    short = dataclasses.replace(index, tuning={**index.tuning, "recall_at_10": 0.01, "tried": tried})
    assert short.describe().endswith(
        "; BELOW THE TARGET even with every list scanned: raise `candidates` or set `retrieval: exact`")
    partial = dataclasses.replace(short, tuning={**short.tuning, "tried": [{**tried[0], "scanned": 0.5}]})
    assert "BELOW THE TARGET at every setting tried" in partial.describe()


def test_tuning_to_recall_one_serves_the_exact_lists_and_small_catalogues_stay_flat():
    users, items = _clustered()
    index = tune_index(items, users, nlist=16, kind="ivf", target_recall=1.0)
    assert index.tuning["recall_at_10"] == 1.0
    np.testing.assert_array_equal(index.search(users, 10)[:, :10], _brute(users, items, 10))
    norm = [r for r in index.tuning["tried"] if r["quantizer"] == "norm"]
    assert [r["nprobe"] for r in norm][:3] == [1, 2, 4]  # doubling, then a bisection below the first hit
    reached = min(r["nprobe"] for r in norm if r["recall_at_10"] == 1.0)
    missed = max(r["nprobe"] for r in norm if r["recall_at_10"] < 1.0)
    assert missed < reached <= 16 and reached - missed <= max(1, reached // 8)
    flat = tune_index(items[:50], users)  # too few items for lists: exact, nothing to tune
    assert flat.kind == "flat" and flat.tuning is None
    with pytest.raises(ValueError, match="no query"):
        tune_index(items, users[:0], nlist=16)


def test_the_second_quantizer_is_built_only_when_the_first_needs_many_lists(monkeypatch):
    users, items = _clustered()
    easy = tune_index(items, users, nlist=32, kind="ivf", target_recall=0.5)
    assert {r["quantizer"] for r in easy.tuning["tried"]} == {"norm"}  # reached within DEFAULT_NPROBE lists
    monkeypatch.setattr(retrieval, "DEFAULT_NPROBE", 1)
    both = tune_index(items, users, nlist=32, kind="ivf", target_recall=0.99)
    assert {r["quantizer"] for r in both.tuning["tried"]} == {"norm", "spherical"}
