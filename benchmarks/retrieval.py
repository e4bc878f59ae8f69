"""Candidate retrieval (``score.retrieval: ann``) against the exact scan: the served lists of a trained model.

    # a synthetic catalogue with planted structure, a model trained on it for a few epochs:
    python benchmarks/retrieval.py --items 200000 --users 200000 [--model sasrec] [--epochs 2] [--keep]
    # a trained model of a real warehouse (read only; scratch files go to --workdir):
    python benchmarks/retrieval.py --warehouse W --model llmesr_sasrec [--version V] [--nlist 110]
    # the index alone on synthetic vectors (no Spark, no model; the figures behind the choice of IVF):
    python benchmarks/retrieval.py --vectors --items 200000 [--nprobe 16 32 64 128 256] [--hnsw]

``--items N --users M`` writes the synthetic catalogue (``longtail.synthetic``: users who prefer
one to three of ten categories, popularity Zipf with ``--zipf``, 0.5 by default: flatter than the
demo's 1.0, so that most of N items have interactions at about M = N users; ``--locality L``: a
share L of each user's preferred-category draws near its own spot in the category, the item-level
structure a model can learn at any size, docs/scaling.md) into a scratch
warehouse under ``--workdir``, runs ``sequences`` (a ``--k-core`` of 2 by default; for an ``llmesr_*``
model it then writes ``item_embeddings`` planted with the same structure,
``longtail.synthetic.planted_item_embeddings``, ``--text-dim`` wide, and their PCA, in place of
``encode``: a million texts take hours on two cores) and trains
``--model`` (``sasrec`` by default) for ``--epochs`` epochs with the default
training config (validation on ``train.validation_users``, 2,000 here, and the exposure
calibration included). ``--warehouse W`` reads a trained model of W instead and writes nothing
into W (the scratch files, staged bundles and the sampled users, go under ``--workdir``; a
local W's files are listed before and after, ``warehouse_unchanged`` in the result).

Then, on the same ``--score-users`` users (a seeded sample of ``user_sequences``, all when there
are fewer), it runs ``score``'s library path in Spark tasks as ``score`` does (one
``ScoringBundle`` staged as a side file, the users spread over the task slots and sorted by
history length, ``ScoringBundle.top_k`` per ``score.user_batch``): once exact, once per
``--nprobe`` with the candidate index (``make_index``, ann forced whatever the catalogue's
size; ``--nlist``, ``--candidates``: ``score.ann_nlist``, ``score.candidates``). Seen items
are the histories of ``user_sequences`` (``score`` also excludes older ones from
``interactions``: the same for both methods). The served score is the default config's: the
model's exposure adjustment included (a bias column of the item matrix, indexed with it).

The last line printed is one JSON object: ``items`` (items indexed: rankable), ``users``
(scored), ``exact_core_s_per_user`` and ``ann_core_s_per_user`` (CPU seconds of the
``top_k`` calls, user vectors included, summed over the tasks and divided by the users:
``getrusage`` of each Python worker around each call, one torch/faiss thread per task;
core-seconds measured, not wall x slots, so a loaded machine slows both alike), ``speedup``
(their ratio), ``recall_at_10`` (mean over users of |ann top-10 & exact top-10| / 10),
``tail_share_exact`` / ``tail_share_ann`` (list slots holding tail items, by the warehouse's item
segments), ``peak_driver_mib`` (resident memory of this Python process while it built the
bundle and the index and ran the jobs, polled every 0.25 s; ``driver_before_mib`` before
scoring), ``peak_worker_mib`` (``ru_maxrss`` of each task's Python worker, the largest; workers
are not reused between the jobs here, so each method's figure is its own), the index
(``index_kind``, ``nlist``, ``nprobe``, ``candidates``, ``index_build_s``, ``index_mib``) and,
with several ``--nprobe``, one ``sweep`` entry each (the top-level figures are the first's).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from longtail.ranking.retrieval import CandidateIndex, build_index, tune_index
from longtail.ranking.topk import candidate_topk, chunked_topk

MIB = 2**20


# --------------------------------------------------------------------------- --vectors: the index alone


def synthetic(n_items: int, n_users: int, dim: int = 64, topics: int = 200, seed: int = 0):
    """``(items [N, dim], bias [N], users [U, dim])`` float32; row 0 is padding.

    Items: a topic centre plus noise, longer for popular items (Zipf popularity); the bias is an
    exposure adjustment's ``-0.3 ln(1 + popularity)``; users: the mean of 5 random items plus noise.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, dim))
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    rng.shuffle(popularity)
    items = centres[rng.integers(0, topics, n_items)] + 0.8 * rng.normal(size=(n_items, dim))
    items *= (0.6 + 0.4 * np.log1p(popularity * 10 * n_items) / np.log1p(10 * n_items))[:, None]
    items[0] = 0.0
    bias = -0.3 * np.log1p(popularity * 1000)
    users = items[rng.integers(1, n_items, (n_users, 5))].mean(axis=1) + 0.3 * rng.normal(size=(n_users, dim))
    return items.astype(np.float32), bias.astype(np.float32), users.astype(np.float32)


def timed(run, users: int):
    """``(result, core-ms per user)`` of one call: this process's CPU time (one thread: core time;
    a loaded machine stretches the wall clock, much less the CPU time)."""
    started = time.process_time()
    out = run()
    return out, (time.process_time() - started) * 1e3 / users


def recall(got, want) -> float:
    """Mean over rows of the share of ``want``'s items (item 0, padding, aside) that ``got`` holds."""
    shares = []
    for g, w in zip(got, want):
        w = {int(i) for i in w if i}
        shares.append(len({int(i) for i in g if i} & w) / len(w) if w else 1.0)
    return float(np.mean(shares)) if shares else float("nan")


def vectors_main(args) -> dict:
    """The index alone on synthetic vectors, one thread: core-ms per user and recall@k per ``nprobe``.

    Returns:
        The result's object (the first ``--nprobe``'s figures at the top, one ``sweep`` entry each).
    """
    import faiss

    torch.set_num_threads(1)
    items, bias, users = synthetic(args.items, args.score_users)
    # As score serves an exposure adjustment: items [v, b], users [u, 1], one dot product.
    served = torch.from_numpy(np.concatenate([items, bias[:, None]], axis=1))
    queries = torch.from_numpy(np.concatenate([users, np.ones((len(users), 1), np.float32)], axis=1))
    faiss.omp_set_num_threads(1)
    (_, want), exact_ms = timed(lambda: chunked_topk(queries, served, args.k), len(users))
    want = want.numpy()
    candidates = args.candidates or 100
    print(f"{args.items:,} items, {len(users)} users, top-{args.k} of {candidates} candidates, one thread")
    print(f"exact (chunked_topk over every item): {exact_ms:.3f} core-ms/user")
    faiss.omp_set_num_threads(os.cpu_count() or 1)  # the build runs on the driver's cores
    started = time.perf_counter()
    probes = args.nprobe or [16, 32, 64, 128, 256]
    if "auto" in probes:  # tuned as score.ann_nprobe: auto, on other users than those measured
        tune_users = synthetic(args.items, 2000 + len(users))[2][len(users):]
        index = tune_index(items, tune_users, bias=bias, nlist=args.nlist or 0, kind=args.index, candidates=candidates,
                           k=args.k)
    else:
        index = build_index(items, bias=bias, nlist=args.nlist or 0, kind=args.index)  # automatic lists and kind
    build_s = time.perf_counter() - started
    print(f"{index.describe()}: built in {build_s:.1f} s")
    faiss.omp_set_num_threads(1)
    sweep = []
    for nprobe in probes:
        nprobe = index.nprobe if nprobe == "auto" else nprobe
        probed = dataclasses.replace(index, nprobe=min(nprobe, max(index.nlist, 1)), _index=None)
        probed.search(users[:1], 1)  # deserialise outside the timing (once per worker in score)
        got, ms = timed(lambda p=probed: _ann(p, users, queries, served, candidates, args.k), len(users))
        sweep.append({"nprobe": probed.nprobe, "ann_core_s_per_user": ms / 1e3, "speedup": exact_ms / ms,
                      "recall_at_10": recall(got[:, :10], want[:, :10])})
        print(f"  nprobe {nprobe}: recall@{args.k} {recall(got, want):.4f}, {ms:.3f} core-ms/user, "
              f"{exact_ms / ms:.1f}x exact")
    if args.hnsw:
        _hnsw(faiss, served.numpy(), queries.numpy(), want, candidates, args.k)
    first = sweep[0]
    return {
        "mode": "vectors", "items": int(index.size), "users": len(users), "exact_core_s_per_user": exact_ms / 1e3,
        "ann_core_s_per_user": first["ann_core_s_per_user"], "speedup": first["speedup"],
        "recall_at_10": first["recall_at_10"], "tail_share_exact": None, "tail_share_ann": None,
        "peak_driver_mib": _rss_peak_mib(), "peak_worker_mib": None, "index_kind": index.kind,
        "nlist": index.nlist, "nprobe": first["nprobe"], "candidates": candidates, "shortlist": index.shortlist,
        "index_build_s": build_s, "index_mib": index.data.nbytes / MIB, "sweep": sweep,
        "quantizer": index.quantizer, "tuning": index.tuning,
        "core_seconds": "CPU time of this process, one thread (torch and faiss)",
    }


def _rss_peak_mib() -> float:
    """This process's peak resident memory (``ru_maxrss``, KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _ann(index: CandidateIndex, users, queries, served, c: int, k: int) -> np.ndarray:
    """The served top-``k`` via the index: candidates, then their exact scores."""
    found = torch.from_numpy(index.search(users, c))
    return candidate_topk(queries, served, found, k)[1].numpy()


def _hnsw(faiss, served: np.ndarray, queries: np.ndarray, want: np.ndarray, c: int, k: int) -> None:
    index = faiss.IndexHNSWFlat(served.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    started = time.perf_counter()
    index.add(np.ascontiguousarray(served[1:]))
    print(f"HNSW M 32: built in {time.perf_counter() - started:.1f} s")
    index.hnsw.efSearch = c
    (_, found), ms = timed(lambda: index.search(queries, c), len(queries))
    found = torch.from_numpy(np.where(found >= 0, found + 1, 0))
    got = candidate_topk(torch.from_numpy(queries), torch.from_numpy(served), found, k)[1].numpy()
    print(f"  efSearch {c}: recall@{k} {recall(got, want):.4f}, {ms:.3f} ms/user")


# --------------------------------------------------------------------------- the served lists


def synthetic_warehouse(wh, cfg, args, say) -> tuple[str, dict]:
    """Write the synthetic catalogue into ``wh``, run ``sequences`` and train ``args.model``.

    Returns:
        ``(model version, setup figures)``.
    """
    from longtail.core.config import DemoConfig
    from longtail.stages.sequences import run_sequences
    from longtail.stages.train import run_train
    from longtail.synthetic import write_catalogue

    setup: dict = {}
    started = time.perf_counter()
    catalogue = write_catalogue(wh, DemoConfig(users=args.users, items=args.items, seed=args.seed),
                                zipf_exponent=args.zipf, locality=args.locality, locality_width=args.locality_width)
    setup.update(catalogue_items=args.items, catalogue_users=args.users,
                 interactions=len(catalogue.interactions), generate_s=time.perf_counter() - started)
    say(f"synthetic catalogue: {catalogue} ({setup['generate_s']:.1f}s)")
    text = args.model.startswith("llmesr")
    items = catalogue.items[["item_id", "categories"]] if text else None  # what the planted text needs
    del catalogue
    started = time.perf_counter()
    summary = run_sequences(wh, cfg.sequences)
    setup["sequences_s"] = time.perf_counter() - started
    say(f"sequences: {str(summary).splitlines()[0]} ({setup['sequences_s']:.1f}s)")
    if text:
        started = time.perf_counter()
        explained = planted_text(wh, cfg, items, args)
        setup.update(text="planted", text_dim=args.text_dim, text_s=time.perf_counter() - started,
                     pca_explained=explained)
        say(f"planted item embeddings and their PCA ({setup['text_s']:.1f}s)")
    del items
    started = time.perf_counter()
    trained = run_train(wh, args.model, cfg.train, valid_negatives=cfg.evaluate.negatives,
                        threads=cfg.train.threads or 1, progress=lambda line: say(f"  {line}"))
    setup.update(train_s=time.perf_counter() - started, epochs=trained.epochs_run,
                 valid_ndcg10=trained.valid_ndcg10, exposure=f"{trained.exposure_adjustment} {trained.exposure_penalty:g}")
    say(f"train: {str(trained).splitlines()[0]} ({setup['train_s']:.1f}s)")
    return trained.version, setup


#: The encoder name written with planted embeddings (``item_embeddings.model``, the PCA map's key).
PLANTED_ENCODER = "synthetic-planted"


def planted_text(wh, cfg, items, args) -> float | None:
    """``item_embeddings`` and their PCA as ``longtail encode`` writes them, from
    :func:`longtail.synthetic.planted_item_embeddings` instead of an encoder (a million item
    texts take hours on two cores): the LLM-ESR models train on a catalogue whose "text" knows
    the planted item-level structure. Returns the PCA's explained variance."""
    import pandas as pd
    from longtail.core import schemas
    from longtail.stages.encode import refresh_pca
    from longtail.synthetic import planted_item_embeddings
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    vectors = planted_item_embeddings(items, dim=args.text_dim, seed=args.seed, locality_width=args.locality_width)
    frame = pd.DataFrame({"item_id": items["item_id"].to_numpy(), "embedding": list(vectors)})
    del vectors
    rows = wh.spark.createDataFrame(frame, T.StructType([
        T.StructField("item_id", T.StringType()), T.StructField("embedding", T.ArrayType(T.FloatType())),
    ])).select("item_id", "embedding", F.lit(PLANTED_ENCODER).alias("model"),
               F.lit(PLANTED_ENCODER).alias("text_hash"))
    with wh.job():
        wh.write(schemas.conform(rows, schemas.ITEM_EMBEDDINGS), schemas.ITEM_EMBEDDINGS, mode="overwrite")
        explained, _ = refresh_pca(wh, cfg.encode, PLANTED_ENCODER, args.text_dim, force=True)
    return explained


def sample_users(wh, scratch: str, n: int, seed: int):
    """A seeded sample of ``n`` rows of ``user_sequences`` (``user_id``, ``item_idxs``), written once
    under ``scratch`` (both methods read the same users, and neither pays for the warehouse read)."""
    from longtail.inference import read_user_sequences
    from pyspark.sql import functions as F

    path = os.path.join(scratch, "users.parquet")
    seqs = read_user_sequences(wh).select("user_id", "item_idxs")
    seqs.orderBy(F.xxhash64("user_id", F.lit(seed))).limit(n).write.mode("overwrite").parquet(path)
    return wh.spark.read.parquet(path)


LISTS_SCHEMA = (
    "user_id string, items array<bigint>, users bigint, load_cpu_s double, score_cpu_s double, "
    "score_wall_s double, maxrss_mib double"
)


def served_lists(users, token: str, staged, index, k: int, user_batch: int, item_chunk: int, candidates: int):
    """Each user's top-``k`` item idxs as ``score`` serves them (lazy), plus one row per task with
    its figures (``user_id`` null): users, CPU seconds loading the bundle (and index) and inside
    ``ScoringBundle.top_k``, wall seconds there, and the Python worker's peak resident memory.

    ``index``: the staged candidate index (ann) or None (exact). As ``score_users_frame``: the
    users spread over the task slots and sorted by history length within each task.
    """
    from longtail.inference import spread
    from pyspark.sql import functions as F

    figures = ["users", "load_cpu_s", "score_cpu_s", "score_wall_s", "maxrss_mib"]

    def run(frames):
        import resource

        import pandas as pd
        import torch as _torch
        from longtail.inference import worker_bundles
        from longtail.models.histories import pad_histories

        def cpu() -> float:
            used = resource.getrusage(resource.RUSAGE_SELF)
            return used.ru_utime + used.ru_stime

        begun = cpu()
        bundle = worker_bundles(token, staged)[0]  # one torch thread per task core (spark.task.cpus)
        found = index.value() if index is not None else None
        if found is not None:  # deserialise it now: loading, not scoring
            found.search(np.zeros((1, found.dim), np.float32), 1, threads=_torch.get_num_threads())
        load, score, wall, n = cpu() - begun, 0.0, 0.0, 0
        for frame in frames:
            for start in range(0, len(frame), user_batch):
                part = frame.iloc[start : start + user_batch]
                histories = pad_histories(list(part["item_idxs"]))
                before, clock = cpu(), time.perf_counter()
                _, items = bundle.top_k(histories, k, item_chunk, index=found, candidates=candidates)
                score, wall, n = score + cpu() - before, wall + time.perf_counter() - clock, n + len(part)
                yield pd.DataFrame({"user_id": part["user_id"].to_numpy(), "items": list(items.numpy()),
                                    **dict.fromkeys(figures, np.nan)})
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        yield pd.DataFrame({"user_id": [None], "items": [None], "users": [n], "load_cpu_s": [load],
                            "score_cpu_s": [score], "score_wall_s": [wall], "maxrss_mib": [peak]})

    return spread(users).sortWithinPartitions(F.size("item_idxs")).mapInPandas(run, LISTS_SCHEMA)


def run_method(spark, users, token, staged, index, k: int, score_cfg, candidates: int) -> dict:
    """One job: the lists (``user_id -> items``) and the figures of its tasks."""
    started = time.perf_counter()
    rows = served_lists(users, token, staged, index, k, score_cfg.user_batch, score_cfg.item_chunk,
                        candidates).toPandas()
    wall = time.perf_counter() - started
    tasks = rows[rows["user_id"].isna()]
    lists = rows[rows["user_id"].notna()]
    n = int(tasks["users"].sum())
    return {
        "lists": dict(zip(lists["user_id"], lists["items"])), "users": n, "wall_s": wall,
        "tasks": len(tasks), "core_s": float(tasks["score_cpu_s"].sum()),
        "core_s_per_user": float(tasks["score_cpu_s"].sum()) / max(n, 1),
        "load_core_s": float(tasks["load_cpu_s"].sum()), "score_wall_s": float(tasks["score_wall_s"].sum()),
        "peak_worker_mib": float(tasks["maxrss_mib"].max()),
    }


def tail_share(lists: dict, tail: np.ndarray) -> float:
    """Share of the list slots (item 0, padding, aside) that hold tail items."""
    items = np.concatenate([np.asarray(v, dtype=np.int64) for v in lists.values()]) if lists else np.zeros(0, int)
    items = items[items > 0]
    return float(tail[items].mean()) if len(items) else float("nan")


def compare(wh, scratch: str, model: str, version: str | None, cfg, args, peaks) -> dict:
    """Exact against ann on the same users, as ``score`` serves ``model``; the result's figures."""
    from longtail.core.config import EvaluateConfig
    from longtail.inference import (
        ScorerFactory,
        hybrid_on,
        load_catalogue,
        make_bundle,
        stage,
    )

    spark, score_cfg = wh.spark, cfg.score
    out: dict = {"driver_before_mib": _rss_mib()}
    peaks.stage = "exact"
    catalogue = load_catalogue(wh, include_new_items=True)
    factory = ScorerFactory(wh, catalogue, "all", EvaluateConfig(), popularity_penalty=score_cfg.popularity_penalty)
    hybrid = score_cfg.hybrid if hybrid_on(score_cfg.hybrid) else None
    scorer = factory.hybrid(model, version, hybrid) if hybrid is not None else factory.scorer(model, version)
    bundle = make_bundle(scorer, catalogue, hybrid)
    users = sample_users(wh, scratch, args.score_users, args.seed)
    staged = stage(scratch, [bundle])
    try:
        exact = run_method(spark, users, staged.token, staged, None, args.k, score_cfg, 0)
        out["exact_peak_driver_mib"] = _peak(peaks, "exact", "python driver")
        peaks.stage = "ann"
        started = time.perf_counter()
        index = _index_of(bundle, score_cfg, args, wh)
        build_s = time.perf_counter() - started
        sweep = [_ann_run(spark, users, staged, index, nprobe, args, score_cfg, exact, bundle.tail, scratch)
                 for nprobe in args.nprobe]
        out["ann_peak_driver_mib"] = _peak(peaks, "ann", "python driver")
    finally:
        staged.unpersist()
    first = sweep[0]
    out.update(
        model=scorer.name, model_version=scorer.version, items=int(index.size), users=exact["users"],
        exact_core_s_per_user=exact["core_s_per_user"], ann_core_s_per_user=first["ann_core_s_per_user"],
        speedup=first["speedup"], recall_at_10=first["recall_at_10"],
        tail_share_exact=tail_share(exact["lists"], bundle.tail), tail_share_ann=first["tail_share_ann"],
        peak_driver_mib=max(out["exact_peak_driver_mib"], out["ann_peak_driver_mib"]),
        peak_worker_mib=max([exact["peak_worker_mib"]] + [s["ann_peak_worker_mib"] for s in sweep]),
        exact_peak_worker_mib=exact["peak_worker_mib"], ann_peak_worker_mib=first["ann_peak_worker_mib"],
        index_kind=index.kind, nlist=index.nlist, nprobe=first["nprobe"], candidates=score_cfg.candidates,
        shortlist=index.shortlist, quantizer=index.quantizer, tuning=index.tuning,
        index_build_s=build_s, index_mib=index.data.nbytes / MIB, bundle_item_mib=bundle.items.nbytes / MIB,
        exact_wall_s=exact["wall_s"], ann_wall_s=first["ann_wall_s"], exact_load_core_s=exact["load_core_s"],
        ann_load_core_s=first["ann_load_core_s"], tasks=exact["tasks"],
        core_seconds="CPU time (getrusage) of ScoringBundle.top_k in the tasks, user vectors included",
    )
    if len(sweep) > 1:
        out["sweep"] = sweep
    return out


def _index_of(bundle, score_cfg, args, wh) -> CandidateIndex:
    """``make_index`` of the bundle as ``score`` builds it (``--index auto``) or of a forced kind; with
    ``auto`` among ``--nprobe`` tuned as ``score.ann_nprobe: auto`` tunes it (the same users), the numeric
    entries then probe its lists."""
    from longtail.inference import make_index, read_user_sequences
    from longtail.inference.users import tuning_histories

    if "auto" in args.nprobe:
        return make_index(bundle, score_cfg.ann_nlist, "auto", kind=args.index,
                          histories=tuning_histories(read_user_sequences(wh), score_cfg.ann_tune_users),
                          target_recall=score_cfg.ann_target_recall, candidates=score_cfg.candidates, k=args.k)
    return make_index(bundle, score_cfg.ann_nlist, max(args.nprobe), kind=args.index)


def _ann_run(spark, users, staged, index, nprobe: int, args, score_cfg, exact: dict, tail, scratch) -> dict:
    """One ann job at ``nprobe`` against the exact lists."""
    from longtail.inference import stage

    if nprobe == "auto":
        nprobe = index.nprobe  # the tuned setting
    probed = dataclasses.replace(index, nprobe=min(nprobe, index.nlist) if index.nlist else 0, _index=None)
    handle = stage(scratch, probed)
    try:
        ann = run_method(spark, users, staged.token, staged, handle, args.k, score_cfg, score_cfg.candidates)
    finally:
        handle.unpersist()
    ids = sorted(exact["lists"])
    return {
        "nprobe": probed.nprobe, "ann_core_s_per_user": ann["core_s_per_user"],
        "speedup": exact["core_s_per_user"] / max(ann["core_s_per_user"], 1e-12),
        "recall_at_10": recall([ann["lists"].get(u, [])[:10] for u in ids], [exact["lists"][u][:10] for u in ids]),
        "tail_share_ann": tail_share(ann["lists"], tail), "ann_peak_worker_mib": ann["peak_worker_mib"],
        "ann_wall_s": ann["wall_s"], "ann_load_core_s": ann["load_core_s"],
    }


def _rss_mib() -> float:
    from proctree import rss

    return rss(os.getpid()) / MIB


def _peak(peaks, label: str, key: str) -> float:
    return peaks.peaks.get(label, {}).get(key, 0) / MIB


def snapshot(root: str) -> dict | None:
    """``{relative path: (size, mtime_ns)}`` of every file under a local ``root``; None elsewhere."""
    if "://" in root and not root.startswith("file:"):
        return None
    base = root.removeprefix("file://").removeprefix("file:")
    found = {}
    for folder, _, names in os.walk(base):
        for name in names:
            stat = os.stat(os.path.join(folder, name))
            found[os.path.relpath(os.path.join(folder, name), base)] = (stat.st_size, stat.st_mtime_ns)
    return found


def benchmark(args, say=print) -> dict:
    """Build or open the warehouse, compare exact with ann; returns the result's object."""
    from longtail.core.config import load_config
    from longtail.core.session import build_spark
    from longtail.core.tables import Warehouse
    from scale import Peaks

    overrides = [f"train.model={args.model}", "train.validation_users=2000", f"train.epochs={args.epochs}", f"train.patience={args.epochs}",
                 f"sequences.k_core={args.k_core}"] + args.overrides
    cfg = load_config(None, overrides)
    if args.candidates:
        cfg = cfg.replace(**{"score.candidates": args.candidates})
    if args.nlist is not None:
        cfg = cfg.replace(**{"score.ann_nlist": args.nlist})
    args.nprobe = args.nprobe or [cfg.score.ann_nprobe]
    from pyspark.sql import SparkSession

    ours = SparkSession.getActiveSession() is None
    # Fresh Python workers for each job: each method's peak memory is its own (ru_maxrss).
    spark = build_spark(cfg.spark, extra_conf={"spark.python.worker.reuse": "false"})
    workdir = scratch_folder(args.workdir)
    peaks = Peaks()
    peaks.start()
    try:
        scratch = os.path.join(workdir, "scratch")
        if args.warehouse:
            before = snapshot(args.warehouse)
            wh, version, setup = Warehouse(spark, args.warehouse), args.version, {"warehouse": args.warehouse}
            result = {"mode": "warehouse", **setup, **compare(wh, scratch, args.model, version, cfg, args, peaks)}
            if before is not None:  # another job writing into W at the same time shows here too
                after = snapshot(args.warehouse)
                changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
                result.update(warehouse_unchanged=not changed, warehouse_changes=changed[:5])
        else:
            wh = Warehouse(spark, os.path.join(workdir, "warehouse"))
            version, setup = synthetic_warehouse(wh, cfg, args, say)
            result = {"mode": "synthetic", **setup, **compare(wh, scratch, args.model, version, cfg, args, peaks)}
    finally:
        peaks.done.set()
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        if ours:
            spark.stop()
    result.update(load_average=os.getloadavg()[0], cpus=os.cpu_count(),
                  finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return result


def _nprobe(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: a number of lists or auto") from None


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=200_000, help="synthetic catalogue: items")
    parser.add_argument("--users", type=int, default=200_000, help="synthetic catalogue: users")
    parser.add_argument("--warehouse", help="a trained warehouse to read (nothing is written into it)")
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--version", help="model version (default: the latest)")
    parser.add_argument("--epochs", type=int, default=2, help="synthetic: training epochs")
    parser.add_argument("--zipf", type=float, default=0.5, help="synthetic: popularity exponent (demo: 1.0)")
    parser.add_argument("--locality", type=float, default=0.0,
                        help="synthetic: share of preferred-category draws near the user's spot "
                             "(item-level structure; longtail.synthetic)")
    parser.add_argument("--locality-width", type=float, default=25.0, help="synthetic: the spread of those draws, in items")
    parser.add_argument("--text-dim", type=int, default=128,
                        help="synthetic, llmesr_* models: width of the planted item embeddings (their PCA: encode.pca_dim)")
    parser.add_argument("--k-core", type=int, default=2, help="synthetic: sequences.k_core")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--score-users", type=int, default=10_000, help="users scored by both methods (a sample)")
    parser.add_argument("--k", type=int, default=10, help="list length (recall and tail share at 10)")
    parser.add_argument("--nlist", type=int, help="score.ann_nlist (default: the config's, 0 = automatic)")
    parser.add_argument("--nprobe", type=_nprobe, nargs="+",
                        help="score.ann_nprobe, one ann run each: a number, or auto (tuned as score tunes it)")
    parser.add_argument("--candidates", type=int, help="score.candidates")
    parser.add_argument("--workdir", help="parent of the scratch folder (default: the system's temp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--vectors", action="store_true", help="the index alone on synthetic vectors")
    parser.add_argument("--hnsw", action="store_true", help="--vectors: add faiss HNSW")
    parser.add_argument("--index", default="auto", choices=["auto", "flat", "ivf", "ivf_pq"],
                        help="index kind (auto: as score builds it; ivf, ivf_pq: forced)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser.parse_args(argv)


def scratch_folder(parent: str | None) -> str:
    """A new folder for this run's scratch files under ``parent`` (created when missing; the
    system's temp folder when None)."""
    if parent:
        os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix="longtail-retrieval-", dir=parent)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.vectors:
        if args.score_users == 10_000:
            args.score_users = 500
        print(json.dumps(vectors_main(args)), flush=True)
        return
    result = benchmark(args, say=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
