"""What a training step of the default ``llmesr_sasrec`` costs on a CPU, before and now in one run.

    python benchmarks/train_step.py [--items 12101] [--steps 175] [--hidden 128] [--seed 0]

One torch thread, random text tables (384 dimensions), batches of ``train.batch_size`` rows whose
history lengths follow a long tail like Beauty's (mean about 7, 0.6% longer than 50, up to
``max_len``), length-bucketed as the training loop orders them (``bucketed_order``), popularity-drawn
negatives (about 2,800 distinct of 12,101 per batch, as on Beauty) with logQ: the default configuration (``TrainConfig()``). A step is the loop's: forward,
backward, the norm clip, fused Adam. Milliseconds per step for:

- ``now``: the code as it is;
- ``before``: the three CPU costs removed on 2026-12-06 put back: dropout masks from torch's
  ``bernoulli_`` (``F.dropout``, and ``scaled_dot_product_attention``'s own dropout), one encoder pass
  per batch padded to its longest row (no :func:`~longtail.models.layers.length_groups` above
  ``SHORT_HISTORY``), and the sampled softmax's per-column terms and accidental-hit mask as passes
  over the ``[positions, negatives]`` logits;
- each of the three put back alone (``without_fast_dropout``, ``without_length_groups``,
  ``without_folded_loss``), so the gain of each shows;
- ``bfloat16``: the code as it is with ``train.precision: bfloat16`` (the step under torch autocast).

Every variant trains the same model from the same weights on the same batches (the dropout masks
differ in their random numbers only). The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from catalogue_costs import beauty_like_popularity, random_text_tables
from longtail.core.config import TrainConfig
from longtail.models import build_model, layers
from longtail.stages.train.data import NegativeSampler, bucketed_order


def beauty_like_lengths(users: int, max_len: int, rng: np.random.Generator) -> np.ndarray:
    """History lengths with Beauty's long tail: 3 + a Pareto draw, capped at ``max_len``."""
    return np.minimum(3 + np.floor(rng.pareto(2.0, users) * 4.0).astype(int), max_len)


def _sampled_softmax_before(h, items, targets, negatives, logq=None, bias=None):
    """The loss as it was: each term and the mask a pass over the ``[N, M]`` logits."""
    negatives, counts = torch.unique(negatives, return_counts=True)
    pos = (h * items[targets]).sum(-1)
    neg = h @ items[negatives].T + torch.log(counts.to(h.dtype))[None, :]
    if logq is not None:
        pos = pos - logq[targets]
        neg = neg - logq[negatives][None, :]
    neg = neg.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    return F.cross_entropy(torch.cat([pos[:, None], neg], dim=1), torch.zeros_like(targets))


def _sdpa_with_dropout(q, k, v, allowed, p):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)


@contextlib.contextmanager
def reverted(*names: str):
    """The named costs put back for the duration (module attributes of ``longtail.models.layers``)."""
    saved = {n: getattr(layers, n) for n in ("dropout", "_attention_with_dropout", "SHORT_HISTORY", "sampled_softmax")}
    try:
        if "fast_dropout" in names:
            layers.dropout = lambda x, p, training: F.dropout(x, p, training)
            layers._attention_with_dropout = _sdpa_with_dropout
        if "length_groups" in names:
            layers.SHORT_HISTORY = 1 << 30
        if "folded_loss" in names:
            layers.sampled_softmax = _sampled_softmax_before
        yield
    finally:
        for n, value in saved.items():
            setattr(layers, n, value)


def _model(items: int, hidden: int, seed: int):
    cfg = dataclasses.replace(TrainConfig(), hidden=hidden)
    text = random_text_tables(items, hidden, np.random.default_rng(seed))
    torch.manual_seed(seed)
    return cfg, build_model("llmesr_sasrec", items, dataclasses.asdict(cfg), text)


def _batches(cfg: TrainConfig, items: int, steps: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    users = cfg.batch_size * steps
    lengths = beauty_like_lengths(users, cfg.max_len, rng)
    order = bucketed_order(rng.permutation(users), lengths, cfg.batch_size, cfg.length_buckets, rng)
    sampler = NegativeSampler(items, cfg.negatives, cfg.negative_sampling, beauty_like_popularity(items, rng),
                              logq=True)
    out = []
    for s in range(steps):
        rows = lengths[order[s * cfg.batch_size : (s + 1) * cfg.batch_size]]
        width = int(rows.max()) + 1
        seqs = np.zeros((len(rows), width), dtype=np.int64)
        for r, n in enumerate(rows):
            seqs[r, width - n - 1 :] = rng.integers(1, items + 1, n + 1)
        inputs = seqs[:, :-1]
        out.append({"seqs": torch.from_numpy(inputs), "pos": torch.from_numpy(seqs[:, 1:] * (inputs != 0)),
                    "negatives": torch.from_numpy(sampler.draw(rng)), "logq": torch.from_numpy(sampler.logq)})
    return out


def step_ms(items: int, hidden: int, steps: int, seed: int, revert: tuple[str, ...] = (),
            precision: str = "float32") -> float:
    """ms per training step of ``llmesr_sasrec`` (defaults) with the named costs put back."""
    cfg, model = _model(items, hidden, seed)
    model.loss_group_rows = cfg.batch_size  # the loop's setting with length bucketing on
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, fused=True)
    batches = _batches(cfg, items, steps + 1, seed)
    with reverted(*revert):
        def step(batch: dict) -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                loss = model(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()

        step(batches[0])  # Adam allocates its state
        started = time.perf_counter()
        for batch in batches[1:]:
            step(batch)
    return (time.perf_counter() - started) / steps * 1e3


VARIANTS = {
    "now": (),
    "before": ("fast_dropout", "length_groups", "folded_loss"),
    "without_fast_dropout": ("fast_dropout",),
    "without_length_groups": ("length_groups",),
    "without_folded_loss": ("folded_loss",),
    "bfloat16": (),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=12_101, help="catalogue size (Beauty's)")
    parser.add_argument("--hidden", type=int, default=TrainConfig().hidden, help="train.hidden (default: the default)")
    parser.add_argument("--steps", type=int, default=175, help="steps timed per variant (175: a Beauty epoch)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lengths = beauty_like_lengths(100_000, TrainConfig().max_len, np.random.default_rng(args.seed))
    print(f"history lengths: mean {lengths.mean():.1f}, longer than 50: {np.mean(lengths > 50):.2%}, "
          f"max {lengths.max()}")
    result = {"items": args.items, "hidden": args.hidden, "steps": args.steps}
    for name, revert in VARIANTS.items():
        precision = "bfloat16" if name == "bfloat16" else "float32"
        result[f"{name}_ms_per_step"] = step_ms(args.items, args.hidden, args.steps, args.seed, revert, precision)
        print(f"{name:>22}: {result[f'{name}_ms_per_step']:8.1f} ms per step")
    now = result["now_ms_per_step"]
    result["speedup"] = result["before_ms_per_step"] / now
    for name in VARIANTS:
        if name.startswith("without_") or name == "bfloat16":
            result[f"{name}_ratio"] = result[f"{name}_ms_per_step"] / now
    print(f"before / now: {result['speedup']:.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
