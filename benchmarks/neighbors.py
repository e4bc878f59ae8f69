"""Time ``longtail neighbors`` against a single-process numpy matmul of the same size, in one process.

Inputs: ``user_embeddings`` + ``user_sequences`` of a warehouse (``--warehouse``, e.g. the one
``benchmarks/encode.py --keep DIR`` leaves: Beauty's 22,363 users), or else random unit vectors
of Beauty's size (``--users``, ``--dim``) written to a temporary warehouse; ``--topics T`` plants
structure in them instead (T topics of 10 subtopics each: a user is its subtopic's centre plus
noise, so that users have near neighbours, as text embeddings do; random vectors have none and
no index can find them faster than a scan).

``--methods`` picks what runs after the exact stage (``faiss``, ``ivf``; default ``faiss``);
``--skip-baseline`` leaves out the numpy matmul (users x users floats in memory). The ivf run
uses the ``neighbors.ivf_*`` keys (``--set neighbors.ivf_probe=32``). The last line printed is one
JSON object: users, dim, exact and ivf users/s and core-seconds per user, their ratio, ivf's
recall@N against exact, lists, probe, the driver's peak RSS during ivf, the load average.

Prints, for the exact blockwise Spark stage, the faiss method and the baseline (``X @ X.T`` in
float32 plus an argpartition top-N per row, all in this process): seconds, users/second, the
ratio to the baseline, and peak memory (resident set of this process and its Spark/Python
workers, sampled every 50 ms; for the baseline, the numpy allocations). Also recall@N of
faiss and of the baseline against the exact stage (ties count as found).

    python benchmarks/neighbors.py [--warehouse DIR] [--users N] [--dim E] [--topics T]
        [--methods faiss ivf] [--skip-baseline] [--set neighbors.KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time

import numpy as np


class PeakRss:
    """Peak of the summed resident memory of this process tree (Linux /proc), sampled in a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak, self.peak_worker, self.peak_jvm, self.peak_driver = interval, 0, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            parents, rss, cmd = {}, {}, {}
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        parents[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
                    with open(f"/proc/{pid}/statm") as f:
                        rss[int(pid)] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd[int(pid)] = f.read()
                except (OSError, IndexError, ValueError):
                    continue
            tree, total, worker = {me}, 0, 0
            changed = True
            while changed:
                changed = False
                for pid, ppid in parents.items():
                    if ppid in tree and pid not in tree:
                        tree.add(pid)
                        changed = True
            jvm = 0
            for pid in tree:
                total += rss.get(pid, 0)
                line = cmd.get(pid, b"")
                if b"pyspark.daemon" in line:  # the daemon and the Python workers it forks
                    worker = max(worker, rss.get(pid, 0))
                elif b"java" in line.split(b"\0")[0]:
                    jvm += rss.get(pid, 0)
            self.peak = max(self.peak, total)
            self.peak_worker = max(self.peak_worker, worker)
            self.peak_jvm = max(self.peak_jvm, jvm)
            self.peak_driver = max(self.peak_driver, rss.get(me, 0))
            self._stop.wait(self.interval)


def numpy_baseline(x: np.ndarray, n: int):
    """Whole similarity matrix in one process, then the top n per row (self excluded)."""
    import tracemalloc

    tracemalloc.start()
    start = time.perf_counter()
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    part = np.argpartition(s, s.shape[1] - n, axis=1)[:, -n:]
    vals = np.take_along_axis(s, part, 1)
    order = np.argsort(-vals, axis=1, kind="stable")
    top = np.take_along_axis(part, order, 1)
    sims = np.take_along_axis(vals, order, 1)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return top, sims, seconds, peak


def recall_at_n(exact_ids, approx_ids, exact_sims=None, approx_sims=None, tol: float = 1e-5) -> float:
    """Mean over users of the share of the exact top-N the approximate search found.

    Rows are lists of neighbour ids, best first (None = missing). With similarities given, an
    approximate neighbour whose similarity is at least the exact N-th similarity (minus
    ``tol``) counts as found even when it is another member of a group of tied users.
    """
    hits = total = 0
    for row, (e, a) in enumerate(zip(exact_ids, approx_ids)):
        es = [v for v in e if v is not None]
        total += len(es)
        if exact_sims is not None and approx_sims is not None and es:
            cut = float(exact_sims[row][len(es) - 1]) - tol
            good = sum(1 for v, s in zip(a, approx_sims[row]) if v is not None and float(s) >= cut)
            hits += min(good, len(es))
        else:
            hits += len(set(es) & {v for v in a if v is not None})
    return hits / total if total else 1.0


def planted_users(users: int, dim: int, topics: int, seed: int = 0) -> np.ndarray:
    """``[users, dim]`` float32: topic centres, 10 subtopics around each, users around those."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, dim))
    subtopics = np.repeat(centres, 10, axis=0) + 0.6 * rng.standard_normal((topics * 10, dim))
    return (subtopics[rng.integers(0, topics * 10, users)] + 0.4 * rng.standard_normal((users, dim))).astype(np.float32)


def write_inputs(spark, wh, x: np.ndarray) -> None:
    """``user_embeddings`` and ``user_sequences`` of users ``u0..`` (``user_idx`` = row) from ``x``."""
    import pandas as pd

    from longtail.core import schemas

    emb = pd.DataFrame({"user_id": [f"u{i}" for i in range(len(x))], "embedding": list(x),
                        "model": "synthetic", "text_hash": ""})
    wh.write(spark.createDataFrame(emb, schemas.USER_EMBEDDINGS_SCHEMA), schemas.USER_EMBEDDINGS)
    seqs = [(f"u{i}", i, None, None, None, None) for i in range(len(x))]
    wh.write(spark.createDataFrame(seqs, schemas.USER_SEQUENCES_SCHEMA), schemas.USER_SEQUENCES)


def similar(wh) -> dict:
    from longtail.core import schemas

    return {r["user_id"]: (r["neighbors"], r["similarities"]) for r in wh.read(schemas.SIMILAR_USERS).collect()}


def with_method(cfg, method: str):
    return cfg.neighbors.__class__(**{**cfg.neighbors.__dict__, "method": method})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", help="warehouse with user_embeddings and user_sequences (not modified "
                        "except similar_users)")
    parser.add_argument("--users", type=int, default=22_363)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--topics", type=int, default=0, help="plant this many topics (0: random vectors)")
    parser.add_argument("--methods", nargs="*", default=["faiss"], choices=["faiss", "ivf"])
    parser.add_argument("--skip-faiss", action="store_true", help="the same as leaving faiss out of --methods")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--exact-runs", type=int, default=2, help="exact runs (cold, warm); the last one is compared")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    methods = [m for m in args.methods if not (args.skip_faiss and m == "faiss")]

    from longtail.core import schemas
    from longtail.core.config import load_config
    from longtail.core.session import build_spark
    from longtail.core.tables import Warehouse
    from longtail.stages.neighbors import normalize_rows, run_neighbors

    tmp = None
    root = args.warehouse
    if root is None:
        tmp = tempfile.mkdtemp(prefix="bench-neighbors-")
        root = os.path.join(tmp, "warehouse")
    cfg = load_config(None, [f"warehouse={root}", *args.overrides])
    spark = build_spark(cfg.spark)
    wh = Warehouse(spark, cfg.warehouse, engine=cfg.delta.engine)
    summary = {"load_average_1m_at_start": os.getloadavg()[0], "cores": os.cpu_count()}
    try:
        if args.warehouse is None:
            rng = np.random.default_rng(0)
            x = (planted_users(args.users, args.dim, args.topics) if args.topics
                 else rng.standard_normal((args.users, args.dim)).astype(np.float32))
            write_inputs(spark, wh, x)
            print(f"inputs: {args.users} {'planted (' + str(args.topics) + ' topics)' if args.topics else 'random'} "
                  f"users, dim {args.dim}")
        users = (wh.read(schemas.USER_EMBEDDINGS).join(wh.read(schemas.USER_SEQUENCES).select("user_id", "user_idx"),
                                                       "user_id").select("user_id", "user_idx", "embedding"))
        frame = users.toPandas().sort_values("user_idx")
        ids = frame["user_id"].to_numpy()
        x = normalize_rows(np.stack(frame["embedding"].to_numpy()))
        n = cfg.neighbors.top_n
        summary.update(users=len(ids), dim=int(x.shape[1]), top_n=n)

        results = {}
        for label in ("cold", "warm")[: max(1, args.exact_runs)]:
            with PeakRss() as mem:
                exact = run_neighbors(wh, with_method(cfg, "exact"))
            print(f"exact (Spark, {label}): {exact}; peak RSS: largest Python worker {mem.peak_worker / 2**20:.0f} MiB, "
                  f"JVM {mem.peak_jvm / 2**20:.0f} MiB, driver {mem.peak_driver / 2**20:.0f} MiB, "
                  f"whole tree {mem.peak / 2**20:.0f} MiB")
            results[f"exact blockwise (Spark, {label})"] = exact.seconds
        summary["exact_seconds"] = exact.seconds
        exact_rows = similar(wh)
        ex_ids = [exact_rows[u][0] for u in ids]
        ex_sims = [exact_rows[u][1] for u in ids]
        for method in methods:
            with PeakRss() as amem:
                approx = run_neighbors(wh, with_method(cfg, method))
            rows = similar(wh)
            rec = recall_at_n(ex_ids, [rows[u][0] for u in ids], ex_sims, [rows[u][1] for u in ids])
            print(f"{method}: {approx}; recall@{n} vs exact {rec:.4f}; peak RSS: driver "
                  f"{amem.peak_driver / 2**20:.0f} MiB, largest Python worker {amem.peak_worker / 2**20:.0f} MiB, "
                  f"whole tree {amem.peak / 2**20:.0f} MiB")
            results[f"{method} ({'driver' if method == 'faiss' else 'Spark'})"] = approx.seconds
            if method == "ivf":
                summary.update(ivf_seconds=approx.seconds, ivf_lists=approx.blocks, ivf_probe=approx.probe,
                               ivf_recall=round(rec, 4), ivf_peak_driver_mib=round(amem.peak_driver / 2**20),
                               ivf_peak_worker_mib=round(amem.peak_worker / 2**20))
        if methods:
            run_neighbors(wh, with_method(cfg, "exact"))  # leave the exact result in the table

        base_rate = None
        if not args.skip_baseline:
            top, sims, base_s, base_peak = numpy_baseline(x, n)
            base_rec = recall_at_n(ex_ids, [list(ids[t]) for t in top], ex_sims, sims)
            print(f"numpy baseline (X @ X.T float32 + argpartition, one process, "
                  f"{os.cpu_count()} BLAS threads): {base_s:.1f}s; numpy peak {base_peak / 2**20:.0f} MiB "
                  f"(the users x users matrix); recall@{n} vs exact {base_rec:.4f}")
            base_rate = len(ids) / base_s
        print()
        for name, seconds in results.items():
            rate = len(ids) / seconds
            ratio = f"   ratio to numpy baseline {rate / base_rate:5.2f}x" if base_rate else ""
            print(f"{name:28s} {seconds:7.1f}s {rate:9.0f} users/s{ratio}")
        if base_rate:
            print(f"{'numpy matmul baseline':28s} {len(ids) / base_rate:7.1f}s {base_rate:9.0f} users/s")
        cores = os.cpu_count() or 1
        for key in ("exact", "ivf"):
            if f"{key}_seconds" in summary:
                summary[f"{key}_users_per_s"] = round(len(ids) / summary[f"{key}_seconds"], 1)
                summary[f"{key}_core_ms_per_user"] = round(1e3 * cores * summary[f"{key}_seconds"] / len(ids), 3)
        if "ivf_seconds" in summary:
            summary["ivf_speedup"] = round(summary["exact_seconds"] / summary["ivf_seconds"], 2)
        summary["load_average_1m_at_end"] = os.getloadavg()[0]
        print(json.dumps(summary))
    finally:
        spark.stop()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
