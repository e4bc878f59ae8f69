"""The driver's peak memory in ``score``: does it grow with users, and by how much per million items?

For each point ``USERSxITEMS`` (absolute counts, e.g. ``5000x5000``) a first Python process writes the
synthetic catalogue (``longtail.synthetic``, seeded), runs ``sequences`` and writes one 384-dimensional
``item_embeddings`` row per item (drawn in Spark tasks: items without interactions join the catalogue as
text-only items, as on a real catalogue); a second, fresh process builds the Spark session and the
model (an untrained ``sasrec`` of the default size, as ``scale.py``), resets the kernel's high-water mark
of its resident memory (``/proc/self/clear_refs``), runs ``score`` (top-10, ``score.retrieval: exact``)
and reads ``VmHWM``: the driver Python process's peak during the stage, beside its resident memory
before it. The JVM (driver and, with a local master, the executors) is bounded by
``spark.driver_memory`` and is not what this measures.

    python benchmarks/driver_memory.py --points 5000x5000 40000x5000 5000x40000 \
        --out benchmarks/results/driver_memory.jsonl

One JSON line per point: users, items in the catalogue, peak and baseline MiB, seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
EMBEDDING_DIM = 384


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _session(overrides: list[str]):
    from longtail.core.config import load_config
    from longtail.core.session import build_spark

    cfg = load_config(None, ["sequences.k_core=1", *overrides])
    return cfg, build_spark(cfg.spark)


def prepare(root: str, users: int, items: int, zipf: float, overrides: list[str]) -> None:
    """Write the catalogue, ``sequences``' tables and ``item_embeddings`` into ``root``."""
    import numpy as np
    import pandas as pd
    from longtail.core import schemas
    from longtail.core.config import DemoConfig
    from longtail.core.tables import Warehouse
    from longtail.stages.sequences import run_sequences
    from longtail.synthetic import write_catalogue
    cfg, spark = _session(overrides)
    wh = Warehouse(spark, root)
    write_catalogue(wh, DemoConfig(users=users, items=items, seed=7), zipf_exponent=zipf)
    run_sequences(wh, cfg.sequences)

    def draw(batches):
        for batch in batches:
            rng = np.random.default_rng(len(batch))
            vectors = rng.normal(size=(len(batch), EMBEDDING_DIM)).astype(np.float32)
            yield pd.DataFrame({"item_id": batch["item_id"], "embedding": list(vectors), "model": "synthetic",
                                "text_hash": ""})

    emb = wh.read(schemas.ITEMS).select("item_id").mapInPandas(draw, schemas.ITEM_EMBEDDINGS_SCHEMA)
    wh.write(schemas.conform(emb, schemas.ITEM_EMBEDDINGS), schemas.ITEM_EMBEDDINGS, mode="overwrite")
    spark.stop()


def measure(root: str, overrides: list[str]) -> dict:
    """``score`` over the warehouse at ``root`` in this (fresh) process; the driver's peak RSS."""
    import dataclasses
    import gc

    sys.path.insert(0, HERE)
    from longtail.core import schemas
    from longtail.core.tables import Warehouse
    from longtail.stages.score import run_score
    from scale import untrained_sasrec_loader

    cfg, spark = _session(overrides)
    wh = Warehouse(spark, root)
    loader = untrained_sasrec_loader(wh)  # the model's item table belongs to the stage's memory: it is loaded here
    users = wh.read(schemas.USERS).count()
    gc.collect()
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS: the peak from here on
    started = time.perf_counter()
    report = run_score(wh, "sasrec", dataclasses.replace(cfg.score, retrieval="exact"), model_loader=loader)
    seconds = time.perf_counter() - started
    peak = _status("VmHWM")
    from longtail.inference import load_catalogue

    catalogue = load_catalogue(wh, include_new_items=True)
    spark.stop()
    return {"users": users, "scored_users": report.users, "catalogue_items": catalogue.size - 1,
            "known_items": catalogue.n_known - 1, "baseline_mib": before / 2**20, "peak_mib": peak / 2**20,
            "growth_mib": (peak - before) / 2**20, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", nargs="+", default=["5000x5000", "40000x5000", "5000x40000"])
    parser.add_argument("--zipf", type=float, default=0.5)
    parser.add_argument("--out")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--phase", choices=["prepare", "measure"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "prepare":
        users, items = (int(v) for v in args.points[0].split("x"))
        prepare(args.root, users, items, args.zipf, args.overrides)
        return
    if args.phase == "measure":
        print("RESULT " + json.dumps(measure(args.root, args.overrides)), flush=True)
        return
    extra = [a for o in args.overrides for a in ("--set", o)]
    for point in args.points:
        with tempfile.TemporaryDirectory(prefix="longtail-driver-") as tmp:
            root = os.path.join(tmp, "warehouse")
            base = [sys.executable, os.path.abspath(__file__), "--root", root, "--zipf", str(args.zipf), *extra]
            subprocess.run([*base, "--phase", "prepare", "--points", point], check=True)
            out = subprocess.run([*base, "--phase", "measure"], check=True, capture_output=True, text=True).stdout
        line = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])
        line.update(point=point, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), cpus=os.cpu_count())
        print(json.dumps(line), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
