"""What a user vector costs now and with each of its two savings put back, on real histories: the
cost behind validation, ``evaluate`` and ``score``.

    python benchmarks/user_vectors.py --interactions ../shared/data/amazon_beauty_2014/interactions.csv.gz \\
        [--models llmesr_sasrec sasrec] [--repeats 3] [--batch-users 1024] [--set train.hidden=64]

The two savings: the last block run for the scored position alone (``last_position_only``), and
passes of one length class (``histories.ENCODE_SHORT``: histories up to 8 in one pass, longer ones
padded to at most twice a pass's shortest row, where 512-row length-sorted chunks were padded to
each chunk's longest). Variants: ``now``; ``before`` (both put back; the faster row gathers of the
same release stay, so it slightly understates the gain over the release before);
``without_last_only`` and ``without_length_classes`` (each put back alone).

Each user's history without its last two items (the validation input of the leave-one-out split),
the default ``train`` config (with ``--set``) (random weights: the cost does not depend on them; random 384-dimensional
text tables for ``llmesr_*``), one torch thread, :func:`encode_histories` as validation calls it (all
users at once, sorted by length inside), or with ``--batch-users N`` in shuffled batches of N users
(a ``score`` task with few users: one batch spans every length); the variants alternate
``--repeats`` times and the fastest of each counts. All must give the same vectors (to float
rounding). The last line printed is one JSON object: per model ``<variant>_s``, ``speedup``
(before / now), ``without_<saving>_ratio`` (that variant / now), ``max_abs_diff``, and ``users``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import gzip
import json
import time
from collections import defaultdict

import numpy as np
import torch
from catalogue_costs import random_text_tables
from longtail.core.config import load_config
from longtail.models import build_model, histories, needs_text
from longtail.models.histories import encode_histories


def read_histories(path: str) -> tuple[np.ndarray, np.ndarray, int]:
    """``(values, offsets, items)``: each user's items by time (CSV ``user_id,item_id,timestamp``), the
    last two left out."""
    by_user: dict[str, list] = defaultdict(list)
    idx: dict[str, int] = {}
    with gzip.open(path, "rt") if path.endswith(".gz") else open(path) as f:
        for row in csv.DictReader(f):
            by_user[row["user_id"]].append((int(row["timestamp"]), idx.setdefault(row["item_id"], len(idx) + 1)))
    histories = [[i for _, i in sorted(v)][:-2] for v in by_user.values()]
    histories = [h for h in histories if h]
    lengths = np.array([len(h) for h in histories])
    return np.concatenate(histories).astype(np.int64), np.concatenate([[0], np.cumsum(lengths)]), len(idx)


#: Variant -> (last_position_only, ENCODE_SHORT): each saving on or put back.
VARIANTS = {
    "now": (True, histories.ENCODE_SHORT),
    "before": (False, 1 << 30),
    "without_last_only": (False, histories.ENCODE_SHORT),
    "without_length_classes": (True, 1 << 30),
}


def encode(model, values, offsets, max_len: int, batch_users: int) -> torch.Tensor:
    """Every user's vector: one :func:`encode_histories` call, or one per shuffled batch."""
    rows = np.arange(len(offsets) - 1)
    if not batch_users:
        return encode_histories(model, values, offsets, rows, max_len)
    order = np.random.default_rng(0).permutation(rows)
    parts = [order[start : start + batch_users] for start in range(0, len(order), batch_users)]
    vectors = [encode_histories(model, values, offsets, part, max_len) for part in parts]
    out = torch.zeros((len(rows), vectors[0].shape[1]))
    for part, vec in zip(parts, vectors):
        out[torch.from_numpy(part)] = vec
    return out


def measure(name: str, hp: dict, values, offsets, items: int, repeats: int, batch_users: int) -> dict:
    torch.manual_seed(0)
    text = random_text_tables(items, hp["hidden"], np.random.default_rng(0)) if needs_text(name) else None
    model = build_model(name, items, hp, text)
    times: dict[str, list] = {label: [] for label in VARIANTS}
    vectors = {}
    saved = model.last_position_only, histories.ENCODE_SHORT
    try:
        for _ in range(repeats):
            for label, (last_only, short) in VARIANTS.items():
                model.last_position_only, histories.ENCODE_SHORT = last_only, short
                started = time.perf_counter()
                vectors[label] = encode(model, values, offsets, hp["max_len"], batch_users)
                times[label].append(time.perf_counter() - started)
    finally:
        model.last_position_only, histories.ENCODE_SHORT = saved
    best = {label: min(t) for label, t in times.items()}
    result = {f"{label}_s": best[label] for label in VARIANTS}
    result["speedup"] = best["before"] / best["now"]
    result.update({f"{label}_ratio": best[label] / best["now"] for label in VARIANTS if label.startswith("without")})
    result["max_abs_diff"] = max(float((vectors[label] - vectors["now"]).abs().max()) for label in VARIANTS)
    result["max_abs_value"] = float(vectors["now"].abs().max())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interactions", required=True, help="CSV (optionally gzipped): user_id,item_id,timestamp")
    parser.add_argument("--models", nargs="+", default=["llmesr_sasrec", "sasrec"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-users", type=int, default=0,
                        help="encode in shuffled batches of this many users (0: all at once, as validation)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hp = dataclasses.asdict(load_config(None, args.overrides).train)
    values, offsets, items = read_histories(args.interactions)
    result: dict = {"users": len(offsets) - 1, "items": items, "hidden": hp["hidden"], "layers": hp["layers"],
                    "batch_users": args.batch_users}
    for name in args.models:
        result[name] = measure(name, hp, values, offsets, items, args.repeats, args.batch_users)
        print(f"{name}: {result[name]}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
