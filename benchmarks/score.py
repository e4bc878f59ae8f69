"""Benchmark of the scoring path of ``longtail score`` (in-process, CPU).

Prints users/second and the ratio of the matrix-product FLOP rate achieved *inside the
scoring path* (chunked matrix product + masking of seen items + exact top-K merge, i.e.
:func:`longtail.topk.chunked_topk` as the score job runs it) to the rate of a plain
``torch.mm`` of the same shapes, measured in the same process, interleaved, same threads.
Target: ratio >= 0.3 on CPU. With ``--model`` it also times the whole per-user path with an
(untrained) model of that architecture at the same sizes: user encoder + scoring.

    python benchmarks/score.py                      # Beauty sizes: 22,363 users x 12,101 items
    python benchmarks/score.py --model llmesr_sasrec --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from longtail.models.histories import pad_histories
from longtail.ranking.topk import chunked_topk


def _histories(rng: np.random.Generator, users: int, items: int, mean_len: float, max_len: int) -> list[np.ndarray]:
    lengths = np.clip(rng.geometric(1.0 / mean_len, size=users) + 4, 5, max_len)
    return [rng.integers(1, items + 1, size=n) for n in lengths]


def _time_path(user_vecs, item_vecs, seen_batches, k, user_batch, item_chunk, excluded) -> float:
    start = time.perf_counter()
    for b, seen in enumerate(seen_batches):
        chunked_topk(user_vecs[b * user_batch : (b + 1) * user_batch], item_vecs, k, seen=seen,
                     excluded=excluded, item_chunk=item_chunk)
    return time.perf_counter() - start


def _time_mm(user_vecs, item_vecs, n_batches, user_batch, item_chunk) -> float:
    # The same products the path computes, nothing else (transposed views, as the path uses).
    start = time.perf_counter()
    for b in range(n_batches):
        u = user_vecs[b * user_batch : (b + 1) * user_batch]
        for c in range(0, item_vecs.shape[0], item_chunk):
            torch.mm(u, item_vecs[c : c + item_chunk].T)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=22363)
    p.add_argument("--items", type=int, default=12101)
    p.add_argument("--dim", type=int, default=128, help="user/item vector size (LLM-ESR: 2 x hidden 64)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--user-batch", type=int, default=1024)
    p.add_argument("--item-chunk", type=int, default=8192)
    p.add_argument("--mean-history", type=float, default=9.0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model", default=None, help="also time the user encoder of this architecture, e.g. llmesr_sasrec")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    user_vecs = torch.randn(args.users, args.dim)
    item_vecs = torch.randn(args.items + 1, args.dim)
    histories = _histories(rng, args.users, args.items, args.mean_history, 200)
    seen_batches = [pad_histories(histories[s : s + args.user_batch]) for s in range(0, args.users, args.user_batch)]
    excluded = torch.zeros(0, dtype=torch.long)
    flops = 2.0 * args.users * (args.items + 1) * args.dim

    # Warm-up, then interleaved repeats so both see the same machine load.
    _time_path(user_vecs[: args.user_batch], item_vecs, seen_batches[:1], args.k, args.user_batch, args.item_chunk, excluded)
    _time_mm(user_vecs, item_vecs, 1, args.user_batch, args.item_chunk)
    ratios, path_times, mm_times = [], [], []
    for _ in range(args.repeats):
        t_mm = _time_mm(user_vecs, item_vecs, len(seen_batches), args.user_batch, args.item_chunk)
        t_path = _time_path(user_vecs, item_vecs, seen_batches, args.k, args.user_batch, args.item_chunk, excluded)
        mm_times.append(t_mm)
        path_times.append(t_path)
        ratios.append(t_mm / t_path)
    t_mm, t_path = statistics.median(mm_times), statistics.median(path_times)
    print(f"scoring path: {args.users} users x {args.items} items x {args.dim} dims, top-{args.k}, "
          f"user batch {args.user_batch}, item chunk {args.item_chunk}, {torch.get_num_threads()} thread(s)")
    print(f"  plain torch.mm, same shapes:       {flops / t_mm / 1e9:8.1f} GFLOP/s ({t_mm:.3f} s)")
    print(f"  scoring path (mm + mask + top-K):  {flops / t_path / 1e9:8.1f} GFLOP/s ({t_path:.3f} s)")
    print(f"  FLOP-rate ratio path / torch.mm:   {statistics.median(ratios):8.2f}  "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f} over {args.repeats}; target >= 0.3)")
    print(f"  users/second (scoring only):       {args.users / t_path:8.0f}")

    if args.model:
        _model_path(args, histories, item_vecs_shape=(args.items + 1, args.dim), t_path=t_path)


def _model_path(args, histories, item_vecs_shape, t_path: float) -> None:
    """Whole per-user path: the model's user encoder, then the same scoring."""
    from longtail.inference import TrainedModel
    from longtail.models import TextTables, build_model, needs_text

    hidden = args.dim // 2 if needs_text(args.model) else args.dim
    hp = {"hidden": hidden, "layers": 2, "heads": 1, "dropout": 0.5, "max_len": 200, "alpha": 0.1,
          "cross_attention": True, "bert_mask_prob": 0.6}
    text = None
    if needs_text(args.model):
        rng = np.random.default_rng(1)
        llm = rng.normal(size=(args.items + 1, 384)).astype(np.float32)
        pca = rng.normal(size=(args.items + 1, hidden)).astype(np.float32)
        llm[0] = pca[0] = 0
        text = TextTables.from_arrays(llm, pca)
    module = build_model(args.model, args.items, hp, text).eval()
    trained = TrainedModel(name=args.model, version="bench", path="", module=module,
                           item_ids=[""] + [str(i) for i in range(1, args.items + 1)], max_len=200)
    with torch.inference_mode():
        items = trained.item_vectors().float()
        start = time.perf_counter()
        t_users = 0.0
        for s in range(0, args.users, args.user_batch):
            seen = pad_histories(histories[s : s + args.user_batch])
            t0 = time.perf_counter()
            users = trained.user_vectors(seen)
            t_users += time.perf_counter() - t0
            chunked_topk(users, items, args.k, seen=seen, item_chunk=args.item_chunk)
        total = time.perf_counter() - start
    print(f"with the {args.model} user encoder (untrained, D={items.shape[1]}):")
    print(f"  users/second end to end in-process: {args.users / total:8.0f} "
          f"(encoder {t_users:.2f} s = {t_users / total:.0%} of {total:.2f} s)")


if __name__ == "__main__":
    main()
