"""Time ``longtail neighbors`` against a single-process numpy matmul of the same size, in one process.

Inputs: ``user_embeddings`` + ``user_sequences`` of a warehouse (``--warehouse``, e.g. the one
``benchmarks/encode.py --keep DIR`` leaves: Beauty's 22,363 users), or else random unit vectors
of Beauty's size (``--users``, ``--dim``) written to a temporary warehouse.

Prints, for the exact blockwise Spark stage, the faiss method and the baseline (``X @ X.T`` in
float32 plus an argpartition top-N per row, all in this process): seconds, users/second, the
ratio to the baseline, and peak memory (resident set of this process and its Spark/Python
workers, sampled every 50 ms; for the baseline, the numpy allocations). Also recall@N of
faiss and of the baseline against the exact stage (ties count as found).

    python benchmarks/neighbors.py [--warehouse DIR] [--users N] [--dim E] [--set neighbors.KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", help="warehouse with user_embeddings and user_sequences (not modified "
                        "except similar_users)")
    parser.add_argument("--users", type=int, default=22_363)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--skip-faiss", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

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
    try:
        if args.warehouse is None:
            rng = np.random.default_rng(0)
            x = rng.standard_normal((args.users, args.dim)).astype(np.float32)
            emb = [(f"u{i}", row.tolist(), "random", "") for i, row in enumerate(x)]
            wh.write(spark.createDataFrame(emb, schemas.USER_EMBEDDINGS_SCHEMA), schemas.USER_EMBEDDINGS)
            seqs = [(f"u{i}", i, None, None, None, None) for i in range(args.users)]
            wh.write(spark.createDataFrame(seqs, schemas.USER_SEQUENCES_SCHEMA), schemas.USER_SEQUENCES)
            print(f"inputs: {args.users} random users, dim {args.dim}")
        users = (wh.read(schemas.USER_EMBEDDINGS).join(wh.read(schemas.USER_SEQUENCES).select("user_id", "user_idx"),
                                                       "user_id").select("user_id", "user_idx", "embedding"))
        frame = users.toPandas().sort_values("user_idx")
        ids = frame["user_id"].to_numpy()
        x = normalize_rows(np.stack(frame["embedding"].to_numpy()))
        n = cfg.neighbors.top_n

        exact_cfg = cfg.neighbors.__class__(**{**cfg.neighbors.__dict__, "method": "exact"})
        results = {}
        for label in ("cold", "warm"):
            with PeakRss() as mem:
                exact = run_neighbors(wh, exact_cfg)
            print(f"exact (Spark, {label}): {exact}; peak RSS: largest Python worker {mem.peak_worker / 2**20:.0f} MiB, "
                  f"JVM {mem.peak_jvm / 2**20:.0f} MiB, driver {mem.peak_driver / 2**20:.0f} MiB, "
                  f"whole tree {mem.peak / 2**20:.0f} MiB")
            results[f"exact blockwise (Spark, {label})"] = exact.seconds
        exact_rows = {r["user_id"]: (r["neighbors"], r["similarities"])
                      for r in wh.read(schemas.SIMILAR_USERS).collect()}
        ex_ids = [exact_rows[u][0] for u in ids]
        ex_sims = [exact_rows[u][1] for u in ids]
        if not args.skip_faiss:
            faiss_cfg = cfg.neighbors.__class__(**{**cfg.neighbors.__dict__, "method": "faiss"})
            with PeakRss() as fmem:
                approx = run_neighbors(wh, faiss_cfg)
            rows = {r["user_id"]: (r["neighbors"], r["similarities"]) for r in wh.read(schemas.SIMILAR_USERS).collect()}
            rec = recall_at_n(ex_ids, [rows[u][0] for u in ids], ex_sims, [rows[u][1] for u in ids])
            print(f"faiss (HNSW): {approx}; recall@{n} vs exact {rec:.4f}; peak RSS: driver "
                  f"{fmem.peak_driver / 2**20:.0f} MiB, whole tree {fmem.peak / 2**20:.0f} MiB")
            results["faiss HNSW (driver)"] = approx.seconds
            # Leave the exact result in the table.
            run_neighbors(wh, exact_cfg)

        top, sims, base_s, base_peak = numpy_baseline(x, n)
        base_rec = recall_at_n(ex_ids, [list(ids[t]) for t in top], ex_sims, sims)
        print(f"numpy baseline (X @ X.T float32 + argpartition, one process, "
              f"{os.cpu_count()} BLAS threads): {base_s:.1f}s; numpy peak {base_peak / 2**20:.0f} MiB "
              f"(the users x users matrix); recall@{n} vs exact {base_rec:.4f}")
        print()
        users_n = len(ids)
        base_rate = users_n / base_s
        for name, seconds in results.items():
            rate = users_n / seconds
            print(f"{name:28s} {seconds:7.1f}s {rate:9.0f} users/s   ratio to numpy baseline {rate / base_rate:5.2f}x")
        print(f"{'numpy matmul baseline':28s} {base_s:7.1f}s {base_rate:9.0f} users/s")
    finally:
        spark.stop()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
