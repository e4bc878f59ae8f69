"""benchmarks/retrieval.py: the synthetic catalogue, the recall it prints, and its ann path on an exact index."""
from __future__ import annotations


import numpy as np
import pytest
from bench_scripts import load_script
import torch

pytest.importorskip("faiss")


bench = load_script("retrieval")


def test_synthetic_catalogue_has_padding_row_and_a_bias_per_item():
    items, bias, users = bench.synthetic(300, 7, dim=8, topics=5)
    assert items.shape == (300, 8) and bias.shape == (300,) and users.shape == (7, 8)
    assert not items[0].any() and (bias <= 0).all() and items.dtype == np.float32


def test_recall_is_the_share_of_the_exact_list_held():
    assert bench.recall(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 2, 9], [7, 8, 9]])) == pytest.approx(1 / 3)


def test_ann_path_with_a_flat_index_serves_the_exact_lists():
    from longtail.ranking.retrieval import build_index
    from longtail.ranking.topk import chunked_topk

    items, bias, users = bench.synthetic(300, 7, dim=8, topics=5)
    served = torch.from_numpy(np.concatenate([items, bias[:, None]], axis=1))
    queries = torch.from_numpy(np.concatenate([users, np.ones((7, 1), np.float32)], axis=1))
    index = build_index(items, bias=bias)
    assert index.kind == "flat"
    got = bench._ann(index, users, queries, served, 20, 5)
    np.testing.assert_array_equal(got, chunked_topk(queries, served, 5)[1].numpy())
