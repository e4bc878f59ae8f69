"""What a user, a training step and a validation cost as the catalogue grows (issue 24).

    python benchmarks/catalogue_costs.py --items 1000000 [--users 1024] [--dim 64] [--steps 10]

One torch thread, synthetic vectors, tables and batches (no Spark, no data on disk); each figure
before and now in the same run:

- the **full-protocol validation pass** (what each rank of a training run does every epoch for its share
  of ``train.validation_users``): ``--users`` user vectors against ``--items`` item vectors of ``--dim``
  dimensions, ten seen items masked per user, the 0-based rank of each target. ``before``: torch counts
  the scores above and tied with the target, and the top-10 is merged at every chunk of 8,192 items,
  1,024 users at a time; ``now``: :class:`ValidationSet`'s pass (numpy counts, no top-10 merge,
  ``VALIDATION_USER_CHUNK`` x ``VALIDATION_ITEM_CHUNK`` blocks). Both must give the same ranks;
  nanoseconds per user-item pair.
- the **training step** of the default ``sasrec`` (``TrainConfig()``: its loss, negatives, batch size)
  at ``--small-items`` and ``--items`` items, on batches of ``--length`` items (Beauty's mean history
  is about 9) and negatives drawn by a popularity with Beauty's long tail (about 2,800 distinct of
  12,101 per batch), with the norm clip the loop applies. ``before``: every item row built per step and
  foreach Adam; ``dense``: the rows the batch touches (``gather_touched_rows``) and fused Adam over
  every row; ``now``: what ``train.item_updates: auto`` runs at that size on a CPU (``dense`` below
  ``SPARSE_ITEMS_FROM`` items, from there the item table's gradient sparse and its Adam row-wise,
  :mod:`longtail.models.optim`).
- **user vectors** of the default ``llmesr_sasrec`` (random text tables of 384 dimensions) for
  ``--users`` histories of ``--length`` items through :func:`encode_histories` (what ``score``,
  ``evaluate`` and validation run): ``before`` builds every item row of both views per chunk of 512
  users, ``now`` the rows of the chunk's items. Milliseconds per user.

``--more-items N ...`` times the ``now`` step at those sizes too (``now_step_ms_at_items``, beside its two
figures at ``--small-items`` and ``--items``). Then, at ``--at-users`` users and ``--at-items`` items: the training step along the line through its
two measured catalogue sizes (what grows with the items is a pass over the item table per step: its
gradient buffer, Adam, the norm clip), an epoch's core-hours (every user once), validation's (of
``train.validation_users`` users) and its share of the epoch, and the user vectors of a nightly
``score`` (the ``before`` figure scaled by the items: it builds every row). The last line printed is
one JSON object.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch
from longtail.core.config import TrainConfig
from longtail.models import TextTables, build_model
from longtail.models.histories import encode_histories
from longtail.models.optim import ItemRowsAdam, clip_grad_norm, sparse_item_updates
from longtail.ranking import topk
from longtail.stages.train.data import NegativeSampler
from longtail.stages.train.validation import (
    VALIDATION_ITEM_CHUNK,
    VALIDATION_USER_CHUNK,
)


def _before(users, items, targets, seen, k=10, user_chunk=1024, item_chunk=8192) -> np.ndarray:
    """The pass as it was before: torch's boolean sums and a top-``k`` merge per chunk."""
    out = []
    for s in range(0, users.shape[0], user_chunk):
        u, t = users[s : s + user_chunk], targets[s : s + user_chunk]
        target_scores = (u * items[t]).sum(dim=1)
        greater = torch.zeros(u.shape[0], dtype=torch.float64)
        equal = torch.zeros(u.shape[0], dtype=torch.float64)
        best_scores = torch.full((u.shape[0], k), topk.NEG_INF)
        best_items = torch.zeros((u.shape[0], k), dtype=torch.long)
        seen_at = topk._seen_coordinates(seen[s : s + user_chunk])
        t_np = t.numpy()
        for start in range(0, items.shape[0], item_chunk):
            scores = u @ items[start : start + item_chunk].T
            topk._mask_chunk(scores, start, seen_at, None)
            width = scores.shape[1]
            inside = np.nonzero((t_np >= start) & (t_np < start + width))[0]
            scores.numpy().reshape(-1)[inside * width + (t_np[inside] - start)] = topk.NEG_INF
            greater += (scores > target_scores[:, None]).sum(dim=1).to(torch.float64)
            equal += (scores == target_scores[:, None]).sum(dim=1).to(torch.float64)
            best_scores, best_items = topk._merge_top(best_scores, best_items, scores, start, k)
        out.append((greater + equal / 2.0).numpy())
    return np.concatenate(out)


def _now(users, items, targets, seen) -> np.ndarray:
    """The pass as :class:`ValidationSet` runs it now."""
    out = []
    for s in range(0, users.shape[0], VALIDATION_USER_CHUNK):
        e = s + VALIDATION_USER_CHUNK
        ranks, _ = topk.full_ranks(users[s:e], items, targets[s:e], seen=seen[s:e], k=10,
                                   item_chunk=VALIDATION_ITEM_CHUNK, with_top=False)
        out.append(ranks.numpy())
    return np.concatenate(out)


def _timed(fn, *args) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def validation_pass(items: int, users: int, dim: int, seed: int) -> dict:
    """ns per user-item pair of the validation pass, before and now, on the same vectors."""
    g = torch.Generator().manual_seed(seed)
    item_vectors = torch.randn(items + 1, dim, generator=g)
    user_vectors = torch.randn(users, dim, generator=g)
    targets = torch.randint(1, items + 1, (users,), generator=g)
    seen = torch.randint(1, items + 1, (users, 10), generator=g)
    before_s, before = _timed(_before, user_vectors, item_vectors, targets, seen)
    now_s, now = _timed(_now, user_vectors, item_vectors, targets, seen)
    pairs = float(users) * (items + 1)
    return {"before_ns_per_pair": before_s / pairs * 1e9, "ns_per_pair": now_s / pairs * 1e9,
            "speedup": before_s / now_s, "same_ranks": bool(np.array_equal(before, now))}


def beauty_like_popularity(items: int, rng: np.random.Generator) -> np.ndarray:
    """Training counts per item idx with a long tail like Beauty's: 4,096 popularity draws hit about
    2,800 distinct items of 12,101 (Beauty: 2,943). (Before 2026-12-07 this script drew zipf(1.5)
    counts: about 5 distinct negatives per batch, which left most of the loss out of its steps.)"""
    return np.floor((rng.pareto(1.5, items + 1) + 1) * 4)


def training_step(items: int, length: int, steps: int, seed: int, fused: bool = True, touched: bool = True,
                  sparse: bool = False) -> dict:
    """ms per training sequence of the default ``sasrec`` at ``items`` items, and Adam's share;
    ``sparse``: the item table updated row-wise (:class:`~longtail.models.optim.ItemRowsAdam`)."""
    cfg = TrainConfig()
    hp = dataclasses.asdict(cfg)
    torch.manual_seed(seed)
    model = build_model("sasrec", items, hp, None)
    model.gather_touched_rows = touched
    optimizer = ItemRowsAdam(model.parameters(), model.sparse_item_tables() if sparse else [], lr=cfg.lr, fused=fused)
    rng = np.random.default_rng(seed)
    sampler = NegativeSampler(items, cfg.negatives, cfg.negative_sampling, beauty_like_popularity(items, rng),
                              logq=True)

    def step() -> float:
        seqs = rng.integers(1, items + 1, size=(cfg.batch_size, length + 1))
        batch = {"seqs": torch.from_numpy(seqs[:, :-1]), "pos": torch.from_numpy(seqs[:, 1:]),
                 "negatives": torch.from_numpy(sampler.draw(rng)), "logq": torch.from_numpy(sampler.logq)}
        optimizer.zero_grad(set_to_none=True)
        model(batch).backward()
        clip_grad_norm(model.parameters(), cfg.grad_clip)
        started = time.perf_counter()
        optimizer.step()
        return time.perf_counter() - started

    step()  # first step: Adam allocates its state
    started = time.perf_counter()
    adam = sum(step() for _ in range(steps))
    total = time.perf_counter() - started
    return {"train_ms_per_sequence": total / steps / cfg.batch_size * 1e3,
            "adam_ms_per_step": adam / steps * 1e3, "step_ms": total / steps * 1e3,
            "batch_size": cfg.batch_size, "negatives": cfg.negatives}


def random_text_tables(items: int, hidden: int, rng: np.random.Generator) -> TextTables:
    """Random 384-dimensional LLM item embeddings and a random ``hidden``-wide projection of them standing
    for the PCA map (what an ``llmesr_`` model is built from; also used by ``train_step.py``)."""
    llm = rng.standard_normal((items + 1, 384), dtype=np.float32)
    components = rng.standard_normal((hidden, 384), dtype=np.float32) / 20
    return TextTables.from_arrays(llm, llm @ components.T, np.zeros(384, np.float32), components)


def user_vectors(items: int, users: int, length: int, seed: int) -> dict:
    """ms per user of ``llmesr_sasrec``'s user vectors at ``items`` items, every row against the touched ones."""
    cfg = TrainConfig()
    rng = np.random.default_rng(seed)
    text = random_text_tables(items, cfg.hidden, rng)
    torch.manual_seed(seed)
    model = build_model("llmesr_sasrec", items, dataclasses.asdict(cfg), text)
    values = rng.integers(1, items + 1, size=users * length)
    offsets = np.arange(0, users * length + 1, length)
    out = {}
    for label, touched in (("before", False), ("now", True)):
        model.gather_touched_rows = touched
        seconds, vectors = _timed(encode_histories, model, values, offsets, np.arange(users), cfg.max_len)
        out[label] = (seconds / users * 1e3, vectors)
    same = bool(torch.allclose(out["before"][1], out["now"][1], atol=1e-5))
    return {"user_ms_before": out["before"][0], "user_ms_now": out["now"][0], "same_user_vectors": same}


def _step_at_scale(small: dict, large: dict, small_items: int, items: int, at_items: float) -> float:
    """ms per step at ``at_items``: a line through the two measured catalogue sizes (what grows with
    the items is a pass over the item table per step: its gradient buffer, Adam, the norm clip)."""
    slope = (large["step_ms"] - small["step_ms"]) / (items - small_items)
    return large["step_ms"] + max(slope, 0.0) * (at_items - items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--small-items", type=int, default=12_101, help="the second catalogue size (Beauty's)")
    parser.add_argument("--users", type=int, default=1024, help="validation users ranked")
    parser.add_argument("--dim", type=int, default=64, help="item vector width (the dual view scores 2 x hidden)")
    parser.add_argument("--length", type=int, default=9, help="items per training sequence")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--more-items", type=int, nargs="*", default=[],
                        help="catalogue sizes at which to time the 'now' step again (does it still grow?)")
    parser.add_argument("--at-users", type=float, default=1e8)
    parser.add_argument("--at-items", type=float, default=1e7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"items": args.items, "users": args.users, "dim": args.dim}
    result.update(validation_pass(args.items, args.users, args.dim, args.seed))
    validated = TrainConfig().validation_users
    result.update({"at_users": args.at_users, "at_items": args.at_items, "validation_users": validated})
    for label, fused, touched, sparse in (("before", False, False, False), ("dense", True, True, False),
                                          ("now", True, True, None)):
        def auto(n: int, sparse: bool | None = sparse) -> bool:  # None: what train.item_updates: auto runs
            return sparse_item_updates("auto", n, "cpu", False) if sparse is None else sparse

        small = training_step(args.small_items, args.length, args.steps, args.seed, fused, touched, auto(args.small_items))
        large = training_step(args.items, args.length, args.steps, args.seed, fused, touched, auto(args.items))
        step_ms = _step_at_scale(small, large, args.small_items, args.items, args.at_items)
        epoch_core_s = args.at_users / large["batch_size"] * step_ms / 1e3
        ns = result["before_ns_per_pair" if label == "before" else "ns_per_pair"]
        validation_core_s = validated * args.at_items * ns / 1e9
        result[label] = {
            "step_ms_small": small["step_ms"], "step_ms": large["step_ms"], "adam_ms_per_step": large["adam_ms_per_step"],
            "train_ms_per_sequence": large["train_ms_per_sequence"], "step_ms_at_scale": step_ms,
            "epoch_core_h_at_scale": epoch_core_s / 3600, "validation_core_h_at_scale": validation_core_s / 3600,
            "validation_share_of_epoch": validation_core_s / (epoch_core_s + validation_core_s),
            "item_updates": "sparse" if auto(args.items) else "dense",
        }
    # Row-wise updates leave a step whose item-dependent part is the loss over its distinct rows (at
    # most the batch's items and negatives): timed at more sizes, the line may be flat.
    # The two sizes the loop timed are not timed again.
    result["now_step_ms_at_items"] = {
        args.small_items: result["now"]["step_ms_small"], args.items: result["now"]["step_ms"],
        **{n: training_step(n, args.length, args.steps, args.seed, True, True,
                            sparse_item_updates("auto", n, "cpu", False))["step_ms"] for n in args.more_items},
    } if args.more_items else {}
    result["step_speedup"] = result["before"]["step_ms"] / result["now"]["step_ms"]
    result["sparse_step_speedup"] = result["dense"]["step_ms"] / result["now"]["step_ms"]
    result.update(user_vectors(args.items, args.users, args.length, args.seed))
    result["user_core_h_at_scale_before"] = result["user_ms_before"] * args.at_items / args.items * args.at_users / 3.6e6
    result["user_core_h_at_scale_now"] = result["user_ms_now"] * args.at_users / 3.6e6
    for key, value in result.items():
        print(f"{key}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
