"""What a user vector costs with the last block run for the scored position alone (the default) and
with every position (before), on real histories: the cost behind validation, ``evaluate`` and ``score``.

    python benchmarks/user_vectors.py --interactions ../shared/data/amazon_beauty_2014/interactions.csv.gz \\
        [--models llmesr_sasrec sasrec] [--repeats 3] [--set train.hidden=64]

Each user's history without its last two items (the validation input of the leave-one-out split),
the default ``train`` config (with ``--set``) (random weights: the cost does not depend on them; random 384-dimensional
text tables for ``llmesr_*``), one torch thread, :func:`encode_histories` as validation calls it; the
two variants alternate ``--repeats`` times and the fastest of each counts. Both must give the same
vectors (to float rounding). The last line printed is one JSON object: per model ``before_s``,
``now_s``, ``speedup``, ``max_abs_diff``, and ``users``.
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
from longtail.models import build_model, needs_text
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


def measure(name: str, hp: dict, values, offsets, items: int, repeats: int) -> dict:
    torch.manual_seed(0)
    text = random_text_tables(items, hp["hidden"], np.random.default_rng(0)) if needs_text(name) else None
    model = build_model(name, items, hp, text)
    rows = np.arange(len(offsets) - 1)
    times: dict[str, list] = {"before": [], "now": []}
    vectors = {}
    for _ in range(repeats):
        for label, last_only in (("before", False), ("now", True)):
            model.last_position_only = last_only
            started = time.perf_counter()
            vectors[label] = encode_histories(model, values, offsets, rows, hp["max_len"])
            times[label].append(time.perf_counter() - started)
    before, now = min(times["before"]), min(times["now"])
    return {"before_s": before, "now_s": now, "speedup": before / now,
            "max_abs_diff": float((vectors["before"] - vectors["now"]).abs().max()),
            "max_abs_value": float(vectors["before"].abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interactions", required=True, help="CSV (optionally gzipped): user_id,item_id,timestamp")
    parser.add_argument("--models", nargs="+", default=["llmesr_sasrec", "sasrec"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hp = dataclasses.asdict(load_config(None, args.overrides).train)
    values, offsets, items = read_histories(args.interactions)
    result: dict = {"users": len(offsets) - 1, "items": items, "hidden": hp["hidden"], "layers": hp["layers"]}
    for name in args.models:
        result[name] = measure(name, hp, values, offsets, items, args.repeats)
        print(f"{name}: {result[name]}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
