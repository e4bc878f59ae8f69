"""Candidate retrieval (``score.retrieval: ann``) against the exact scan, on synthetic item vectors.

    python benchmarks/retrieval.py --items 200000 [--nprobe 16 32 64 128 256] [--hnsw]

Items: 64-d vectors from 200 topics (a topic centre plus noise), longer for popular items (Zipf
popularity), with the exposure adjustment's bias column (``-0.3 ln(1 + popularity)``) folded in as
``score`` serves it; users: the mean of 5 random items plus noise. One thread throughout.

Prints ms per user of the exact path (``chunked_topk`` over every item, what ``score`` does up to
200,000 items) and of the ann path (``CandidateIndex.search`` for ``--candidates`` items, then
``candidate_topk``) with IVF (``nlist = 4 sqrt(N)``, the automatic choice) at each ``nprobe``, and
the served list's recall@10: the share of the exact top-10 that the ann list holds. ``--hnsw`` adds
faiss HNSW (M 32, efSearch = candidates, the least it can be) for comparison. Synthetic geometry:
the figures are indicative of the index, not of a trained model's vectors.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from longtail.ranking.retrieval import CandidateIndex, build_index
from longtail.ranking.topk import candidate_topk, chunked_topk


def synthetic(n_items: int, n_users: int, dim: int = 64, topics: int = 200, seed: int = 0):
    """``(items [N, dim], bias [N], users [U, dim])`` float32; row 0 is padding."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, dim))
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    rng.shuffle(popularity)
    items = centres[rng.integers(0, topics, n_items)] + 0.8 * rng.normal(size=(n_items, dim))
    items *= (0.6 + 0.4 * np.log1p(popularity * 10 * n_items) / np.log1p(10 * n_items))[:, None]
    items[0] = 0.0
    bias = -0.3 * np.log1p(popularity * 1000)
    users = items[rng.integers(1, n_items, (n_users, 5))].mean(axis=1) + 0.3 * rng.normal(size=(n_users, dim))
    return items.astype(np.float32), bias.astype(np.float32), users.astype(np.float32)


def timed(run, users: int):
    """``(result, ms per user)`` of one call."""
    started = time.perf_counter()
    out = run()
    return out, (time.perf_counter() - started) * 1e3 / users


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--hnsw", action="store_true")
    args = parser.parse_args()
    import faiss

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    items, bias, users = synthetic(args.items, args.users)
    # As score serves an exposure adjustment: items [v, b], users [u, 1], one dot product.
    served = torch.from_numpy(np.concatenate([items, bias[:, None]], axis=1))
    queries = torch.from_numpy(np.concatenate([users, np.ones((len(users), 1), np.float32)], axis=1))
    (_, want), exact_ms = timed(lambda: chunked_topk(queries, served, args.k), len(users))
    want = want.numpy()
    print(f"{args.items:,} items, {args.users} users, top-{args.k} of {args.candidates} candidates, one thread")
    print(f"exact (chunked_topk over every item): {exact_ms:.3f} ms/user")
    started = time.perf_counter()
    index = build_index(items, bias=bias)  # the automatic choice: IVF with 4 sqrt(N) lists (flat when small)
    print(f"{index.kind}, {index.nlist} lists: built in {time.perf_counter() - started:.1f} s")
    for nprobe in args.nprobe:
        probed = dataclasses.replace(index, nprobe=min(nprobe, max(index.nlist, 1)), _index=None)
        got, ms = timed(lambda: _ann(probed, users, queries, served, args.candidates, args.k), len(users))
        print(f"  nprobe {nprobe}: recall@{args.k} {recall(got, want):.4f}, {ms:.3f} ms/user, "
              f"{exact_ms / ms:.1f}x exact")
    if args.hnsw:
        _hnsw(faiss, served.numpy(), queries.numpy(), want, args.candidates, args.k)


def _ann(index: CandidateIndex, users, queries, served, c: int, k: int) -> np.ndarray:
    """The served top-``k`` via the index: candidates, then their exact scores."""
    found = torch.from_numpy(index.search(users, c))
    return candidate_topk(queries, served, found, k)[1].numpy()


def _hnsw(faiss, served: np.ndarray, queries: np.ndarray, want: np.ndarray, c: int, k: int) -> None:
    index = faiss.IndexHNSWFlat(served.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    started = time.perf_counter()
    index.add(np.ascontiguousarray(served[1:]))
    print(f"HNSW M 32: built in {time.perf_counter() - started:.1f} s")
    index.hnsw.efSearch = c
    (_, found), ms = timed(lambda: index.search(queries, c), len(queries))
    found = torch.from_numpy(np.where(found >= 0, found + 1, 0))
    got = candidate_topk(torch.from_numpy(queries), torch.from_numpy(served), found, k)[1].numpy()
    print(f"  efSearch {c}: recall@{k} {recall(got, want):.4f}, {ms:.3f} ms/user")


if __name__ == "__main__":
    main()
