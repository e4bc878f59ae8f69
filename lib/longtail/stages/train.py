"""Train one model: training shards from Spark, then torch processes (TorchDistributor + DDP).

Driver (:func:`run_train`):

1. checks the model name; reads ``user_sequences`` and ``item_stats`` (for ``llmesr_*`` also
   ``item_embeddings``, ``item_embeddings_pca`` and ``similar_users``);
2. writes, with Spark, ``<warehouse>/_train/<run>/``:
   ``users/`` (every user: ``user_idx``, the last ``max_len + 1`` training items, the
   validation item, the whole history), ``shards/shard=<k>/`` (training rows: ``user_idx``,
   training items, similar users' ``user_idx``; ``k`` in ``0..n_shards-1`` with
   ``n_shards`` a multiple of the number of processes), ``item_ids.json`` and for LLM-ESR
   ``text.npz`` (LLM and PCA item tables);
3. runs :func:`train_worker` in the driver (``single``), in N processes on the driver
   (``local``: ``TorchDistributor(local_mode=True)``, gloo on CPU) or as a Spark barrier
   stage (``cluster``: one process per task / GPU, NCCL on GPU);
4. registers the saved model in the ``models`` table and removes the run folder.

Worker (:func:`train_worker`, one per process): rank r reads only shards r, r + world, ...
with pyarrow; ranks agree on a step count (all-reduce MIN); negatives are sampled on the
fly from a generator seeded by (seed, rank, epoch). Rank 0 validates (NDCG@10 of the
validation item against sampled unseen items), early-stops with patience and saves the
best model to ``<warehouse>/_models/<model>/<version>/``. Every rank returns that path.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from longtail.core.config import TrainConfig
from longtail.core.errors import ConfigError, EnvironmentProblem, InputError, ModelNotFoundError
from longtail.core.files import absolute, filesystem, read_bytes, remove_tree, write_bytes
from longtail.models import check_model_name, needs_text, objective

log = logging.getLogger(__name__)

#: Training shards per process; files are always a multiple of the number of processes.
SHARDS_PER_PROCESS = 2
#: Sampled unseen items per user in validation (the paper's protocol).
VALIDATION_NEGATIVES = 100
#: Users per forward pass when encoding histories for validation or scoring.
ENCODE_CHUNK = 512


# =========================================================================== results


@dataclass(frozen=True)
class TrainResult:
    """What :func:`run_train` did; ``str()`` is the CLI's summary."""

    model: str
    version: str
    path: str
    best_epoch: int
    valid_ndcg10: float
    valid_hr10: float
    epochs_run: int
    seconds_per_epoch: float
    sequences_per_second: float
    processes: int
    mode: str
    train_users: int

    def __str__(self) -> str:
        return (
            f"trained {self.model} version {self.version}: best epoch {self.best_epoch} of "
            f"{self.epochs_run}, validation NDCG@10 {self.valid_ndcg10:.4f} HR@10 {self.valid_hr10:.4f}; "
            f"{self.seconds_per_epoch:.2f} s/epoch ({self.sequences_per_second:.0f} sequences/s) on "
            f"{self.processes} process(es), mode {self.mode}, {self.train_users} training users; "
            f"saved to {self.path}"
        )


@dataclass
class TrainedModel:
    """A saved model loaded for inference (eval mode, CPU).

    Attributes:
        name, version, path: as registered in the ``models`` table.
        module: the :class:`~longtail.models.layers.SequentialRecommender`.
        item_ids: ``item_ids[idx]`` is the item_id of item idx (index 0 is ``""``).
        max_len: longest history the model reads.
        config: the saved config (model name, hyperparameters, sizes).
    """

    name: str
    version: str
    path: str
    module: Any
    item_ids: list[str]
    max_len: int
    config: dict = field(default_factory=dict)

    def user_vectors(self, histories: Any, chunk: int = ENCODE_CHUNK):
        """``[B, D]`` float tensor of user vectors.

        Args:
            histories: item idx sequences, oldest first (a list of lists or arrays), or a
                left-padded ``LongTensor[B, L]``; only the last ``max_len`` items count.
        """
        import torch

        if isinstance(histories, torch.Tensor):
            h = histories.detach().to("cpu").numpy().astype(np.int64)
            values = h[h != 0]  # row-major: each row's items stay in order
            offsets = np.concatenate([[0], np.cumsum((h != 0).sum(axis=1))]).astype(np.int64)
        else:
            values, offsets = _ragged_from_lists([np.asarray(s, dtype=np.int64).ravel() for s in histories])
        rows = np.arange(len(offsets) - 1)
        return user_vectors_ragged(self.module, values, offsets, rows, self.max_len, chunk)

    def item_vectors(self):
        """``[n_items + 1, D]`` item vectors (row 0 padding)."""
        import torch

        with torch.no_grad():
            return self.module.item_vectors()

    def item_vectors_from_text(self, llm_embeddings):
        """``[N, D]`` vectors for new items from their LLM embeddings (LLM-ESR models only)."""
        import torch

        with torch.no_grad():
            return self.module.item_vectors_from_text(torch.as_tensor(llm_embeddings))


# =========================================================================== driver


def run_train(wh, model_name: str, cfg: TrainConfig, threads: int | None = None) -> TrainResult:
    """Train ``model_name`` on the warehouse's tables and register it in ``models``.

    Args:
        wh: the :class:`~longtail.core.tables.Warehouse` (its session runs the Spark part).
        model_name: a registered model name (``sasrec``, ..., ``llmesr_bert4rec``).
        cfg: the ``train`` section (hyperparameters, ``mode``, ``processes``, ``seed``).
        threads: torch threads per process; None: torch's default in ``single`` mode, the
            machine's cores split between processes in ``local`` mode, ``spark.task.cpus``
            in ``cluster`` mode. (On a busy machine, more threads than free cores make
            torch spin: 1 is then much faster.)

    Returns:
        The :class:`TrainResult`.

    Raises:
        ModelNotFoundError: unknown model name (lists the valid ones).
        TableNotFoundError, SchemaError: an input table is missing or has wrong columns.
        InputError: no training users, items without embeddings, idxs out of range.
        ConfigError: the PCA width differs from ``train.hidden``, bad mode/processes.
        EnvironmentProblem: too few Spark task slots for a cluster run.
    """
    check_model_name(model_name)
    world = 1 if cfg.mode == "single" else cfg.processes
    for key in ("processes", "epochs", "batch_size", "max_len", "hidden", "layers", "heads"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"config key train.{key}: must be at least 1, got {getattr(cfg, key)}")
    if cfg.hidden % cfg.heads:
        raise ConfigError(f"config key train.heads: {cfg.heads} does not divide train.hidden {cfg.hidden}")
    if cfg.mode == "cluster":
        check_task_slots(wh.spark, world)
    version = new_version(model_name, cfg)
    root = absolute(wh.root)
    run_dir = f"{root}/_train/{version}"
    model_dir = f"{root}/_models/{model_name}/{version}"
    try:
        prepared = prepare_training_data(wh, model_name, cfg, run_dir, world * SHARDS_PER_PROCESS, world)
        params = {
            "model": model_name,
            "version": version,
            "run_dir": run_dir,
            "model_dir": model_dir,
            "hp": dataclasses.asdict(cfg),
            "world": world,
            "threads": threads or _threads_per_process(wh.spark, cfg, world),
            **prepared,
        }
        path = launch(wh.spark, cfg, params)
        if path != model_dir:  # pragma: no cover - a broken worker
            raise RuntimeError(f"training returned {path!r}, expected {model_dir!r}")
        metrics = json.loads(read_bytes(f"{model_dir}/metrics.json"))
        try:
            register_model(wh, model_name, version, model_dir, metrics)
        except BaseException:
            remove_tree(model_dir)
            raise
    finally:
        remove_tree(run_dir)
    return TrainResult(
        model=model_name,
        version=version,
        path=model_dir,
        best_epoch=int(metrics["best_epoch"]),
        valid_ndcg10=float(metrics["valid_ndcg10"]),
        valid_hr10=float(metrics["valid_hr10"]),
        epochs_run=int(metrics["epochs_run"]),
        seconds_per_epoch=float(metrics["seconds_per_epoch"]),
        sequences_per_second=float(metrics["sequences_per_second"]),
        processes=world,
        mode=cfg.mode,
        train_users=int(prepared["train_users"]),
    )


def new_version(model_name: str, cfg: TrainConfig) -> str:
    """A sortable, unique version: UTC time to the millisecond + a short hash."""
    now = dt.datetime.now(dt.timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"
    text = f"{model_name}|{json.dumps(dataclasses.asdict(cfg), sort_keys=True)}|{uuid.uuid4().hex}"
    return f"{stamp}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def check_task_slots(spark, processes: int) -> None:
    """Fail fast when a barrier stage of ``processes`` tasks cannot be scheduled at once.

    Spark would otherwise retry the barrier stage every 15 s for about 10 minutes.

    Raises:
        EnvironmentProblem: naming the slots found and how they were counted.
    """
    sc = spark.sparkContext
    cpus = max(1, int(spark.conf.get("spark.task.cpus", "1") or "1"))
    parallelism = sc.defaultParallelism
    slots = parallelism // cpus
    if slots < processes:
        raise EnvironmentProblem(
            f"train.mode=cluster needs {processes} concurrent task slots for one barrier stage, but "
            f"Spark has {slots} (spark.master={sc.master}, default parallelism {parallelism}, "
            f"spark.task.cpus={cpus}); lower train.processes or add executors"
        )


def _threads_per_process(spark, cfg: TrainConfig, world: int) -> int | None:
    # Processes on one machine share its cores; more threads than cores only thrash.
    if cfg.mode == "single":
        return None
    if cfg.mode == "local":
        return max(1, (os.cpu_count() or 1) // world)
    return max(1, int(spark.conf.get("spark.task.cpus", "1") or "1"))


def launch(spark, cfg: TrainConfig, params: dict) -> str:
    """Run :func:`train_worker` as ``cfg.mode`` says; returns the saved model's path."""
    if cfg.mode == "single":
        return train_worker(params)
    from pyspark.ml.torch.distributor import TorchDistributor

    try:
        distributor = TorchDistributor(
            num_processes=cfg.processes, local_mode=cfg.mode == "local", use_gpu=cfg.use_gpu
        )
    except RuntimeError as exc:  # GPU settings TorchDistributor refuses
        raise EnvironmentProblem(f"train.use_gpu={cfg.use_gpu}, mode {cfg.mode}: {exc}") from None
    return distributor.run(train_worker, params)


def register_model(wh, model_name: str, version: str, path: str, metrics: dict) -> None:
    """Append one row for the saved model to the ``models`` table.

    Args:
        wh: the warehouse; model_name, version, path: the saved model folder;
        metrics: the saved ``metrics.json`` (best epoch, validation figures, timing, seed).
    """
    from longtail.core.schemas import MODELS, MODELS_SCHEMA, conform

    row = (
        model_name,
        version,
        path,
        dt.datetime.now(dt.timezone.utc),
        int(metrics["best_epoch"]),
        float(metrics["valid_ndcg10"]),
        float(metrics["valid_hr10"]),
        float(metrics["seconds_per_epoch"]),
        int(metrics["processes"]),
        int(metrics["seed"]),
    )
    df = wh.spark.createDataFrame([row], MODELS_SCHEMA)
    with wh.job():
        wh.write(conform(df, MODELS), MODELS, mode="append")


# --------------------------------------------------------------------------- Spark part


def prepare_training_data(
    wh, model_name: str, cfg: TrainConfig, run_dir: str, n_shards: int, world: int
) -> dict:
    """Write the run folder (see the module docstring) and return plain facts about it.

    Returns:
        ``n_items``, ``n_shards``, ``train_users``, ``objective``, ``text`` (bool),
        ``llm_dim``, ``encoder``.

    Raises:
        as :func:`run_train`.
    """
    from pyspark.sql import functions as F

    from longtail.core import schemas as S

    text = needs_text(model_name)
    obj = objective(model_name)
    seqs = wh.read(S.USER_SEQUENCES)
    S.require_columns(seqs, S.USER_SEQUENCES_SCHEMA, S.USER_SEQUENCES)
    stats = wh.read(S.ITEM_STATS)
    S.require_columns(stats, _subset(S.ITEM_STATS_SCHEMA, "item_id", "item_idx"), S.ITEM_STATS)
    item_ids = _item_ids(stats)
    n_items = len(item_ids) - 1
    write_bytes(f"{run_dir}/item_ids.json", json.dumps(item_ids).encode(), atomic=False)

    keep = cfg.max_len + 1
    users = seqs.select(
        "user_id",
        "user_idx",
        F.expr(
            f"slice(coalesce(train_item_idxs, array()), "
            f"greatest(size(coalesce(train_item_idxs, array())) - {keep} + 1, 1), {keep})"
        ).cast("array<int>").alias("train_item_idxs"),
        "valid_item_idx",
        F.coalesce("item_idxs", F.array().cast("array<int>")).alias("item_idxs"),
    ).filter(F.col("user_idx").isNotNull())

    llm_dim, encoder = 0, None
    if text:
        llm_dim, encoder = _write_text_tables(wh, stats, n_items, cfg.hidden, f"{run_dir}/text.npz")
        users = _with_neighbors(wh, seqs, users, cfg.distill_neighbors)
    else:
        users = users.withColumn("neighbor_idxs", F.lit(None).cast("array<int>"))

    users_dir = f"{run_dir}/users"
    users.drop("user_id").write.mode("overwrite").parquet(users_dir)
    user_rows, max_item = _scan_users(users_dir)
    if user_rows == 0:
        raise InputError(f"table {S.USER_SEQUENCES}: no users; nothing to train on (run `longtail sequences` first)")
    if max_item > n_items:
        raise InputError(
            f"table {S.USER_SEQUENCES}: item idx {max_item} is not in table {S.ITEM_STATS} "
            f"(largest item_idx {n_items}); rerun `longtail sequences`"
        )

    min_len = 2 if obj == "next" else 1
    shards_dir = f"{run_dir}/shards"
    (
        wh.spark.read.parquet(users_dir)
        .filter(F.size("train_item_idxs") >= min_len)
        .withColumn("shard", F.pmod(F.col("user_idx"), F.lit(n_shards)))
        .select("user_idx", "train_item_idxs", "neighbor_idxs", "shard")
        .repartition(n_shards, "shard")
        .write.mode("overwrite")
        .partitionBy("shard")
        .parquet(shards_dir)
    )
    per_rank = [0] * world
    for shard in range(n_shards):
        per_rank[shard % world] += sum(_parquet_rows(f) for f in _shard_files(shards_dir, shard))
    train_users = sum(per_rank)
    if train_users == 0:
        raise InputError(
            f"table {S.USER_SEQUENCES}: no user has {min_len} or more items in train_item_idxs; "
            "nothing to train on"
        )
    if min(per_rank) == 0:
        raise InputError(
            f"table {S.USER_SEQUENCES}: {train_users} training users cannot feed {world} processes "
            f"(a process got none); lower train.processes"
        )
    return {
        "n_items": n_items,
        "n_shards": n_shards,
        "train_users": train_users,
        "objective": obj,
        "text": text,
        "llm_dim": llm_dim,
        "encoder": encoder,
    }


def _subset(schema, *names: str):
    from pyspark.sql import types as T

    return T.StructType([f for f in schema.fields if f.name in names])


def _item_ids(stats) -> list[str]:
    from longtail.core.schemas import ITEM_STATS

    tbl = stats.select("item_idx", "item_id").toArrow()
    if tbl.num_rows == 0:
        raise InputError(f"table {ITEM_STATS}: no items")
    idx = tbl.column("item_idx").to_numpy(zero_copy_only=False)
    ids = tbl.column("item_id").to_pylist()
    if np.isnan(idx.astype(float)).any() or idx.min() < 1:
        raise InputError(f"table {ITEM_STATS}: column item_idx must be 1 or more (0 is padding)")
    idx = idx.astype(np.int64)
    if len(np.unique(idx)) != len(idx):
        raise InputError(f"table {ITEM_STATS}: column item_idx has duplicates")
    out = [""] * (int(idx.max()) + 1)
    for i, item_id in zip(idx, ids):
        out[int(i)] = item_id or ""
    return out


def _with_neighbors(wh, seqs, users, k: int):
    """Add ``neighbor_idxs``: up to ``k`` similar users' user_idx, most similar first."""
    from pyspark.sql import functions as F

    from longtail.core import schemas as S

    sim = wh.read(S.SIMILAR_USERS)
    S.require_columns(sim, _subset(S.SIMILAR_USERS_SCHEMA, "user_id", "neighbors"), S.SIMILAR_USERS)
    ids = seqs.select(F.col("user_id").alias("neighbor_id"), F.col("user_idx").alias("neighbor_idx"))
    ranked = (
        sim.select("user_id", F.posexplode(F.slice("neighbors", 1, k + 1)).alias("rank", "neighbor_id"))
        .join(ids, "neighbor_id")
        .groupBy("user_id")
        .agg(F.sort_array(F.collect_list(F.struct("rank", "neighbor_idx"))).alias("ranked"))
        .select("user_id", F.col("ranked.neighbor_idx").alias("neighbor_idxs"))
    )
    return users.join(ranked, "user_id", "left").withColumn(
        "neighbor_idxs",
        # A user is not its own teacher; keep the k most similar others.
        F.slice(F.filter("neighbor_idxs", lambda x: x != F.col("user_idx")), 1, k),
    )


def _write_text_tables(wh, stats, n_items: int, hidden: int, path: str) -> tuple[int, str | None]:
    """Collect the LLM and PCA item embeddings into ``[n_items + 1, .]`` arrays.

    Returns ``(E, encoder)``: the LLM dimension and the text encoder's name (``model``
    column of ``item_embeddings``; several names joined by ``,``), kept in the model's
    config so that serving can tell which encoder a new item's text must go through.
    """
    from pyspark.sql import functions as F

    from longtail.core import schemas as S

    emb = wh.read(S.ITEM_EMBEDDINGS)
    S.require_columns(emb, _subset(S.ITEM_EMBEDDINGS_SCHEMA, "item_id", "embedding"), S.ITEM_EMBEDDINGS)
    encoder = None
    if "model" in emb.columns:
        names = sorted(r[0] for r in emb.select("model").distinct().collect() if r[0])
        encoder = ",".join(names) or None
    pca = wh.read(S.ITEM_EMBEDDINGS_PCA)
    S.require_columns(pca, _subset(S.ITEM_EMBEDDINGS_PCA_SCHEMA, "item_id", "embedding"), S.ITEM_EMBEDDINGS_PCA)
    tbl = (
        stats.select("item_id", "item_idx")
        .join(emb.select("item_id", F.col("embedding").alias("llm")), "item_id", "left")
        .join(pca.select("item_id", F.col("embedding").alias("pca")), "item_id", "left")
        .toArrow()
    )
    idx = tbl.column("item_idx").to_numpy(zero_copy_only=False).astype(np.int64)
    if len(np.unique(idx)) != len(idx):
        raise InputError(
            f"tables {S.ITEM_EMBEDDINGS}/{S.ITEM_EMBEDDINGS_PCA}: several embeddings for one item_id; "
            "keep one row per item (rerun `longtail encode`)"
        )
    llm = _embedding_matrix(tbl, "llm", S.ITEM_EMBEDDINGS)
    reduced = _embedding_matrix(tbl, "pca", S.ITEM_EMBEDDINGS_PCA)
    if reduced.shape[1] != hidden:
        raise ConfigError(
            f"table {S.ITEM_EMBEDDINGS_PCA}: embeddings have {reduced.shape[1]} dimensions but "
            f"train.hidden is {hidden}; set encode.pca_dim={hidden} and rerun `longtail encode` "
            f"(or set train.hidden={reduced.shape[1]})"
        )
    llm_full = np.zeros((n_items + 1, llm.shape[1]), dtype=np.float32)
    pca_full = np.zeros((n_items + 1, hidden), dtype=np.float32)
    llm_full[idx] = llm
    pca_full[idx] = reduced
    buf = io.BytesIO()
    np.savez(buf, llm=llm_full, pca=pca_full)
    write_bytes(path, buf.getvalue(), atomic=False)
    return int(llm.shape[1]), encoder


def _embedding_matrix(tbl, column: str, table: str) -> np.ndarray:
    import pyarrow.compute as pc

    col = tbl.column(column).combine_chunks()
    missing = np.asarray(col.is_null().to_numpy(zero_copy_only=False))
    if missing.any():
        ids = sorted(np.asarray(tbl.column("item_id").to_pylist(), dtype=object)[missing])
        raise InputError(
            f"table {table}: no embedding for {int(missing.sum())} of {len(missing)} items "
            f"(e.g. {', '.join(map(str, ids[:5]))}); rerun `longtail encode`"
        )
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(set(lengths.tolist())) != 1 or lengths[0] == 0:
        raise InputError(
            f"table {table}: column embedding has vectors of different or zero lengths "
            f"({', '.join(map(str, sorted(set(lengths.tolist()))[:5]))})"
        )
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    matrix = values.reshape(len(lengths), int(lengths[0]))
    if not np.isfinite(matrix).all():
        raise InputError(f"table {table}: column embedding has null or non-finite values")
    return matrix


def _scan_users(users_dir: str) -> tuple[int, int]:
    """Rows and the largest item idx in the run's users folder (read with pyarrow)."""
    rows, max_item = 0, 0
    for table in _read_parquet_dir(users_dir, ["train_item_idxs", "valid_item_idx", "item_idxs"]):
        rows += table.num_rows
        for name in ("train_item_idxs", "item_idxs"):
            values = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            if values.size:
                max_item = max(max_item, int(values.max()))
        valid = table.column("valid_item_idx").to_numpy(zero_copy_only=False)
        valid = valid[~np.isnan(valid.astype(float))] if valid.size else valid
        if valid.size:
            max_item = max(max_item, int(valid.max()))
    return rows, max_item


# =========================================================================== worker


def train_worker(params: dict) -> str:
    """Train in one process (rank from the torchrun / barrier environment); return the model path.

    Module-level and fed plain values only, so TorchDistributor can pickle it small.

    Args:
        params: ``model``, ``version``, ``run_dir``, ``model_dir``, ``hp`` (TrainConfig as a
            dict), ``world``, ``threads``, ``n_items``, ``n_shards``, ``objective``, ``text``,
            ``llm_dim``, ``train_users``.
    """
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    hp = params["hp"]
    use_cuda = bool(hp.get("use_gpu")) and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    distributed = world > 1
    if rank == 0 and not logging.getLogger().handlers and not log.handlers:
        # A torchrun / barrier-task process has no logging set up: show rank 0's epoch
        # lines on its stdout, which TorchDistributor streams to the driver.
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s longtail.stages.train %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    if distributed:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        return _train(params, rank, world, device, distributed)
    finally:
        if distributed:
            dist.destroy_process_group()


def _train(params: dict, rank: int, world: int, device, distributed: bool) -> str:
    import torch
    import torch.distributed as dist

    from longtail.models import TextTables, build_model

    hp = params["hp"]
    seed = int(hp["seed"])
    run_dir, n_items, max_len = params["run_dir"], int(params["n_items"]), int(hp["max_len"])
    cloze = params["objective"] == "cloze"
    distill = bool(params["text"]) and float(hp["alpha"]) > 0

    users = UserTable.load(f"{run_dir}/users") if (distill or rank == 0) else None
    data = RankData.load(
        f"{run_dir}/shards", rank, world, int(params["n_shards"]), users if distill else None
    )
    text = None
    if params["text"]:
        with np.load(io.BytesIO(read_bytes(f"{run_dir}/text.npz"))) as arrays:
            text = TextTables.from_arrays(arrays["llm"], arrays["pca"])

    torch.manual_seed(seed)
    module = build_model(params["model"], n_items, hp, text).to(device)
    model = module
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        # The frozen LLM table is a buffer: synced once at init, never re-broadcast per step.
        model = DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False
        )
    optimizer = torch.optim.Adam(
        [p for p in module.parameters() if p.requires_grad], lr=float(hp["lr"]),
        weight_decay=float(hp["weight_decay"]),
    )

    # The global batch is train.batch_size whatever the number of processes.
    per_rank = max(1, math.ceil(int(hp["batch_size"]) / world))
    rows = data.n * (2 if cloze else 1)
    steps = math.ceil(rows / per_rank)
    seen_per_epoch = min(rows, steps * per_rank)
    if distributed:
        t = torch.tensor([steps], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        steps = int(t.item())
        seen_per_epoch = min(rows, steps * per_rank)
        t = torch.tensor([seen_per_epoch], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        seen_per_epoch = int(t.item())

    validation = ValidationSet.build(users, n_items, max_len, seed) if rank == 0 else None
    eval_every = max(1, int(hp["eval_every"]))
    epochs, patience = int(hp["epochs"]), int(hp["patience"])
    history: list[dict] = []
    train_seconds: list[float] = []
    best = {"epoch": 0, "ndcg": -1.0, "hr": 0.0, "state": None}
    stopped_early = False
    epoch = 0
    for epoch in range(1, epochs + 1):
        model.train()
        torch.manual_seed(_mix(seed, rank, epoch))
        rng = np.random.default_rng([seed, rank, epoch])
        order = rng.permutation(rows)
        total = torch.zeros((), device=device)
        started = time.perf_counter()
        for step in range(steps):
            ids = order[step * per_rank : (step + 1) * per_rank]
            batch = data.batch(ids, rng, n_items, max_len, cloze, float(hp["bert_mask_prob"]))
            batch = {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
            optimizer.zero_grad(set_to_none=True)
            loss = model(batch)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds.append(time.perf_counter() - started)
        entry = {"epoch": epoch, "loss": float(total.item()) / max(steps, 1), "seconds": train_seconds[-1]}
        if epoch % eval_every == 0 or epoch == epochs:
            stop = 0
            if rank == 0:
                started = time.perf_counter()
                ndcg, hr = validation.evaluate(module, device)
                entry.update({"valid_ndcg10": ndcg, "valid_hr10": hr, "valid_seconds": time.perf_counter() - started})
                if ndcg > best["ndcg"]:
                    best = {"epoch": epoch, "ndcg": ndcg, "hr": hr, "state": _cpu_state(module)}
                elif epoch - best["epoch"] >= patience:
                    stop = 1
                log.info(
                    "epoch %d: loss %.4f, %.1fs training, valid NDCG@10 %.4f HR@10 %.4f",
                    epoch, entry["loss"], entry["seconds"], ndcg, hr,
                )
            if distributed:
                flag = torch.tensor([stop], device=device)
                dist.broadcast(flag, src=0)
                stop = int(flag.item())
            if stop:
                stopped_early = True
                history.append(entry)
                break
        history.append(entry)

    if rank == 0:
        module.load_state_dict(best["state"])
        seconds = float(np.mean(train_seconds)) if train_seconds else 0.0
        metrics = {
            "model": params["model"],
            "version": params["version"],
            "best_epoch": best["epoch"],
            "valid_ndcg10": best["ndcg"],
            "valid_hr10": best["hr"],
            "epochs_run": epoch,
            "stopped_early": stopped_early,
            "seconds_per_epoch": seconds,
            "sequences_per_second": seen_per_epoch / seconds if seconds > 0 else 0.0,
            "sequences_per_epoch": seen_per_epoch,
            "processes": world,
            "seed": seed,
            "validation_users": validation.n,
            "validation_negatives": validation.negatives.shape[1],
            "history": history,
        }
        save_model_dir(params, module, metrics)
    if distributed:
        dist.barrier()
    return params["model_dir"]


def _mix(*values: int) -> int:
    return int(np.random.SeedSequence(list(values)).generate_state(1)[0])


def _cpu_state(module) -> dict:
    return {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------- worker data


def _ragged_from_lists(seqs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = (
        np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]) if lengths.sum() else np.zeros(0, np.int64)
    )
    return values, offsets


def _ragged_from_arrow(column) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.compute as pc

    col = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    return values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def pad_left(
    values: np.ndarray, offsets: np.ndarray, rows: np.ndarray, width: int, drop_last: bool = False
) -> np.ndarray:
    """Left-padded ``[len(rows), L]`` matrix of the last ``width`` items of each ragged row.

    ``L`` is the longest selected row (at least 1), so all-padding columns never appear.
    ``drop_last`` leaves out each row's last item first.
    """
    rows = np.asarray(rows, dtype=np.int64)
    starts, ends = offsets[rows], offsets[rows + 1]
    if drop_last:
        ends = np.maximum(starts, ends - 1)
    starts = np.maximum(starts, ends - width)
    lengths = ends - starts
    length = max(int(lengths.max()) if lengths.size else 0, 1)
    out = np.zeros((len(rows), length), dtype=np.int64)
    total = int(lengths.sum())
    if total:
        row_ids = np.repeat(np.arange(len(rows)), lengths)
        within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        cols = length - np.repeat(lengths, lengths) + within
        out[row_ids, cols] = values[np.repeat(starts, lengths) + within]
    return out


def sample_training_negatives(
    rng: np.random.Generator, targets: np.ndarray, seen: np.ndarray, n_items: int, tries: int = 50
) -> np.ndarray:
    """One negative per position with a target (``targets > 0``), not among the row's ``seen`` items."""
    neg = rng.integers(1, n_items + 1, size=targets.shape)
    need = targets > 0
    bad = need & (neg[:, :, None] == seen[:, None, :]).any(-1)
    for _ in range(tries):  # tiny catalogues may never clear; give up after a few rounds
        if not bad.any():
            break
        r, c = np.nonzero(bad)
        neg[r, c] = rng.integers(1, n_items + 1, size=r.size)
        bad[r, c] = (neg[r, c][:, None] == seen[r]).any(-1)
    return np.where(need, neg, 0)


class UserTable:
    """Every user's training items (last ``max_len + 1``), validation item and history."""

    def __init__(self, user_idx, train, valid, history) -> None:
        self.user_idx = user_idx
        self.train_values, self.train_offsets = train
        self.valid = valid
        self.hist_values, self.hist_offsets = history
        self.row_of = np.full(int(user_idx.max()) + 1 if user_idx.size else 1, -1, dtype=np.int64)
        self.row_of[user_idx] = np.arange(user_idx.size)

    @classmethod
    def load(cls, path: str) -> "UserTable":
        import pyarrow as pa

        tables = list(_read_parquet_dir(path, ["user_idx", "train_item_idxs", "valid_item_idx", "item_idxs"]))
        table = pa.concat_tables(tables)
        valid = table.column("valid_item_idx").to_numpy(zero_copy_only=False)
        valid = np.nan_to_num(valid.astype(np.float64), nan=0).astype(np.int64)
        return cls(
            table.column("user_idx").to_numpy(zero_copy_only=False).astype(np.int64),
            _ragged_from_arrow(table.column("train_item_idxs")),
            valid,
            _ragged_from_arrow(table.column("item_idxs")),
        )


class RankData:
    """This process's training rows, read from its own shards only (every world-th shard)."""

    def __init__(self, train, neighbors: np.ndarray | None, lookup: UserTable | None) -> None:
        self.values, self.offsets = train
        self.n = len(self.offsets) - 1
        self.neighbors = neighbors  # [n, K] rows of `lookup`, -1 = none
        self.lookup = lookup

    @classmethod
    def load(cls, shards_dir: str, rank: int, world: int, n_shards: int, lookup: UserTable | None) -> "RankData":
        import pyarrow.parquet as pq

        seqs: list[np.ndarray] = []
        neighbors: list[list[int]] = []
        for shard in range(rank, n_shards, world):
            for fs, path in _shard_files(shards_dir, shard, with_fs=True):
                with fs.open_input_file(path) as handle:
                    for batch in pq.ParquetFile(handle).iter_batches(
                        batch_size=8192, columns=["train_item_idxs", "neighbor_idxs"]
                    ):
                        values, offsets = _ragged_from_arrow(batch.column(0))
                        seqs.extend(np.split(values, offsets[1:-1]) if len(offsets) > 1 else [])
                        if lookup is not None:
                            neighbors.extend(x or [] for x in batch.column(1).to_pylist())
        train = _ragged_from_lists(seqs)
        nb = None
        if lookup is not None:
            k = max((len(x) for x in neighbors), default=0)
            nb = np.full((len(neighbors), max(k, 1)), -1, dtype=np.int64)
            for i, row in enumerate(neighbors):
                if row:
                    idx = np.asarray(row, dtype=np.int64)
                    idx = idx[(idx >= 0) & (idx < lookup.row_of.size)]
                    nb[i, : idx.size] = lookup.row_of[idx]
        return cls(train, nb, lookup)

    def batch(
        self, ids: np.ndarray, rng: np.random.Generator, n_items: int, max_len: int, cloze: bool, mask_prob: float
    ) -> dict[str, np.ndarray]:
        """Numpy arrays of one training batch (see ``SequentialRecommender.loss``)."""
        rows = ids % self.n
        seqs = pad_left(self.values, self.offsets, rows, max_len + 1)
        if cloze:
            from longtail.models.bert4rec import cloze_mask

            tokens = seqs[:, -max_len:]
            inputs, targets = cloze_mask(rng, tokens, n_items, mask_prob, last_only=ids >= self.n)
        else:
            inputs, targets = seqs[:, :-1], seqs[:, 1:] * (seqs[:, :-1] != 0)
        first = int(np.argmax((inputs != 0).any(axis=0))) if (inputs != 0).any() else inputs.shape[1] - 1
        inputs, targets = inputs[:, first:], targets[:, first:]
        out = {
            "seqs": inputs,
            "pos": targets,
            "neg": sample_training_negatives(rng, targets, seqs, n_items),
        }
        if self.neighbors is not None and self.lookup is not None:
            nb = self.neighbors[rows]
            valid = nb >= 0
            unique, inverse = np.unique(nb[valid], return_inverse=True)
            index = np.full(nb.shape, -1, dtype=np.int64)
            index[valid] = inverse
            if unique.size:
                teacher = pad_left(
                    self.lookup.train_values, self.lookup.train_offsets, unique,
                    max_len, drop_last=not cloze,
                )
            else:
                teacher = np.zeros((0, 1), dtype=np.int64)
            out["neighbor_seqs"] = teacher
            out["neighbor_index"] = index
        return out


# --------------------------------------------------------------------------- validation


def user_vectors_ragged(module, values, offsets, rows, max_len: int, chunk: int = ENCODE_CHUNK, device=None):
    """``[len(rows), D]`` user vectors of ragged histories, in length-sorted chunks (eval, no grad)."""
    import torch

    rows = np.asarray(rows, dtype=np.int64)
    lengths = offsets[rows + 1] - offsets[rows]
    order = np.argsort(lengths, kind="stable")
    out = None
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(rows), chunk):
                sel = order[start : start + chunk]
                seqs = torch.from_numpy(pad_left(values, offsets, rows[sel], max_len))
                if device is not None:
                    seqs = seqs.to(device)
                vec = module.user_vectors(seqs)
                if out is None:
                    out = torch.zeros((len(rows), vec.shape[1]), dtype=vec.dtype, device=vec.device)
                out[torch.from_numpy(sel).to(vec.device)] = vec
    finally:
        module.train(was_training)
    if out is None:
        dim = module.item_vectors().shape[1]
        out = torch.zeros((0, dim))
    return out


class ValidationSet:
    """Validation users: input = training items, target = validation item, fixed sampled negatives."""

    def __init__(self, users: UserTable, rows: np.ndarray, targets: np.ndarray, negatives: np.ndarray, max_len: int):
        self.users, self.rows, self.targets, self.negatives, self.max_len = users, rows, targets, negatives, max_len
        self.n = len(rows)

    @classmethod
    def build(cls, users: UserTable, n_items: int, max_len: int, seed: int, negatives: int = VALIDATION_NEGATIVES):
        """Users with a validation item; ``negatives`` unseen items each (fewer in a tiny catalogue)."""
        from longtail.ranking.metrics import sample_negatives

        train_len = users.train_offsets[1:] - users.train_offsets[:-1]
        rows = np.nonzero((users.valid > 0) & (train_len > 0))[0]
        hist_len = users.hist_offsets[1:] - users.hist_offsets[:-1]
        longest = int(hist_len[rows].max()) if rows.size else 0
        # Enough unseen items for every user even in a tiny test catalogue.
        n_neg = max(1, min(negatives, n_items - longest - 1))
        rng = np.random.default_rng(seed)
        negs = np.zeros((rows.size, n_neg), dtype=np.int64)
        for i, r in enumerate(rows):
            seen = np.concatenate(
                [users.hist_values[users.hist_offsets[r] : users.hist_offsets[r + 1]], [users.valid[r]]]
            )
            negs[i] = sample_negatives(rng, n_items, seen, n_neg)
        return cls(users, rows, users.valid[rows], negs, max_len)

    def evaluate(self, module, device=None, k: int = 10) -> tuple[float, float]:
        """``(NDCG@k, HR@k)`` of the validation item against the sampled negatives."""
        import torch

        from longtail.ranking.metrics import hit_rate, ndcg, target_ranks

        if self.n == 0:
            return 0.0, 0.0
        was_training = module.training
        module.eval()
        with torch.no_grad():
            items = module.item_vectors()
            users = user_vectors_ragged(
                module, self.users.train_values, self.users.train_offsets, self.rows, self.max_len, device=device
            )
            cands = torch.from_numpy(np.concatenate([self.targets[:, None], self.negatives], axis=1)).to(items.device)
            scores = torch.cat(
                [
                    (users[s : s + 4096, None, :] * items[cands[s : s + 4096]]).sum(-1)
                    for s in range(0, self.n, 4096)
                ]
            )
        module.train(was_training)
        ranks = target_ranks(scores.cpu().numpy(), 0)
        return ndcg(ranks, k), hit_rate(ranks, k)


# =========================================================================== saving / loading


def save_model_dir(params: dict, module, metrics: dict) -> None:
    """Write the model folder ``params["model_dir"]``; it appears whole or not at all.

    Files: ``weights.pt`` (state dict), ``config.json`` (model name, version, sizes, text
    encoder, hyperparameters), ``item_ids.json`` (item_id of each idx), ``metrics.json``
    (validation figures and per-epoch history) and, for LLM-ESR, ``pca.npz`` (the map that
    places new items from their LLM embedding).
    """
    import torch

    run_dir, model_dir = params["run_dir"], params["model_dir"]
    config = {
        "format": 1,
        "model": params["model"],
        "version": params["version"],
        "n_items": int(params["n_items"]),
        "llm_dim": int(params.get("llm_dim") or 0),
        "encoder": params.get("encoder"),
        "objective": params["objective"],
        "max_len": int(params["hp"]["max_len"]),
        "hyperparameters": params["hp"],
    }
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    files = {
        "weights.pt": buf.getvalue(),
        "config.json": json.dumps(config, indent=2).encode(),
        "item_ids.json": read_bytes(f"{run_dir}/item_ids.json"),
        "metrics.json": json.dumps(metrics, indent=2).encode(),
    }
    if params.get("text"):
        view = module.views[0]
        pca = io.BytesIO()
        np.savez(
            pca, mean=view.pca_mean.cpu().numpy(), components=view.pca_components.cpu().numpy(),
            offset=view.pca_offset.cpu().numpy(),
        )
        files["pca.npz"] = pca.getvalue()
    fs, final = filesystem(model_dir)
    tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
    fs.create_dir(tmp, recursive=True)
    try:
        for name, data in files.items():
            with fs.open_output_stream(f"{tmp}/{name}") as out:
                out.write(data)
        fs.move(tmp, final)
    except BaseException:
        remove_tree(f"{model_dir}.tmp-{tmp.rsplit('.tmp-', 1)[1]}")
        raise


def load_model_dir(path: str) -> TrainedModel:
    """Load the model saved in ``path`` (eval mode, CPU).

    Returns:
        :class:`TrainedModel`. Raises ``FileNotFoundError`` naming the file when the folder
        is incomplete.
    """
    import torch

    from longtail.models import TextTables, build_model

    config = json.loads(read_bytes(f"{path}/config.json"))
    item_ids = json.loads(read_bytes(f"{path}/item_ids.json"))
    hp = config["hyperparameters"]
    name, n_items = config["model"], int(config["n_items"])
    text = TextTables.zeros(n_items, int(config["llm_dim"]), int(hp["hidden"])) if needs_text(name) else None
    module = build_model(name, n_items, hp, text)
    state = torch.load(io.BytesIO(read_bytes(f"{path}/weights.pt")), map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    module.eval()
    return TrainedModel(
        name=name, version=config["version"], path=path, module=module, item_ids=item_ids,
        max_len=int(config["max_len"]), config=config,
    )


def load_model(wh, name: str, version: str | None = None) -> TrainedModel:
    """Load a registered model: ``version``, or the latest one in the ``models`` table.

    Raises:
        ModelNotFoundError: unknown model name, no trained version of it, or no such version.
    """
    from pyspark.sql import functions as F

    from longtail.core.schemas import MODELS

    check_model_name(name)
    if not wh.exists(MODELS):
        raise ModelNotFoundError(f"model {name!r}: no trained model yet (no table {MODELS}); run `longtail train --model {name}`")
    rows = (
        wh.read(MODELS).filter(F.col("model") == name).select("model_version", "path", "trained_at").collect()
    )
    if not rows:
        raise ModelNotFoundError(f"model {name!r}: no trained version in table {MODELS}; run `longtail train --model {name}`")
    if version is None:
        row = max(rows, key=lambda r: (r["model_version"], r["trained_at"]))
    else:
        matches = [r for r in rows if r["model_version"] == version]
        if not matches:
            known = sorted((r["model_version"] for r in rows), reverse=True)[:5]
            raise ModelNotFoundError(
                f"model {name!r}: no version {version!r} in table {MODELS} (latest: {', '.join(known)})"
            )
        row = matches[-1]
    return load_model_dir(row["path"])


# =========================================================================== files


def _parquet_files(fs, directory: str) -> list[str]:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True, recursive=True))
    return sorted(
        i.path for i in infos
        if i.type == pafs.FileType.File and i.base_name.endswith(".parquet") and not i.base_name.startswith(("_", "."))
    )


def _shard_files(shards_dir: str, shard: int, with_fs: bool = False):
    fs, p = filesystem(shards_dir)
    files = _parquet_files(fs, f"{p}/shard={shard}")
    return [(fs, f) for f in files] if with_fs else [_join_uri(shards_dir, p, f) for f in files]


def _join_uri(original: str, fs_path: str, file_path: str) -> str:
    # Map a filesystem path back to the caller's spelling (URI or local path).
    return original + file_path[len(fs_path) :] if "://" in original else file_path


def _parquet_rows(path: str) -> int:
    import pyarrow.parquet as pq

    fs, p = filesystem(path)
    with fs.open_input_file(p) as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def _read_parquet_dir(directory: str, columns: list[str]):
    import pyarrow.parquet as pq

    fs, p = filesystem(directory)
    for f in _parquet_files(fs, p):
        with fs.open_input_file(f) as handle:
            yield pq.ParquetFile(handle).read(columns=columns)
