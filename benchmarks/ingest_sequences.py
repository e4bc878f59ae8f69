"""Time ``ingest --format files`` + ``sequences`` on Amazon Beauty 2014 and print rows per second.

The baseline, measured in the same process, is the same work in plain pandas on the driver:
read the CSV, iterative 5-core, dense ids, per-user sequences, leave-one-out split, training
popularity and Pareto segments. The ratio says what Spark's distribution costs (or buys) on
one small machine; on a cluster only the Spark side scales.

    python benchmarks/ingest_sequences.py [--data DIR] [--repeat N] [--set KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon_beauty_2014"
EXPECTED = (22_363, 12_101, 198_502)


def pandas_baseline(
    interactions: Path, k: int = 5, max_len: int = 200, share: float = 0.2
) -> tuple[float, float, dict]:
    """The sequences stage in pandas on the driver.

    Returns (read seconds, work seconds, results: counts, sequences by user_id, head item ids).
    """
    t0 = time.perf_counter()
    df = pd.read_csv(interactions, dtype={"user_id": str, "item_id": str, "timestamp": np.int64})
    t1 = time.perf_counter()
    while True:
        nu = df.groupby("user_id")["item_id"].transform("size")
        ni = df.groupby("item_id")["user_id"].transform("size")
        kept = df[(nu >= k) & (ni >= k)]
        if len(kept) == len(df):
            break
        df = kept
    first_user = df.groupby("user_id")["timestamp"].min().reset_index().sort_values(["timestamp", "user_id"])
    first_item = df.groupby("item_id")["timestamp"].min().reset_index().sort_values(["timestamp", "item_id"])
    user_idx = pd.Series(np.arange(1, len(first_user) + 1), index=first_user["user_id"].to_numpy())
    item_idx = pd.Series(np.arange(1, len(first_item) + 1), index=first_item["item_id"].to_numpy())
    df = df.assign(user_idx=df["user_id"].map(user_idx), item_idx=df["item_id"].map(item_idx))
    df = df.sort_values(["user_idx", "timestamp", "item_id"])
    history = df.groupby("user_idx")["item_idx"].agg(list)
    seqs = pd.DataFrame({"item_idxs": history.map(lambda h: h[-max_len:])})
    seqs["train"] = seqs["item_idxs"].map(lambda s: s[:-2] if len(s) >= 3 else s)
    seqs["valid"] = seqs["item_idxs"].map(lambda s: s[-2] if len(s) >= 3 else None)
    seqs["test"] = seqs["item_idxs"].map(lambda s: s[-1] if len(s) >= 3 else None)
    train = history.map(lambda h: h[:-2] if len(h) >= 3 else h).explode()
    pop = train.value_counts().reindex(item_idx.to_numpy(), fill_value=0)
    order = pop.rename_axis("item_idx").reset_index(name="pop")
    order = order.sort_values(["pop", "item_idx"], ascending=[False, True])
    head_items = set(order["item_idx"].iloc[: int(np.floor(share * len(order) + 0.5))])
    lengths = history.map(len)
    users = lengths.rename_axis("user_idx").reset_index(name="n")
    users = users.sort_values(["n", "user_idx"], ascending=[False, True])
    head_users = set(users["user_idx"].iloc[: int(np.floor(share * len(users) + 0.5))])
    t2 = time.perf_counter()
    user_of = pd.Series(user_idx.index, index=user_idx.to_numpy())
    item_of = pd.Series(item_idx.index, index=item_idx.to_numpy())
    results = {
        "counts": (len(history), len(item_idx), len(df)),
        "sequences": dict(zip(user_of[seqs.index], seqs["item_idxs"].map(tuple))),
        "head_items": set(item_of[sorted(head_items)]),
        "head_users": set(user_of[sorted(head_users)]),
    }
    return t1 - t0, t2 - t1, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side; the fastest is reported")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    from longtail.core.config import load_config
    from longtail.core.session import build_spark
    from longtail.core.tables import Warehouse
    from longtail.stages.ingest import run_ingest
    from longtail.stages.sequences import run_sequences

    cfg = load_config(None, args.overrides)
    spark = build_spark(cfg.spark)
    interactions = args.data / "interactions.csv.gz"
    items = args.data / "items.jsonl.gz"
    rows = len(pd.read_csv(interactions, usecols=["user_id"]))

    best = {"ingest": float("inf"), "sequences": float("inf"), "both": float("inf")}
    summary = None
    for _ in range(args.repeat):
        root = tempfile.mkdtemp(prefix="longtail-bench-")
        try:
            wh = Warehouse(spark, root, engine=cfg.delta.engine)
            t0 = time.perf_counter()
            report = run_ingest(spark, wh, "files", str(interactions), str(items), None, cfg.ingest)
            t1 = time.perf_counter()
            summary = run_sequences(wh, cfg.sequences)
            t2 = time.perf_counter()
            # Outside the timing: the figures to compare with the pandas baseline.
            spark_out = {
                "sequences": {r.user_id: tuple(r.item_idxs) for r in wh.read("user_sequences").collect()},
                "head_items": {r.item_id for r in wh.read("item_stats").where("segment = 'head'").collect()},
                "head_users": {r.user_id for r in wh.read("user_stats").where("segment = 'head'").collect()},
            }
        finally:
            shutil.rmtree(root, ignore_errors=True)
        best["ingest"] = min(best["ingest"], t1 - t0)
        best["sequences"] = min(best["sequences"], t2 - t1)
        best["both"] = min(best["both"], t2 - t0)

    read_s, work_s = float("inf"), float("inf")
    for _ in range(args.repeat):
        r, w, base = pandas_baseline(interactions, cfg.sequences.k_core, cfg.sequences.max_len,
                                       cfg.sequences.segments.head_item_share)
        read_s, work_s = min(read_s, r), min(work_s, w)

    print(report)
    print(summary)
    got = (summary.users, summary.items, summary.interactions)
    print(f"\ncounts users/items/interactions: spark {got}, pandas {base['counts']}, expected {EXPECTED}: "
          f"{'OK' if got == base['counts'] == EXPECTED else 'MISMATCH'}")
    for name in ("sequences", "head_items", "head_users"):
        print(f"{name} identical to the pandas baseline: {spark_out[name] == base[name]}")
    print(f"\n{rows:,} input rows; spark {cfg.spark.master}, {cfg.spark.shuffle_partitions} shuffle partitions, "
          f"delta engine {wh.engine}; best of {args.repeat}; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    print(f"{'stage':<34}{'seconds':>9}{'rows/s':>12}")
    for name, secs in [("ingest (spark)", best["ingest"]), ("sequences (spark)", best["sequences"]),
                       ("ingest + sequences (spark)", best["both"]), ("read csv (pandas)", read_s),
                       ("k-core + sequences (pandas)", work_s), ("read + k-core + seq. (pandas)", read_s + work_s)]:
        print(f"{name:<34}{secs:>9.2f}{rows / secs:>12,.0f}")
    print(f"ratio sequences spark / pandas (time): {best['sequences'] / work_s:.1f}x")
    print(f"ratio ingest + sequences spark / pandas read + work (time): {best['both'] / (read_s + work_s):.1f}x")
    spark.stop()


if __name__ == "__main__":
    main()
