"""Item-to-item quality of ``longtail similar-items`` on a warehouse with a trained model.

Runs the stage (it WRITES the ``--run-date`` partition of ``similar_items`` into the warehouse: use a
copy of a warehouse you care about), then, for every user of ``user_sequences`` with a test item,
asks whether the test item is among the ``--top-k`` most similar items of the user's last input item
(the validation item): item-to-item HR@K of each source (``collaborative``, ``semantic``, ``blend``),
overall and for tail test items, beside each source's coverage and tail share of the table (the
figures ``evaluate`` reports as ``similar_items``). With ``similar_items.semantic_weight: auto`` (the
default) the blend's weights are chosen on validation pairs (the item before the validation item ->
the validation item) before any test item is read; the JSON's ``blend`` block holds the choice and
every share's validation figures. The last line is one JSON object.

    python benchmarks/similar_items.py --warehouse W --model NAME [--version V] [--top-k 10]
        [--set similar_items.KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import time


def summary(figures: dict, k: int) -> dict:
    """``{source: {hr@k, tail_hr@k, coverage, tail_share}}`` from :func:`similar_items_figures`."""
    return {
        source: {
            f"hr@{k}": f["overall"][f"hr@{k}"], f"tail_hr@{k}": f["tail_item"][f"hr@{k}"],
            "coverage": f["coverage"], "tail_share": f["tail_share"],
        }
        for source, f in figures["sources"].items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", help="model version (default: the latest)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--run-date", default="2000-01-01", help="partition of similar_items to write")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    from longtail.core.config import load_config
    from longtail.core.session import build_spark
    from longtail.core.tables import Warehouse
    from longtail.stages.evaluate import similar_items_figures
    from longtail.stages.similar_items import run_similar_items

    cfg = load_config(None, [f"warehouse={args.warehouse}", *args.overrides])
    wh = Warehouse(build_spark(cfg.spark, delta_engine=cfg.delta.engine), cfg.warehouse, engine=cfg.delta.engine)
    started = time.perf_counter()
    report = run_similar_items(
        wh, args.model, cfg.similar_items, version=args.version, run_date=dt.date.fromisoformat(args.run_date),
        top_k=args.top_k, availability=cfg.availability.table,
    )
    seconds = time.perf_counter() - started
    print(report, flush=True)
    figures = similar_items_figures(wh, report.model, report.model_version, args.top_k, run_date=report.run_date)
    assert figures is not None
    result = {
        "benchmark": "similar_items", "model": report.model, "model_version": report.model_version,
        "k": args.top_k, "seconds": round(seconds, 1), "run_date": figures["run_date"],
        "settings": {k: v for k, v in vars(cfg.similar_items).items() if not k.startswith("_")},
        "sources": summary(figures, args.top_k),
        "blend": report.blend,  # the weights it was written with, and the validation figures they were chosen on
    }
    for source, f in result["sources"].items():
        print(f"{source:>13}: HR@{args.top_k} {f[f'hr@{args.top_k}']:.4f}, tail items {f[f'tail_hr@{args.top_k}']:.4f}, "
              f"coverage {f['coverage']:.3f}, tail share {f['tail_share']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
