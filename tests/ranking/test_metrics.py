"""Ranking and catalogue metrics against hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
from longtail.ranking.metrics import gini, hit_rate, list_diversities, mrr, ndcg, sample_negatives, target_ranks


def test_target_ranks_plain_and_with_target_column():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.9]])
    assert target_ranks(scores, 0).tolist() == [0.0, 2.0]
    assert target_ranks(scores, np.array([2, 1])).tolist() == [1.0, 1.0]


def test_target_ranks_ties_count_half():
    # target 0.5; one better (0.7), three ties -> 1 + 3/2
    scores = np.array([[0.5, 0.7, 0.5, 0.5, 0.5, 0.1]])
    assert target_ranks(scores)[0] == 2.5
    # everything equal over 101 candidates: chance level, rank 50
    assert target_ranks(np.zeros((1, 101)))[0] == 50.0


def test_target_ranks_ignore_excluded_candidates():
    scores = np.array([[0.1, -np.inf, 0.3, -np.inf]])
    assert target_ranks(scores)[0] == 1.0


def test_a_nan_target_is_a_miss_not_a_hit():
    # A diverged model scores NaN: it must rank last (and score 0), never first (NDCG above 1).
    scores = np.array([[np.nan, 0.1, 0.3], [np.nan, np.nan, np.nan], [0.9, np.nan, 0.1]])
    ranks = target_ranks(scores)
    assert ranks.tolist() == [3.0, 3.0, 0.0]
    assert ndcg(ranks[:2], 3) == 0.0 and hit_rate(ranks[:2], 3) == 0.0  # after all 3 candidates


def test_hit_rate_and_ndcg_hand_computed():
    ranks = np.array([0.0, 1.0, 9.0, 10.0, 2.5])
    assert hit_rate(ranks, 10) == pytest.approx(4 / 5)
    assert hit_rate(ranks, 1) == pytest.approx(1 / 5)
    want = (1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(11) + 0 + 1 / math.log2(4.5)) / 5
    assert ndcg(ranks, 10) == pytest.approx(want)
    assert hit_rate(np.array([]), 10) == 0.0 and ndcg(np.array([]), 10) == 0.0


def test_ndcg_of_a_tie_sits_between_the_neighbouring_ranks():
    assert 1 / math.log2(4) < ndcg(np.array([1.5]), 10) < 1 / math.log2(3)


def test_sample_negatives_exclude_history_are_distinct_and_seeded():
    seen = np.array([1, 2, 3, 5, 8])
    a = sample_negatives(np.random.default_rng([42, 7]), 20, seen, 15)
    b = sample_negatives(np.random.default_rng([42, 7]), 20, seen, 15)
    c = sample_negatives(np.random.default_rng([43, 7]), 20, seen, 15)
    assert a.tolist() == b.tolist()
    assert sorted(a.tolist()) == sorted(set(range(1, 21)) - set(seen.tolist()))  # all 15 unseen, once
    assert a.tolist() != c.tolist()
    assert not set(sample_negatives(np.random.default_rng(0), 1000, seen, 100)) & set(seen.tolist())


def test_sample_negatives_are_uniform_over_unseen_items():
    rng = np.random.default_rng(0)
    counts = np.zeros(11)
    for _ in range(2000):
        for i in sample_negatives(rng, 10, np.array([4]), 3):
            counts[i] += 1
    assert counts[0] == 0 and counts[4] == 0
    share = counts[[1, 2, 3, 5, 6, 7, 8, 9, 10]] / 6000
    assert np.allclose(share, 1 / 9, atol=0.02)


def test_sample_negatives_too_few_items():
    with pytest.raises(ValueError, match="only 2 unseen items"):
        sample_negatives(np.random.default_rng(0), 4, np.array([1, 2]), 3)


def test_mrr_hand_computed():
    ranks = np.array([0.0, 1.0, 3.0, 12.0, 2.5])
    # 1/1 + 1/2 + 1/4 + 0 (beyond k) + 1/3.5 (a half rank from a tie)
    assert mrr(ranks, 10) == pytest.approx((1 + 0.5 + 0.25 + 0 + 1 / 3.5) / 5)
    assert mrr(ranks, 1) == pytest.approx(1 / 5) and mrr(np.array([]), 10) == 0.0


def test_gini_of_recommendation_counts():
    assert gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)  # every item equally exposed
    assert gini(np.array([0, 0, 0, 12])) == pytest.approx(0.75)  # one of four items takes every slot: (n-1)/n
    assert gini(np.array([1, 2, 3, 4])) == pytest.approx(0.25)  # hand-computed: 2*30/(4*10) - 5/4
    assert gini(np.zeros(3)) == 0.0 and gini(np.array([])) == 0.0


def test_diversity_hand_computed():
    vecs = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [2, 0]], dtype=float)
    # list (1, 2): orthogonal -> 1; list (1, 4): identical direction -> 0
    assert list_diversities(np.array([[1, 2], [1, 4]]), vecs).tolist() == pytest.approx([1.0, 0.0])
    # list (1, 2, 3): cosines 0, 1/sqrt2, 1/sqrt2 -> mean 1 - sqrt2/3
    assert list_diversities(np.array([[1, 2, 3]]), vecs)[0] == pytest.approx(1 - math.sqrt(2) / 3)
    assert list_diversities(np.array([[1]]), vecs).tolist() == [0.0]
