"""The serving popularity penalty of saved models, chosen as ``train`` chooses it at its end.

For models trained before ``train.exposure_tolerance`` existed (or to see the whole grid under
another tolerance): prepares a run folder from the warehouse (``users/``, ``popularity.npy``; the
same code as ``train``), then for every model folder prints one JSON line with the validation
NDCG@10 / HR@10 and mean log-popularity of the top-10 slots for each penalty of the fixed grid,
and the penalty the tolerance picks. Evaluate a model with that penalty by
``benchmarks/quality.py --version V --set score.popularity_penalty=P``.

    python benchmarks/exposure.py --warehouse W --tolerance 0.02 W/_models/sasrec/VERSION [...] >> OUT.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("models", nargs="+", help="model folders (<warehouse>/_models/<name>/<version>)")
    args = parser.parse_args(argv)

    from longtail.core.config import TrainConfig, load_config
    from longtail.core.session import build_spark
    from longtail.core.tables import Warehouse
    from longtail.inference.store import load_model_dir
    from longtail.ranking.topk import log_popularity
    from longtail.stages.train.data import UserTable, load_popularity
    from longtail.stages.train.prepare import prepare_training_data
    from longtail.stages.train.validation import ValidationSet

    cfg = load_config(None, [f"warehouse={args.warehouse}", "spark.master=local[1]"])
    spark = build_spark(cfg.spark, delta_engine=cfg.delta.engine)
    wh = Warehouse(spark, cfg.warehouse, engine=cfg.delta.engine)
    with tempfile.TemporaryDirectory() as run_dir:
        prepare_training_data(wh, "sasrec", TrainConfig(exposure_tolerance=args.tolerance), run_dir, 1, 1)
        users = UserTable.load(f"{run_dir}/users")
        log_counts = log_popularity(load_popularity(run_dir))
        with open(f"{run_dir}/item_ids.json") as f:
            item_ids = json.load(f)
        for path in args.models:
            model = load_model_dir(path)
            if model.item_ids != item_ids:
                raise SystemExit(f"{path}: trained on another item index than {args.warehouse}'s item_stats")
            hp = model.config["hyperparameters"]
            validation = ValidationSet.build(users, len(item_ids) - 1, model.max_len, int(hp["seed"]), 100)
            started = time.perf_counter()
            chosen = validation.calibrate_exposure(model.module, log_counts, args.tolerance)
            line = {"model": model.name, "version": model.version, "seconds": time.perf_counter() - started,
                    **chosen.as_dict()}
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
