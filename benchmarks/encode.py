"""Time the encoding UDF against naive encoding baselines in one process, and ``longtail encode`` on Beauty.

1. Ratio (same texts, same model, same machine, measured back to back): a random sample of
   Beauty's item texts (``encode.item_template`` over ``items.jsonl.gz``) is encoded
   - by the UDF path: the Spark iterator pandas UDF of ``longtail.encoders`` over a DataFrame
     of the texts (2 task slots locally; run twice: cold = worker start + model load, then warm);
   - by naive baselines on the driver (torch using all cores): one text at a time, and batches
     padded to ``max_tokens``; plus the UDF's own batching without Spark, for reference.
   Baselines run before and after the UDF and are averaged (load drifts on a shared machine).
   Prints items/second of each and the ratio UDF path / baseline (target >= 3 on CPU).
2. ``--full``: the whole stage on Beauty: ``ingest --format files`` + ``sequences`` into a fresh
   warehouse (or ``--warehouse DIR`` that has the inputs), ``run_encode`` (all 12,101 items and
   22,363 users, PCA), a rerun with nothing changed, a rerun after changing ``--changed`` titles.

3. ``--options --warehouse W`` (W after ``sequences`` and ``encode``): the CPU options side by
   side, in one process with the same torch threads, against the float32 path measured before and
   after (averaged): bfloat16 (``encode.precision``), larger batches, int8 dynamic quantisation of
   the Linear layers (torch.ao, per channel; measured here only), a shorter user text
   (``max_tokens`` 64 for users), and a user vector built from the user's item vectors (the mean
   of the stored embeddings of the same recent items the user text names) instead of a second
   pass through the encoder. Each prints items/s and users/s, the ratio to float32, the mean
   cosine of its embeddings to the float32 ones, and recall@10 of the similar users it finds
   among the sampled users against the float32 similar users.

4. ``--profile --warehouse W``: where the time goes. torch.profiler's self CPU seconds of float32 and
   bfloat16 on the same sampled texts, by op class (linear layers, attention, other), each class's
   ratio, and the whole-model ratio bfloat16 could reach if every op but attention ran at the linear
   layers' ratio, or at the ratio of one large Linear (the most the matrix units give here, timed in
   the same run): the ceiling that precision alone sets on this CPU.

    python benchmarks/encode.py [--sample N] [--full] [--keep DIR] [--set encode.KEY=VALUE ...]
    python benchmarks/encode.py --options --warehouse W [--sample N] [--users N] [--threads T]
    python benchmarks/encode.py --profile --warehouse W [--sample N] [--users N] [--threads T]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from proctree import cpu_seconds, descendants

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon_beauty_2014"


def prepare_inputs(spark, wh, data: Path, cfg) -> str:
    """Beauty's items, user_sequences and item_stats through the real ingest and sequences stages."""
    from longtail.stages.ingest import run_ingest
    from longtail.stages.sequences import run_sequences

    run_ingest(spark, wh, "files", str(data / "interactions.csv.gz"), str(data / "items.jsonl.gz"), None, cfg.ingest)
    summary = run_sequences(wh, cfg.sequences)
    return str(summary).splitlines()[0]


def sample_texts(spark, data: Path, template: str, n: int) -> list[str]:
    """``n`` random non-empty item texts of Beauty, built by the stage's own template code."""
    from longtail.core import schemas
    from longtail.stages.encode import item_texts

    rows = []
    with gzip.open(data / "items.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            rows.append((d["item_id"], d.get("title"), d.get("description"), d.get("categories"), d.get("brand"), None))
    df = spark.createDataFrame(rows, schemas.ITEMS_SCHEMA)
    texts = [r["text"] for r in item_texts(df, template).collect() if r["text"]]
    random.Random(0).shuffle(texts)
    return texts[:n]


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process's descendants (the JVM, the Python workers)."""
    return sum(cpu_seconds(pid) for pid in descendants(os.getpid()))


def udf_run(spark, texts: list[str], enc_cfg) -> tuple[float, float]:
    """(wall seconds, CPU seconds of JVM + Python workers) for the Spark UDF to embed ``texts``."""
    from longtail.encoders import text as encoders
    from pyspark.sql import functions as F

    info = encoders.read_model_info(encoders.resolve_model_path(enc_cfg.model), enc_cfg.pooling)
    spec = encoders.EncodeSpec(path=info.path, pooling=info.pooling, normalize=enc_cfg.normalize,
                               batch_size=enc_cfg.batch_size, max_tokens=enc_cfg.max_tokens, device=enc_cfg.device,
                               precision=enc_cfg.precision)
    slots = spark.sparkContext.defaultParallelism
    df = spark.createDataFrame([(t,) for t in texts], "text string").repartition(slots).localCheckpoint()
    out = df.sortWithinPartitions(F.length("text")).select(encoders.embed_texts_udf(spec)("text").alias("e"))
    cpu, start = tree_cpu_seconds(), time.perf_counter()
    out.write.format("noop").mode("overwrite").save()
    return time.perf_counter() - start, tree_cpu_seconds() - cpu


def baselines(texts: list[str], enc_cfg, one_by_one: int) -> dict[str, tuple[float, float]]:
    """(wall, CPU) items/second on the driver with one torch thread: one text at a time (first
    ``one_by_one`` texts), batches padded to max_tokens, and the UDF's batching without Spark."""
    import torch
    from longtail.encoders import text as encoders

    # One thread, like each Spark task (spark.task.cpus = 1): per-core figures, and no OpenMP
    # barrier stalls when other work shares the cores.
    torch.set_num_threads(1)
    path = encoders.resolve_model_path(enc_cfg.model)
    enc = encoders.get_encoder(path, "cpu", encoders.dtype_for("cpu", enc_cfg.precision))
    tok, model = enc.tokenizer, enc.model

    def timed(name, count, fn):
        cpu, wall = time.process_time(), time.perf_counter()
        fn()
        rates[name] = (count / (time.perf_counter() - wall), count / (time.process_time() - cpu))

    def one_at_a_time():
        for t in texts[:one_by_one]:
            model(**tok([t], return_tensors="pt", truncation=True, max_length=enc_cfg.max_tokens))

    def padded():
        for i in range(0, len(texts), enc_cfg.batch_size):
            model(**tok(texts[i : i + enc_cfg.batch_size], return_tensors="pt", truncation=True,
                        max_length=enc_cfg.max_tokens, padding="max_length"))

    rates: dict[str, tuple[float, float]] = {}
    with torch.inference_mode():
        timed("one text at a time", min(one_by_one, len(texts)), one_at_a_time)
        timed("batches padded to max_tokens", len(texts), padded)
    timed("sorted batches, no Spark (reference)", len(texts),
          lambda: enc.encode(texts, batch_size=enc_cfg.batch_size, max_tokens=enc_cfg.max_tokens))
    return rates


def ratio(spark, cfg, data: Path, n: int, one_by_one: int) -> None:
    from longtail.encoders import text as encoders

    texts = sample_texts(spark, data, cfg.encode.item_template, n)
    enc = encoders.get_encoder(encoders.resolve_model_path(cfg.encode.model), "cpu")
    tokens = [len(x) for x in enc.tokenize(texts, cfg.encode.max_tokens)]
    print(f"{len(texts)} item texts, tokens per text: mean {sum(tokens) / len(tokens):.1f}, max {max(tokens)} "
          f"(max_tokens {cfg.encode.max_tokens}, batch_size {cfg.encode.batch_size})")
    slots = spark.sparkContext.defaultParallelism
    before = baselines(texts, cfg.encode, one_by_one)
    cold_wall, cold_cpu = udf_run(spark, texts, cfg.encode)
    warm_wall, warm_cpu = udf_run(spark, texts, cfg.encode)
    after = baselines(texts, cfg.encode, one_by_one)
    n = len(texts)
    udf_wall, udf_cpu = n / warm_wall, n / warm_cpu
    print(f"UDF path (Spark, {slots} task slots x 1 torch thread): warm {udf_wall:.1f} items/s wall, "
          f"{udf_cpu:.1f} items per CPU-second (JVM + Python workers); cold (worker start + model load) "
          f"{n / cold_wall:.1f} items/s wall, {n / cold_cpu:.1f} per CPU-second")
    print("Ratios: per CPU-second (robust to other load on the machine), and wall-clock against the")
    print(f"baseline run on {slots} cores with perfect scaling (wall rate of one thread x {slots}).")
    for name in before:
        wall = (before[name][0] + after[name][0]) / 2
        cpu = (before[name][1] + after[name][1]) / 2
        print(f"baseline {name:38s} {cpu:7.1f} items/CPU-s ({wall:6.1f} items/s wall, 1 thread)"
              f"   UDF / baseline: {udf_cpu / cpu:5.2f}x per CPU-second, {udf_wall / (wall * slots):5.2f}x wall")


def option_inputs(spark, wh, cfg, n_items: int, n_users: int):
    """``(item texts, user texts, recent item ids per user)``: ``n_items`` random item texts and
    ``n_users`` users (a fixed hash order) with their texts built by the stage's own code."""
    from longtail.core import schemas
    from longtail.stages.encode import item_texts, user_texts
    from pyspark.sql import functions as F

    items = wh.read(schemas.ITEMS)
    texts = [r["text"] for r in item_texts(items, cfg.encode.item_template).orderBy(F.xxhash64("item_id"))
             .limit(n_items).collect() if r["text"]]
    seqs = wh.read(schemas.USER_SEQUENCES).orderBy(F.xxhash64("user_id")).limit(n_users)
    users = user_texts(seqs, wh.read(schemas.ITEM_STATS), items, cfg.encode)
    n = cfg.encode.user_history_items
    train = F.col("train_item_idxs")
    # As the stage's user text: the last n training items (a negative slice start would give
    # shorter histories nothing).
    recent = (seqs.select("user_id", F.slice(train, F.greatest(F.size(train) - F.lit(n - 1), F.lit(1)), F.lit(n))
                          .alias("recent"))
              .select("user_id", F.posexplode("recent").alias("pos", "item_idx"))
              .join(wh.read(schemas.ITEM_STATS).select("item_idx", "item_id"), "item_idx")
              .groupBy("user_id").agg(F.collect_list("item_id").alias("recent")))
    rows = users.join(recent, "user_id", "left").orderBy("user_id").collect()
    return texts, [r["text"] for r in rows], [list(r["recent"] or []) for r in rows]


def similar_recall(reference, candidate, k: int = 10) -> float:
    """Mean share of each user's top-``k`` cosine neighbours under ``reference`` (itself excluded)
    that ``candidate`` also ranks in its top ``k``."""
    import numpy as np

    def top(x):
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sims = x @ x.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1)[:, :k]

    a, b = top(reference), top(candidate)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))


def mean_cosine(a, b) -> float:
    import numpy as np

    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    keep = (na > 0) & (nb > 0)
    return float(np.mean((a[keep] * b[keep]).sum(1) / (na[keep] * nb[keep])))


def quantized_int8(model):
    """``model`` with its Linear layers dynamically quantised to int8 (per-channel weights)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's quantised tensor types carry a deprecation notice
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig})


def options_study(spark, wh, cfg, n_items: int, n_users: int, threads: int) -> None:
    """The CPU encoding options side by side (module docstring, point 3)."""
    import numpy as np
    import torch
    from longtail.encoders import text as encoders

    torch.set_num_threads(threads)
    e = cfg.encode
    items, users, recent = option_inputs(spark, wh, cfg, n_items, n_users)
    path = encoders.resolve_model_path(e.model)
    fp32, bf16 = encoders.get_encoder(path, "cpu", "float32"), encoders.get_encoder(path, "cpu", "bfloat16")
    int8 = encoders.TextEncoder(str(path), "cpu", "float32")
    int8.model = quantized_int8(int8.model)

    def timed(fn, texts):
        start = time.perf_counter()
        out = fn(texts)
        return out, len(texts) / (time.perf_counter() - start)

    for enc in (fp32, bf16, int8):  # one-time kernel set-up (oneDNN, quantised kernels) before any timing
        enc.encode(items[:64] + users[:64], e.batch_size, e.max_tokens)

    def run(enc, user_tokens=e.max_tokens, batch=e.batch_size):
        item_vecs, item_rate = timed(lambda t: enc.encode(t, batch, e.max_tokens), items)
        user_vecs, user_rate = timed(lambda t: enc.encode(t, batch, user_tokens, truncate_left=True), users)
        return item_vecs, item_rate, user_vecs, user_rate

    before = run(fp32)
    options = {"bfloat16": run(bf16), "bfloat16, batch 128": run(bf16, batch=128),
               "bfloat16, user text 64 tokens": run(bf16, 64), "float32, batch 128": run(fp32, batch=128),
               "int8 dynamic (per channel)": run(int8), "float32, user text 64 tokens": run(fp32, 64)}
    after = run(fp32)
    ref_items, ref_users = before[0], before[2]
    item_rate, user_rate = (before[1] + after[1]) / 2, (before[3] + after[3]) / 2

    # A user vector from item vectors: the mean of the float32 embeddings of the recent items.
    start = time.perf_counter()
    item_ids = sorted({i for r in recent for i in r})
    from longtail.core import schemas
    from pyspark.sql import functions as F

    emb = {r["item_id"]: np.asarray(r["embedding"], dtype=np.float32) for r in
           wh.read(schemas.ITEM_EMBEDDINGS).where(F.col("item_id").isin(item_ids)).collect()}
    pooled = np.stack([np.mean([emb[i] for i in r if i in emb], axis=0) if any(i in emb for i in r)
                       else np.zeros(ref_users.shape[1], dtype=np.float32) for r in recent])
    pooled_rate = len(recent) / (time.perf_counter() - start)
    options["user from item vectors (item_embeddings)"] = (ref_items, None, pooled, pooled_rate)

    print(f"{len(items)} item texts, {len(users)} user texts, {threads} torch threads, batch {e.batch_size}, "
          f"max_tokens {e.max_tokens}; float32: {item_rate:.1f} items/s, {user_rate:.1f} users/s "
          f"(before {before[1]:.1f}/{before[3]:.1f}, after {after[1]:.1f}/{after[3]:.1f})")
    print(f"{'option':44s} {'items/s':>8s} {'ratio':>6s} {'users/s':>9s} {'ratio':>7s} {'item cos':>9s} "
          f"{'user cos':>9s} {'similar-user recall@10':>23s}")
    for name, (iv, ir, uv, ur) in options.items():
        irs = f"{ir:8.1f} {ir / item_rate:5.2f}x" if ir else f"{'-':>8s} {'-':>6s}"
        print(f"{name:44s} {irs} {ur:9.1f} {ur / user_rate:6.2f}x {mean_cosine(iv, ref_items):9.4f} "
              f"{mean_cosine(uv, ref_users):9.4f} {similar_recall(ref_users, uv):23.3f}")


# Profiler op names by what they compute; everything else (GELU, layer norm, adds, copies) is "other".
OP_CLASSES = {
    "linear": ("aten::addmm", "aten::mm", "aten::matmul", "aten::linear"),
    "attention": ("aten::_scaled_dot_product", "aten::scaled_dot_product", "aten::bmm", "aten::baddbmm",
                  "aten::_softmax", "aten::softmax"),
}


def op_class(name: str) -> str:
    """``linear`` | ``attention`` | ``other`` for a torch profiler op name."""
    for cls, prefixes in OP_CLASSES.items():
        if name.startswith(prefixes):
            return cls
    return "other"


def seconds_by_class(ops) -> dict[str, float]:
    """Self CPU seconds per op class from ``(name, self_cpu_microseconds)`` pairs."""
    out = dict.fromkeys([*OP_CLASSES, "other"], 0.0)
    for name, micros in ops:
        out[op_class(name)] += micros / 1e6
    return out


def ratio_bound(fp32: dict[str, float], fast: dict[str, float], gemm: float | None = None) -> float:
    """The whole-model speed-up if every op but attention ran ``gemm`` times faster than in float32
    (default: the linear layers' own measured ratio) and attention as measured: float32 seconds
    over the seconds that would leave."""
    gemm = gemm or fp32["linear"] / fast["linear"]
    left = (fp32["linear"] + fp32["other"]) / gemm + fast["attention"]
    return sum(fp32.values()) / left


def large_gemm_ratio(rows: int = 64 * 96, repeats: int = 20) -> float:
    """bfloat16 over float32 speed of one large Linear (``rows`` x 384 -> 1536, MiniLM's widest):
    the most the CPU's matrix units give a BERT layer at this size."""
    import torch

    x = torch.randn(rows, 384)
    layer = torch.nn.Linear(384, 1536)
    seconds = {}
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            lx, xx = layer.to(dtype), x.to(dtype)
            lx(xx)
            start = time.perf_counter()
            for _ in range(repeats):
                lx(xx)
            seconds[dtype] = time.perf_counter() - start
    return seconds[torch.float32] / seconds[torch.bfloat16]


PROFILE_ROUNDS = 2


def profile_classes(enc, ids, batch: int, rounds: int = PROFILE_ROUNDS) -> dict[str, float]:
    """Self CPU seconds per op class of ``enc`` embedding the tokenised ``ids`` (best of ``rounds``)."""
    from torch.profiler import ProfilerActivity, profile

    best = None
    for _ in range(rounds):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            enc.encode_ids(ids, batch, enc.default_pooling, True)
        got = seconds_by_class((e.key, e.self_cpu_time_total) for e in prof.key_averages())
        best = got if best is None or sum(got.values()) < sum(best.values()) else best
    return best


def profile_study(spark, wh, cfg, n_items: int, n_users: int, threads: int) -> None:
    """Where float32 and bfloat16 spend their time, by op class, and the speed-up bound it implies."""
    import torch
    from longtail.encoders import text as encoders

    torch.set_num_threads(threads)
    e = cfg.encode
    items, users, _ = option_inputs(spark, wh, cfg, n_items, n_users)
    path = encoders.resolve_model_path(e.model)
    gemm = large_gemm_ratio()
    print(f"{len(items)} item texts, {len(users)} user texts, {threads} torch threads, batch {e.batch_size}; "
          f"self CPU seconds by op class (torch.profiler, best of {PROFILE_ROUNDS}); "
          f"one large Linear: bfloat16 {gemm:.2f}x")
    print(f"{'texts':6s} {'class':10s} {'float32 s':>10s} {'bfloat16 s':>11s} {'ratio':>6s} {'bf16 share':>11s}")
    fp32, bf16 = encoders.get_encoder(path, "cpu", "float32"), encoders.get_encoder(path, "cpu", "bfloat16")
    for kind, texts, left in (("items", items, False), ("users", users, True)):
        ids = fp32.tokenize(texts, e.max_tokens, truncate_left=left)  # one tokenizer for both dtypes
        for enc in (fp32, bf16):  # one-time kernel set-up before any timing
            enc.encode_ids(ids[: e.batch_size], e.batch_size, enc.default_pooling, True)
        f, b = (profile_classes(enc, ids, e.batch_size) for enc in (fp32, bf16))
        f_rows, b_rows = {**f, "total": sum(f.values())}, {**b, "total": sum(b.values())}
        for cls, fs in f_rows.items():
            bs = b_rows[cls]
            print(f"{kind:6s} {cls:10s} {fs:10.2f} {bs:11.2f} {fs / bs:5.2f}x {bs / b_rows['total']:10.0%}")
        print(f"{kind:6s} bound if all but attention ran at the linear layers' {f['linear'] / b['linear']:.2f}x: "
              f"{ratio_bound(f, b):.2f}x; at one large Linear's {gemm:.2f}x: {ratio_bound(f, b, gemm):.2f}x")


def full_run(spark, wh, cfg, args) -> None:
    from longtail.core import schemas
    from longtail.stages.encode import run_encode
    from pyspark.sql import functions as F

    if args.warehouse is None:
        start = time.perf_counter()
        what = prepare_inputs(spark, wh, args.data, cfg)
        print(f"inputs (ingest + sequences): {time.perf_counter() - start:.1f}s  {what}")
    first = run_encode(wh, cfg.encode)
    print(f"first run : {first}")
    again = run_encode(wh, cfg.encode)
    print(f"rerun     : {again}")
    items = wh.read(schemas.ITEMS)
    ids = [r["item_id"] for r in items.where(F.col("title").isNotNull()).select("item_id")
           .orderBy("item_id").limit(args.changed).collect()]
    changed = items.withColumn(
        "title", F.when(F.col("item_id").isin(ids), F.concat("title", F.lit(" (new formula)"))).otherwise(F.col("title"))
    ).localCheckpoint()
    wh.write(changed, schemas.ITEMS)
    third = run_encode(wh, cfg.encode)
    print(f"{args.changed} titles changed: {third}")
    print(f"stage on Beauty: items {first.items.encoded / first.items.seconds:.1f}/s, users "
          f"{first.users.encoded / first.users.seconds:.1f}/s (incl. reads, worker start, model load, writes); "
          f"rerun with nothing changed {again.seconds:.1f}s; {args.changed} changed titles: "
          f"{third.items.encoded} items, {third.users.encoded} users re-encoded in {third.seconds:.1f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sample", type=int, default=2000, help="item texts for the ratio")
    parser.add_argument("--one-by-one", type=int, default=300, help="texts for the one-at-a-time baseline")
    parser.add_argument("--full", action="store_true", help="also run the whole stage on Beauty")
    parser.add_argument("--warehouse", help="(--full) use this prepared warehouse instead of a temporary one")
    parser.add_argument("--keep", help="(--full) copy the temporary warehouse here (for benchmarks/neighbors.py)")
    parser.add_argument("--changed", type=int, default=10, help="(--full) titles changed before the last rerun")
    parser.add_argument("--options", action="store_true", help="the CPU options side by side (needs --warehouse)")
    parser.add_argument("--profile", action="store_true",
                        help="time by op class, float32 vs bfloat16, and the bound it sets (needs --warehouse)")
    parser.add_argument("--users", type=int, default=1000, help="(--options, --profile) sampled users")
    parser.add_argument("--threads", type=int, default=2, help="(--options, --profile) torch threads")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if (args.options or args.profile) and not args.warehouse:
        parser.error("--options and --profile need --warehouse W (a warehouse after sequences and encode)")

    from longtail.core.config import load_config
    from longtail.core.session import build_spark
    from longtail.core.tables import Warehouse

    tmp = None
    root = args.warehouse
    if root is None:
        tmp = tempfile.mkdtemp(prefix="bench-encode-")
        root = os.path.join(tmp, "warehouse")
    cfg = load_config(None, [f"warehouse={root}", *args.overrides])
    spark = build_spark(cfg.spark)
    try:
        if args.options or args.profile:
            study = options_study if args.options else profile_study
            study(spark, Warehouse(spark, cfg.warehouse, engine=cfg.delta.engine), cfg, args.sample, args.users,
                  args.threads)
            return
        ratio(spark, cfg, args.data, args.sample, args.one_by_one)
        if args.full:
            full_run(spark, Warehouse(spark, cfg.warehouse, engine=cfg.delta.engine), cfg, args)
            if args.keep and args.warehouse is None:
                shutil.copytree(root, args.keep, dirs_exist_ok=True)
                print(f"warehouse kept at {args.keep}")
    finally:
        spark.stop()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
