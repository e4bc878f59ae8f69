"""How the stages grow with the data: the synthetic catalogue at several multiples of Beauty.

For each point (users x Beauty's 22,363, items x Beauty's 12,101) it writes the synthetic
catalogue (``longtail.synthetic``, seeded) into a fresh warehouse, then times, in this process
with the configured local Spark:

- ``sequences`` (k-core, ids, leave-one-out, segments);
- ``neighbors`` over synthetic user embeddings (384 dimensions, drawn in Spark tasks, a
  preference-category centre plus noise so that neighbours exist): ``exact`` up to
  ``--exact-max`` users (it is quadratic by design) and ``faiss`` (HNSW);
- ``score`` (top-10 for every user) with an untrained ``sasrec`` of the default size: the
  scoring cost does not depend on the weights; ``score`` ranks the whole catalogue
  (``score.retrieval: exact``), ``score ann`` the same users through the candidate index
  (``score.retrieval: ann``, forced at any size; the cost of a random item table's index, not its
  recall: ``benchmarks/retrieval.py`` measures recall with trained models).

Per stage it prints seconds, rows/s, microseconds per row and the peak resident memory of the
Python driver, the JVM and the largest Spark Python worker, and writes one JSON line per point
to ``--out``. ``--summary`` fits ``log(time)`` and ``log(peak worker memory)`` on ``log(rows)``
per stage over the lines of ``--out`` and prints the slopes (1.0: linear).

    python benchmarks/scale.py --points 1x1 10x1 50x1 10x10 --out benchmarks/results/scale.jsonl
    python benchmarks/scale.py --out benchmarks/results/scale.jsonl --summary
    # the 1M-item point (300,000 users, 1M items drawn: about 0.9M with interactions), only the stages
    # of candidate retrieval; a flatter popularity and no k-core so that most items have interactions:
    python benchmarks/scale.py --points 13.4x82.6 --zipf 0.5 --set sequences.k_core=1 \
        --stages sequences score "score ann" --out benchmarks/results/scale.jsonl

``--stages`` runs only the named stages of :data:`STAGES` (the synthetic catalogue and ``sequences``
always run: the others read their tables). ``--set KEY=VALUE`` applies to the stages' config as to
the session; ``--zipf`` is the catalogue's popularity exponent (the demo's 1.0 by default).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

from proctree import cmdline, descendants, is_spark_worker, rss

BEAUTY_USERS, BEAUTY_ITEMS = 22_363, 12_101
#: What a point can time, in order (``--stages``).
STAGES = ("sequences", "user embeddings", "neighbors exact", "neighbors faiss", "score", "score ann")
EMBEDDING_DIM = 384


class Peaks(threading.Thread):
    """Peak RSS of this Python process, its JVM and its largest PySpark worker, per stage label."""

    def __init__(self, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.every, self.stage, self.peaks, self.done = every, "setup", {}, threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self.done.is_set():
            seen = {"python driver": rss(me), "jvm": 0, "largest worker": 0}
            for pid in descendants(me):
                resident, command = rss(pid), cmdline(pid)
                if is_spark_worker(command):
                    seen["largest worker"] = max(seen["largest worker"], resident)
                elif "java" in command:
                    seen["jvm"] += resident
            peak = self.peaks.setdefault(self.stage, dict.fromkeys(seen, 0))
            for key, value in seen.items():
                peak[key] = max(peak[key], value)
            self.done.wait(self.every)


def write_user_embeddings(wh, dim: int = EMBEDDING_DIM, seed: int = 0) -> None:
    """A ``user_embeddings`` table for every user of ``user_sequences``, drawn in Spark tasks:
    one of 64 seeded centres (by a hash of the user id) plus unit noise, so neighbours exist."""
    import numpy as np
    import pandas as pd
    from longtail.core import schemas
    from pyspark.sql import functions as F

    centres = np.random.default_rng(seed).normal(size=(64, dim)).astype(np.float32)

    def draw(batches):
        for frame in batches:
            rng = np.random.default_rng(abs(hash(tuple(frame["user_id"].head(3)))) % 2**32)
            vec = centres[frame["centre"].to_numpy() % 64] + rng.normal(size=(len(frame), dim)).astype(np.float32)
            yield pd.DataFrame({"user_id": frame["user_id"], "embedding": list(vec),
                                "model": "synthetic", "text_hash": ""})

    users = wh.read(schemas.USER_SEQUENCES).select("user_id", F.abs(F.xxhash64("user_id")).alias("centre"))
    out = users.mapInPandas(draw, schemas.USER_EMBEDDINGS_SCHEMA)
    wh.write(out, schemas.USER_EMBEDDINGS, mode="overwrite")


def untrained_sasrec_loader(wh):
    """A ``model_loader`` for ``run_score``: an untrained ``sasrec`` over ``item_stats``' items."""
    from longtail.core import schemas
    from longtail.core.config import TrainConfig
    from longtail.inference.store import TrainedModel
    from longtail.models import build_model

    rows = wh.read(schemas.ITEM_STATS).select("item_idx", "item_id").orderBy("item_idx").collect()
    item_ids = [""] * (rows[-1]["item_idx"] + 1)
    for r in rows:
        item_ids[r["item_idx"]] = r["item_id"]
    t = TrainConfig()
    hp = {"hidden": t.hidden, "layers": t.layers, "heads": t.heads, "dropout": t.dropout, "max_len": t.max_len,
          "alpha": 0.0, "cross_attention": False, "seed": 0}
    module = build_model("sasrec", len(item_ids) - 1, hp).eval()
    model = TrainedModel("sasrec", "untrained", "", module, item_ids, t.max_len,
                         {"model": "sasrec", "hyperparameters": hp, "popularity_penalty": 0.0})
    return lambda _wh, _name, _version=None: model


def run_point(spark, root: str, users_x: float, items_x: float, exact_max: int, peaks: Peaks, cfg=None,
              stages_wanted=STAGES, zipf: float = 1.0) -> dict:
    """The stages ``stages_wanted`` (of :data:`STAGES`) at one point; returns its JSON line."""
    import dataclasses

    from longtail.core import schemas
    from longtail.core.config import Config, DemoConfig, NeighborsConfig
    from longtail.core.tables import Warehouse
    from longtail.stages.neighbors import run_neighbors
    from longtail.stages.score import run_score
    from longtail.stages.sequences import run_sequences
    from longtail.synthetic import write_catalogue

    cfg = cfg or Config()
    wh = Warehouse(spark, root)
    users, items = int(BEAUTY_USERS * users_x), int(BEAUTY_ITEMS * items_x)
    stages: dict[str, dict] = {}

    def timed(name: str, rows_of, fn):
        peaks.stage = name
        start = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - a stage that fails at this size is a finding, not the end
            first = str(exc).strip().splitlines()
            reason = next((line for line in first if "Exception" in line or "Error" in line), first[0] if first else "")
            stages[name] = {"failed": reason[:300], "seconds": time.perf_counter() - start}
            print(f"{users_x:g}x users {items_x:g}x items  {name:<16}FAILED after {stages[name]['seconds']:.1f}s: "
                  f"{reason[:200]}", flush=True)
            return
        seconds = time.perf_counter() - start
        rows = rows_of()
        stages[name] = {"seconds": seconds, "rows": rows, "us_per_row": 1e6 * seconds / max(rows, 1),
                        "summary": str(result).splitlines()[0] if result is not None else "",
                        "memory": dict(peaks.peaks.get(name, {}))}
        mem = stages[name]["memory"]
        print(f"{users_x:g}x users {items_x:g}x items  {name:<16}{seconds:9.1f}s {rows:>11,} rows "
              f"{stages[name]['us_per_row']:9.2f} us/row  python {mem.get('python driver', 0) / 2**20:6,.0f} MiB  "
              f"jvm {mem.get('jvm', 0) / 2**20:6,.0f} MiB  worker {mem.get('largest worker', 0) / 2**20:6,.0f} MiB",
              flush=True)

    demo = DemoConfig(users=users, items=items, seed=7)
    timed("synthetic data", lambda: wh.read(schemas.INTERACTIONS).count(),
          lambda: write_catalogue(wh, demo, zipf_exponent=zipf))
    interactions = stages["synthetic data"]["rows"]
    timed("sequences", lambda: interactions, lambda: run_sequences(wh, cfg.sequences))
    n_users = wh.read(schemas.USER_SEQUENCES).count()
    n_items = wh.read(schemas.ITEM_STATS).count()
    if "user embeddings" in stages_wanted or any(s.startswith("neighbors") for s in stages_wanted):
        timed("user embeddings", lambda: n_users, lambda: write_user_embeddings(wh))
    if "neighbors exact" in stages_wanted and n_users <= exact_max:
        timed("neighbors exact", lambda: n_users, lambda: run_neighbors(wh, NeighborsConfig(method="exact")))
    if "neighbors faiss" in stages_wanted:
        timed("neighbors faiss", lambda: n_users, lambda: run_neighbors(wh, NeighborsConfig(method="faiss")))
    # The whole catalogue (exact: what `score` did at every size before score.retrieval), then the index.
    for name, retrieval in (("score", "exact"), ("score ann", "ann")):
        if name in stages_wanted:
            score_cfg = dataclasses.replace(cfg.score, retrieval=retrieval)
            timed(name, lambda: n_users,
                  lambda c=score_cfg: run_score(wh, "sasrec", c, model_loader=untrained_sasrec_loader(wh)))
    return {"users_x": users_x, "items_x": items_x, "users": n_users, "items": items, "ranked_items": n_items,
            "interactions": interactions, "zipf": zipf, "stages": stages,
            "spark_master": spark.conf.get("spark.master"),
            "cpus": os.cpu_count(), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def summary(path: str) -> None:
    """Log-log slopes of time and peak worker memory against rows, per stage."""
    import numpy as np

    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    names = sorted({s for line in lines for s in line["stages"]})
    print(f"{'stage':<18}{'points':>7}{'time slope':>12}{'worker-memory slope':>21}  us/row by point")
    for name in names:
        pts = [(line["stages"][name], f"{line['users_x']:g}x{line['items_x']:g}", line["items_x"]) for line in lines
               if name in line["stages"] and "failed" not in line["stages"][name]]
        failed = [f"{line['users_x']:g}x{line['items_x']:g}" for line in lines
                  if "failed" in line["stages"].get(name, {})]
        if failed:
            print(f"{name:<18} failed at {', '.join(failed)}")
        if not pts:
            continue
        # The slopes are over the users axis (Beauty's items); other item counts are listed only.
        users_axis = [p for p, _, items_x in pts if items_x == 1]
        rows = np.log([p["rows"] for p in users_axis])
        def slope(values):
            return float(np.polyfit(rows, np.log(values), 1)[0]) if len(set(rows)) > 1 else float("nan")
        t = slope([p["seconds"] for p in users_axis])
        m = slope([max(p["memory"].get("largest worker", 0), 1) for p in users_axis])
        per_row = ", ".join(f"{label}: {p['us_per_row']:.2f}" for p, label, _ in pts)
        print(f"{name:<18}{len(pts):>7}{t:>12.2f}{m:>21.2f}  {per_row}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", nargs="*", default=["1x1", "10x1", "50x1", "10x10"],
                        help="USERSxITEMS multiples of Beauty (e.g. 10x1: 10x the users, Beauty's items)")
    parser.add_argument("--exact-max", type=int, default=300_000, help="largest user count for exact neighbours")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, help="what to time")
    parser.add_argument("--zipf", type=float, default=1.0, help="the catalogue's popularity exponent")
    parser.add_argument("--out", required=True)
    parser.add_argument("--summary", action="store_true", help="print the slopes of --out and exit")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.summary:
        summary(args.out)
        return

    from longtail.core.config import load_config
    from longtail.core.session import build_spark

    cfg = load_config(None, args.overrides)
    spark = build_spark(cfg.spark)
    peaks = Peaks()
    peaks.start()
    try:
        for point in args.points:
            users_x, items_x = (float(v) for v in point.split("x"))
            with tempfile.TemporaryDirectory(prefix="longtail-scale-") as tmp:
                line = run_point(spark, os.path.join(tmp, "warehouse"), users_x, items_x, args.exact_max, peaks,
                                 cfg, tuple(args.stages), args.zipf)
            with open(args.out, "a") as f:
                f.write(json.dumps(line) + "\n")
    finally:
        peaks.done.set()
        spark.stop()


if __name__ == "__main__":
    main()
