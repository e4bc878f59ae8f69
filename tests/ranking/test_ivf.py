"""Inverted lists over user vectors (``neighbors.method: ivf``): sizes, probes, centroids."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from longtail.core.errors import EnvironmentProblem
from longtail.ranking import ivf


def test_list_count_balances_assignment_and_search_and_respects_the_sample():
    assert ivf.list_count(1_000_000) == 4000  # 4 sqrt(users)
    assert ivf.list_count(100_000_000, sample=262_144) == 262_144 // ivf.MIN_TRAIN_POINTS_PER_LIST
    assert ivf.list_count(100, lists=7, sample=16) == 7  # a number is taken as it is
    assert ivf.list_count(3, lists=50) == 3 and ivf.list_count(1) == 1


def test_sample_size_is_bounded_by_the_cap_and_the_users():
    assert ivf.sample_size(10_000_000, 4000, cap=262_144) == 128_000  # 32 per list
    assert ivf.sample_size(10_000_000, 40_000, cap=262_144) == 262_144
    assert ivf.sample_size(500, 40, cap=262_144) == 500


def test_probe_lists_are_best_first_own_list_first_ties_to_the_smaller_list():
    centroids = np.array([[1, 0], [0, 1], [1, 0], [-1, 0]], dtype=np.float32)
    users = np.array([[1, 0], [0, 1], [0.6, 0.8], [0, 0]], dtype=np.float32)
    got = ivf.probe_lists(users, centroids, 2)
    assert got.tolist() == [[0, 2], [1, 0], [1, 0], [0, 1]]
    assert ivf.probe_lists(users, centroids, 9).shape == (4, 4)  # at most every list
    # Rows in pieces (PROBE_FLOATS) give the same answer as one product.
    many = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    assert np.array_equal(ivf.probe_lists(many, centroids, 3), ivf.best_columns(many @ centroids.T, 3))


def test_best_columns_ties_at_the_cut_off_go_to_the_smaller_column():
    scores = np.array([[0.5, 0.9, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    assert ivf.best_columns(scores, 2).tolist() == [[1, 0], [3, 2]]


def test_fit_centroids_finds_planted_clusters_and_is_seeded():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 8))
    x = centres[rng.integers(0, 5, 500)] + 0.05 * rng.normal(size=(500, 8))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    first, again = ivf.fit_centroids(x, 10, seed=3), ivf.fit_centroids(x, 10, seed=3)
    assert np.array_equal(first, again) and first.shape == (10, 8)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)  # spherical
    unit_centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    # Every planted centre has a fitted centroid within a small angle, and no list mixes clusters.
    assert (unit_centres @ first.T).max(axis=1).min() > 0.99
    own = ivf.probe_lists(x, first, 1)[:, 0]
    planted = (x @ unit_centres.T).argmax(axis=1)
    assert all(len(set(planted[own == lst])) == 1 for lst in np.unique(own))
    assert np.array_equal(ivf.fit_centroids(x[:3], 5), x[:3])  # fewer users than lists: the users


def test_fit_centroids_without_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(EnvironmentProblem, match=r"neighbors.method ivf: faiss is not installed"):
        ivf.fit_centroids(np.eye(4, dtype=np.float32), 2)


def test_order_centroids_numbers_neighbouring_lists_consecutively():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    # 8 tight groups of 8 centroids, shuffled: after ordering, groups come in long runs of ids
    # (a shuffled order has about 56 changes of group; k-means may merge two groups: a few more runs).
    groups = rng.normal(size=(8, 16))
    c = np.repeat(groups, 8, axis=0) + 0.01 * rng.normal(size=(64, 16))
    c = (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)[rng.permutation(64)]
    ordered = ivf.order_centroids(c, seed=1)
    assert sorted(map(tuple, ordered)) == sorted(map(tuple, c))  # a renumbering, nothing else
    group_of = (ordered @ (groups / np.linalg.norm(groups, axis=1, keepdims=True)).T).argmax(axis=1)
    assert (np.diff(group_of) != 0).sum() <= 16
    assert (np.diff((c @ groups.T).argmax(axis=1)) != 0).sum() > 40  # the input was shuffled
