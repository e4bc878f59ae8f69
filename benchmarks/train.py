"""Training throughput: sequences/second with 1 process and with N processes (TorchDistributor).

Usage::

    python benchmarks/train.py                       # synthetic data the size of Beauty 5-core
    python benchmarks/train.py --warehouse ./warehouse --model llmesr_sasrec --epochs 3

The baseline is a ``single`` run (one process in the driver, all cores as torch threads),
measured in the same process as the ``local`` run with ``--processes`` processes (gloo,
cores split between them). Sequences/second counts training sequences through the
training loop (validation and start-up excluded); wall seconds include Spark's shard
writing and, for ``local``, TorchDistributor's start-up. Prints a ratio, never asserts.
With ``--warehouse`` the tables it holds are used (``llmesr_*`` needs the embedding and
similar-user tables) and the two trained models are registered there; otherwise a
synthetic warehouse is written to a temporary folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

import numpy as np

# Beauty 5-core (shared/data/amazon_beauty_2014/SOURCE.md).
BEAUTY_USERS, BEAUTY_ITEMS, BEAUTY_MEAN_LENGTH, BEAUTY_MAX_LENGTH = 22_363, 12_101, 8.88, 204


def synthetic_warehouse(wh, users: int, items: int, llm_dim: int, hidden: int, seed: int = 0) -> None:
    """Write Beauty-shaped tables: lengths >= 5 with Beauty's mean, Zipf-like item popularity."""
    from longtail.core import schemas as S

    spark = wh.spark
    rng = np.random.default_rng(seed)
    # 5 + geometric tail: mean 8.88 like Beauty, capped at its longest history.
    longest = min(BEAUTY_MAX_LENGTH, items - 1)
    lengths = np.minimum(5 + rng.geometric(1.0 / (BEAUTY_MEAN_LENGTH - 4.0), size=users) - 1, longest)
    weights = 1.0 / np.arange(1, items + 1) ** 0.8
    weights /= weights.sum()
    rows = []
    for u in range(users):
        seq = rng.choice(np.arange(1, items + 1), size=int(lengths[u]), replace=False, p=weights).tolist()
        rows.append((f"u{u}", u + 1, seq, seq[:-2], seq[-2], seq[-1]))
    wh.write(spark.createDataFrame(rows, S.USER_SEQUENCES_SCHEMA), S.USER_SEQUENCES)
    wh.write(
        spark.createDataFrame([(f"i{i}", i, 5, "head") for i in range(1, items + 1)], S.ITEM_STATS_SCHEMA),
        S.ITEM_STATS,
    )
    llm = rng.normal(size=(items, llm_dim)).astype(np.float32)
    centred = llm - llm.mean(axis=0)
    _, _, vt = np.linalg.svd(centred[:4000], full_matrices=False)
    pca = (centred @ vt[:hidden].T).astype(np.float32)
    wh.write(
        spark.createDataFrame([(f"i{i + 1}", llm[i].tolist(), "synthetic", "") for i in range(items)],
                              S.ITEM_EMBEDDINGS_SCHEMA),
        S.ITEM_EMBEDDINGS,
    )
    wh.write(
        spark.createDataFrame([(f"i{i + 1}", pca[i].tolist(), "synthetic") for i in range(items)],
                              S.ITEM_EMBEDDINGS_PCA_SCHEMA),
        S.ITEM_EMBEDDINGS_PCA,
    )
    similar = [
        (f"u{u}", [f"u{int(v)}" for v in rng.choice(users, size=10, replace=False)], [1.0] * 10) for u in range(users)
    ]
    wh.write(spark.createDataFrame(similar, S.SIMILAR_USERS_SCHEMA), S.SIMILAR_USERS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--warehouse", help="use this warehouse's tables instead of synthetic data")
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--users", type=int, default=BEAUTY_USERS)
    parser.add_argument("--items", type=int, default=BEAUTY_ITEMS)
    parser.add_argument("--llm-dim", type=int, default=384, help="synthetic LLM embedding width (MiniLM: 384)")
    parser.add_argument("--threads", type=int, help="torch threads of the 1-process run (default: torch's)")
    args = parser.parse_args(argv)

    from longtail.core.config import SparkConfig, TrainConfig
    from longtail.core.session import build_spark
    from longtail.core.tables import Warehouse
    from longtail.stages.train import run_train

    spark = build_spark(SparkConfig(master=f"local[{max(2, args.processes)}]", shuffle_partitions=4))
    cfg = TrainConfig(epochs=args.epochs, eval_every=args.epochs, patience=args.epochs)
    scratch = None
    if args.warehouse:
        wh = Warehouse(spark, args.warehouse)
        source = args.warehouse
    else:
        scratch = tempfile.TemporaryDirectory(prefix="longtail-bench-")
        wh = Warehouse(spark, os.path.join(scratch.name, "warehouse"))
        started = time.perf_counter()
        synthetic_warehouse(wh, args.users, args.items, args.llm_dim, cfg.hidden)
        source = f"synthetic {args.users} users x {args.items} items ({time.perf_counter() - started:.0f}s to write)"

    print(f"model {args.model}, {args.epochs} epochs, data: {source}, {os.cpu_count()} cores")
    runs = {}
    single = f"1 process (single, {args.threads or 'default'} threads)"
    for label, mode, processes in ((single, "single", 1),
                                   (f"{args.processes} processes (local)", "local", args.processes)):
        started = time.perf_counter()
        threads = args.threads if mode == "single" else None
        result = run_train(wh, args.model, dataclasses.replace(cfg, mode=mode, processes=processes), threads=threads)
        wall = time.perf_counter() - started
        runs[label] = result
        print(
            f"{label:>36}: {result.sequences_per_second:8.0f} sequences/s, {result.seconds_per_epoch:7.2f} s/epoch, "
            f"wall {wall:6.1f}s, validation NDCG@10 {result.valid_ndcg10:.4f}"
        )
    base, multi = runs.values()
    ratio = multi.sequences_per_second / base.sequences_per_second if base.sequences_per_second else float("nan")
    print(f"ratio {args.processes} processes / 1 process: {ratio:.2f}x sequences/s")
    if scratch is not None:
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
