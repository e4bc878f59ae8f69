"""Warm start against a from-scratch retrain: full NDCG@10 and training time (issue 25).

Usage::

    python benchmarks/warm_start.py --warehouse /work/data/beauty --seeds 42 43 44 \\
        --out benchmarks/results/warm_start.jsonl

The protocol, for each seed on a fresh **copy** of ``--warehouse`` (never written; the copies go
under ``--work``, a temporary folder by default, and are deleted unless ``--keep``), so that each
seed's first train has no earlier version to continue, as a schedule's first run:

1. the copy's ``interactions`` lose their last ``--holdout`` share (5%) by time; its id maps are
   dropped so that ``sequences`` numbers items as a catalogue of that day would;
2. ``sequences`` on them, then ``train`` from scratch (``train.warm_start`` on, so the model saves
   its Adam state and its users' history fingerprints as a scheduled first run would): the previous version;
3. every interaction back, ``sequences`` again (the id maps grow: new items get new idxs at the end);
4. ``train`` with ``train.warm_start`` (from the version of step 2) and ``train`` from scratch, same
   seed, each on everything; both evaluated on the same test split (full protocol, as served).

Text tables (``item_embeddings``, ``item_embeddings_pca``, the PCA map) are the warehouse's own: they
cover every item already. Prints one JSON line per seed (NDCG@10 full protocol of both, the
training seconds of both: ``train`` wall time and the sum of epoch times, their ratios) and a
summary line over the seeds; ``--out`` appends the lines to a file. Never asserts: the issue's
bar (NDCG@10 within 1%, at most 30% of the time) is printed beside the figures.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

#: Folders of the warehouse the copy does not take: outputs of the runs it makes itself (models,
#: reports, scratch), the id maps (rebuilt from the held-out day) and the nightly tables.
SKIPPED = ("_models", "_train", "_tmp", "_reports", "_mlruns", "_item_ids", "_user_ids", "models", "evaluation",
           "recommendations", "recommendation_runs", "similar_items")


def require_local(source: str) -> Path:
    """``source`` as a local folder; exits with a message for anything else (object stores are not copied)."""
    if "://" in source or not Path(source).is_dir():
        raise SystemExit(f"--warehouse {source}: a local warehouse folder is needed (it is copied, never written)")
    return Path(source)


def copy_warehouse(source: str, target: str) -> None:
    """Copy the local warehouse ``source`` to ``target`` without :data:`SKIPPED` (``source`` is only read)."""
    src = require_local(source)
    Path(target).mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        if entry.name in SKIPPED:
            continue
        if entry.is_dir():
            shutil.copytree(entry, Path(target) / entry.name)
        else:
            shutil.copy2(entry, Path(target) / entry.name)


def holdout_cutoff(ts_micros, share: float) -> int:
    """The time (microseconds since the epoch, UTC) from which the last ``share`` of the
    interactions lie, from their times ``ts_micros``."""
    import numpy as np

    ordered = np.sort(np.asarray(ts_micros, dtype=np.int64))
    return int(ordered[min(len(ordered) - 1, int(len(ordered) * (1.0 - share)))])


def _set_interactions(source_wh, wh, cutoff: int | None) -> float:
    """Write the source's interactions (before ``cutoff``, in epoch microseconds, when given) as the
    copy's; returns the share kept."""
    from pyspark.sql import functions as F

    from longtail.core import schemas as S

    full = source_wh.read(S.INTERACTIONS)
    # Epoch microseconds on both sides: no session time zone in the comparison.
    kept = full if cutoff is None else full.filter(F.unix_micros(F.col("ts")) < F.lit(cutoff))
    wh.write(kept, S.INTERACTIONS)
    return 1.0 if cutoff is None else wh.read(S.INTERACTIONS).count() / full.count()


def _train(wh, cfg, model: str, warm: bool) -> dict:
    from longtail.stages.train import run_train

    started = time.perf_counter()
    result = run_train(wh, model, dataclasses.replace(cfg.train, warm_start=warm),
                       valid_negatives=cfg.evaluate.negatives)
    wall = time.perf_counter() - started
    metrics = json.loads(Path(result.path, "metrics.json").read_text())
    return {
        "version": result.version, "warm_start_from": result.warm_start_from, "train_seconds": wall,
        "epoch_seconds": sum(h["seconds"] for h in metrics["history"]), "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run, "valid_ndcg10": result.valid_ndcg10, "warm_start": metrics.get("warm_start"),
    }


def _ndcg(wh, cfg, model: str, version: str) -> float:
    from longtail.stages.evaluate import run_evaluate

    report = run_evaluate(wh, model, cfg.evaluate, version=version, hybrid=cfg.score.hybrid,
                          popularity_penalty=cfg.score.popularity_penalty)
    return float(report.report["protocols"]["full"]["overall"]["ndcg@10"])


def run_seed(source_wh, wh, cfg, model: str, seed: int, cutoff) -> dict:
    """Steps 1-4 of the module docstring for one seed; returns its JSON line."""
    from longtail.stages.sequences import run_sequences

    cfg = cfg.replace(**{"train.seed": seed})
    kept = _set_interactions(source_wh, wh, cutoff)
    run_sequences(wh, cfg.sequences)
    before = _train(wh, cfg, model, warm=True)  # no version yet: from scratch, saving its Adam state
    if before["warm_start_from"] is not None:
        raise RuntimeError(f"the copy already held a version ({before['warm_start_from']}); it must start empty")
    _set_interactions(source_wh, wh, None)
    run_sequences(wh, cfg.sequences)
    warm = _train(wh, cfg, model, warm=True)
    if warm["warm_start_from"] != before["version"]:
        raise RuntimeError(f"the warm start began from {warm['warm_start_from']}, not {before['version']}")
    scratch = _train(wh, cfg, model, warm=False)
    line = {"seed": seed, "model": model, "holdout": round(1.0 - kept, 4), "previous": before,
            "warm": {**warm, "full_ndcg10": _ndcg(wh, cfg, model, warm["version"])},
            "scratch": {**scratch, "full_ndcg10": _ndcg(wh, cfg, model, scratch["version"])}}
    line["ndcg_ratio"] = line["warm"]["full_ndcg10"] / line["scratch"]["full_ndcg10"]
    line["time_ratio"] = warm["train_seconds"] / scratch["train_seconds"]
    line["epoch_time_ratio"] = warm["epoch_seconds"] / scratch["epoch_seconds"]
    return line


def summary(lines: list[dict]) -> dict:
    """Means over seeds and the issue's bar: NDCG@10 within 1% of from-scratch, at most 30% of its time."""
    import numpy as np

    mean = lambda key, part=None: float(np.mean([(r[part] if part else r)[key] for r in lines]))
    out = {
        "summary": True, "seeds": [r["seed"] for r in lines], "model": lines[0]["model"],
        "warm_full_ndcg10": mean("full_ndcg10", "warm"), "scratch_full_ndcg10": mean("full_ndcg10", "scratch"),
        "warm_train_seconds": mean("train_seconds", "warm"), "scratch_train_seconds": mean("train_seconds", "scratch"),
        "warm_epochs": mean("epochs_run", "warm"), "scratch_epochs": mean("epochs_run", "scratch"),
        "ndcg_ratio": mean("ndcg_ratio"), "time_ratio": mean("time_ratio"), "epoch_time_ratio": mean("epoch_time_ratio"),
    }
    out["within_1pct"] = out["ndcg_ratio"] >= 0.99
    out["at_most_30pct_time"] = out["time_ratio"] <= 0.30
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", required=True, help="the warehouse to measure on (copied, never written)")
    parser.add_argument("--work", help="folder for the copies, one per seed (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the copies")
    parser.add_argument("--model", default="llmesr_sasrec")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--holdout", type=float, default=0.05, help="share of the interactions held out, by time")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE, as the CLI")
    parser.add_argument("--out", help="append the JSON lines to this file")
    args = parser.parse_args(argv)

    from longtail.core import schemas as S
    from longtail.core.config import load_config
    from longtail.core.session import build_spark
    from longtail.core.tables import Warehouse

    from pyspark.sql import functions as F

    require_local(args.warehouse)  # before Spark starts
    work = Path(args.work or tempfile.mkdtemp(prefix="longtail-warm-start-"))
    cfg = load_config(None, args.overrides)
    spark = build_spark(cfg.spark, delta_engine=cfg.delta.engine)
    source = Warehouse(spark, args.warehouse, engine=cfg.delta.engine)  # read only
    micros = source.read(S.INTERACTIONS).select(F.unix_micros("ts").alias("t")).toArrow().column("t")
    cutoff = holdout_cutoff(micros.to_numpy(zero_copy_only=False), args.holdout)
    lines = []
    for seed in args.seeds:
        copy = work / f"seed-{seed}" / "warehouse"
        copy_warehouse(args.warehouse, str(copy))
        try:
            wh = Warehouse(spark, str(copy), engine=cfg.delta.engine)
            lines.append(run_seed(source, wh, cfg.replace(warehouse=str(copy)), args.model, seed, cutoff))
        finally:
            if not args.keep:
                shutil.rmtree(copy.parent, ignore_errors=True)
        _emit(lines[-1], args.out)
    _emit(summary(lines), args.out)
    if not args.work and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _emit(line: dict, out: str | None) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
