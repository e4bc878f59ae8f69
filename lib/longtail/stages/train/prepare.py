"""The Spark part of training: the run folder every training process reads.

``<warehouse>/_train/<version>/`` holds:

- ``users/``: every user's ``user_idx``, last ``max_len + 1`` training items, validation
  item, whole history and (LLM-ESR) similar users' ``user_idx``;
- ``shards/shard=<k>/``: the training rows, ``k`` in ``0..n_shards-1`` with ``n_shards`` a
  multiple of the number of processes (rank r reads shards r, r + world, ...), each marked
  ``changed`` when its history differs from the version a warm start continues (all without one);
- ``user_fingerprints/`` (``train.warm_start`` on): each user's ``user_idx`` and a hash of its training
  history, copied into the model folder after training for the next warm start;
- ``item_ids.json``: the item index the model is trained on;
- ``text.npz`` (LLM-ESR): the LLM and PCA item tables and the encoder's PCA map;
- ``popularity.npy`` (``sampled_softmax`` with popularity draws, ``exposure_tolerance`` > 0 or
  ``view_gate: popularity``): training popularity by item idx, for the draw of the negatives and
  their logQ correction, the choice of the serving-time popularity penalty and the view gate's buckets.
"""
from __future__ import annotations

import io
import json

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from longtail.core import schemas as S
from longtail.core.config import TrainConfig
from longtail.core.errors import ConfigError, InputError
from longtail.core.files import npy_bytes, parquet_rows, read_parquet_dir, write_bytes
from longtail.core.scratch import read_parquet, write_parquet
from longtail.encoders.pca import require_pca
from longtail.inference.items import read_item_index
from longtail.models import needs_text, objective
from longtail.stages.train.data import shard_dir


def prepare_training_data(wh, model_name: str, cfg: TrainConfig, run_dir: str, n_shards: int, world: int,
                          previous_fingerprints: str | None = None) -> dict:
    """Write the run folder (see the module docstring) and return plain facts about it.

    Args:
        previous_fingerprints: a warm start's previous version's ``user_fingerprints`` folder (None:
            none): users whose training history differs from it (or who are new) are marked
            ``changed`` in the shards; without it every user is.

    Returns:
        ``n_items``, ``n_shards``, ``train_users``, ``objective``, ``text`` (bool),
        ``llm_dim``, ``encoder``, ``changed_users`` (training users marked changed).

    Raises:
        TableNotFoundError, SchemaError: an input table is missing or has wrong columns.
        InputError: no training users, items without embeddings, idxs out of range, a
            process without users, a PCA map that does not match the embeddings.
        ConfigError: the PCA width differs from ``train.hidden``.
    """
    text, obj = needs_text(model_name), objective(model_name)
    seqs = wh.read(S.USER_SEQUENCES)
    S.require_columns(seqs, S.USER_SEQUENCES_SCHEMA, S.USER_SEQUENCES)
    stats = wh.read(S.ITEM_STATS)
    S.require_columns(stats, S.subset(S.ITEM_STATS_SCHEMA, "item_id", "item_idx"), S.ITEM_STATS)
    index = read_item_index(stats)
    n_items = index.size - 1
    write_bytes(f"{run_dir}/item_ids.json", json.dumps(index.ids).encode(), atomic=False)
    if ((cfg.loss == "sampled_softmax" and cfg.negative_sampling == "popularity") or cfg.exposure_tolerance > 0
            or cfg.view_gate == "popularity"):
        _write_popularity(stats, n_items, f"{run_dir}/popularity.npy")

    users = _with_changes(wh, _training_users(seqs, cfg.max_len), previous_fingerprints)
    llm_dim, encoder = 0, None
    if text:
        llm_dim, encoder = _write_text_tables(wh, stats, n_items, cfg.hidden, f"{run_dir}/text.npz")
    if text and cfg.alpha > 0:  # similar users feed the distillation only
        users = _with_neighbors(wh, seqs, users, cfg.distill_neighbors)
    else:
        users = users.withColumn("neighbor_idxs", F.lit(None).cast("array<int>"))
    users_dir = f"{run_dir}/users"
    write_parquet(users.drop("user_id"), users_dir)  # Spark's writer, or pyarrow where Spark cannot reach
    _check_users(users_dir, n_items)
    min_len = 2 if obj == "next" else 1
    per_rank = _write_shards(wh, users_dir, f"{run_dir}/shards", n_shards, world, min_len)
    _check_shards(per_rank, min_len)
    changed = sum(per_rank)  # without a previous version's fingerprints every user counts as changed
    if previous_fingerprints is not None:  # read back by pyarrow: one boolean column, no Spark job
        changed = sum(int(np.count_nonzero(t.column("changed").to_numpy(zero_copy_only=False)))
                      for t in read_parquet_dir(f"{run_dir}/shards", ["changed"]))
    if cfg.warm_start:  # what the next warm start compares with (moved to the model folder after training)
        write_parquet(read_parquet(wh.spark, users_dir).select("user_idx", "fingerprint"),
                      f"{run_dir}/{FINGERPRINTS}")
    return {
        "n_items": n_items, "n_shards": n_shards, "train_users": sum(per_rank), "objective": obj,
        "text": text, "llm_dim": llm_dim, "encoder": encoder, "changed_users": int(changed),
    }


#: Folder of a model version (and of its run folder) with each training user's history fingerprint.
FINGERPRINTS = "user_fingerprints"


def _with_changes(wh, users: DataFrame, previous: str | None) -> DataFrame:
    """``users`` with ``changed``: no previous fingerprints (every user), or the user's fingerprint is
    not the previous version's (a new user, or a history that grew or changed)."""
    if previous is None:
        return users.withColumn("changed", F.lit(True))
    before = read_parquet(wh.spark, previous).select("user_idx", F.col("fingerprint").alias("previous"))
    return (
        users.join(before, "user_idx", "left")
        .withColumn("changed", F.col("previous").isNull() | (F.col("previous") != F.col("fingerprint")))
        .drop("previous")
    )


def _write_popularity(stats: DataFrame, n_items: int, path: str) -> None:
    """``[n_items + 1]`` int64 training popularity by item idx (0 where unknown) as ``.npy``."""
    S.require_columns(stats, S.subset(S.ITEM_STATS_SCHEMA, "item_idx", "popularity"), S.ITEM_STATS)
    tbl = stats.select("item_idx", "popularity").toArrow()
    idx = tbl.column("item_idx").to_numpy(zero_copy_only=False).astype(np.int64)
    pop = np.nan_to_num(tbl.column("popularity").to_numpy(zero_copy_only=False).astype(np.float64))
    out = np.zeros(n_items + 1, dtype=np.int64)
    ok = (idx >= 1) & (idx <= n_items)
    out[idx[ok]] = pop[ok].astype(np.int64)
    write_bytes(path, npy_bytes(out), atomic=False)


def _training_users(seqs: DataFrame, max_len: int) -> DataFrame:
    """Per user: the last ``max_len + 1`` training items, the validation item and the history."""
    keep = max_len + 1
    return seqs.select(
        "user_id",
        "user_idx",
        # The whole training history's hash: a later warm start trains most on users whose history changed.
        F.xxhash64(F.coalesce("train_item_idxs", F.array().cast("array<int>"))).alias("fingerprint"),
        F.expr(
            f"slice(coalesce(train_item_idxs, array()), "
            f"greatest(size(coalesce(train_item_idxs, array())) - {keep} + 1, 1), {keep})"
        ).cast("array<int>").alias("train_item_idxs"),
        "valid_item_idx",
        F.coalesce("item_idxs", F.array().cast("array<int>")).alias("item_idxs"),
    ).filter(F.col("user_idx").isNotNull())


def _check_users(users_dir: str, n_items: int) -> None:
    user_rows, max_item = _scan_users(users_dir)
    if user_rows == 0:
        raise InputError(f"table {S.USER_SEQUENCES}: no users; nothing to train on (run `longtail sequences` first)")
    if max_item > n_items:
        raise InputError(
            f"table {S.USER_SEQUENCES}: item idx {max_item} is not in table {S.ITEM_STATS} "
            f"(largest item_idx {n_items}); rerun `longtail sequences`"
        )


def _write_shards(wh, users_dir: str, shards_dir: str, n_shards: int, world: int, min_len: int) -> list[int]:
    """Write the training rows in ``n_shards`` shards; returns the rows each rank will read."""
    shards = (
        read_parquet(wh.spark, users_dir)
        .filter(F.size("train_item_idxs") >= min_len)
        .withColumn("shard", F.pmod(F.col("user_idx"), F.lit(n_shards)))
        .select("user_idx", "train_item_idxs", "neighbor_idxs", "changed", "shard")
        .repartition(n_shards, "shard")
    )
    write_parquet(shards, shards_dir, partition_by=["shard"])
    per_rank = [0] * world
    for shard in range(n_shards):
        per_rank[shard % world] += parquet_rows(shard_dir(shards_dir, shard))
    return per_rank


def _check_shards(per_rank: list[int], min_len: int) -> None:
    train_users = sum(per_rank)
    if train_users == 0:
        raise InputError(
            f"table {S.USER_SEQUENCES}: no user has {min_len} or more items in train_item_idxs; "
            "nothing to train on"
        )
    if min(per_rank) == 0:
        raise InputError(
            f"table {S.USER_SEQUENCES}: {train_users} training users cannot feed {len(per_rank)} processes "
            f"(a process got none); lower train.processes"
        )


def _with_neighbors(wh, seqs: DataFrame, users: DataFrame, k: int) -> DataFrame:
    """Add ``neighbor_idxs``: up to ``k`` similar users' user_idx, most similar first."""
    sim = wh.read(S.SIMILAR_USERS)
    S.require_columns(sim, S.subset(S.SIMILAR_USERS_SCHEMA, "user_id", "neighbors"), S.SIMILAR_USERS)
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


def _write_text_tables(wh, stats: DataFrame, n_items: int, hidden: int, path: str) -> tuple[int, str | None]:
    """Collect the LLM and PCA item embeddings into ``[n_items + 1, .]`` arrays, with the PCA map.

    Returns ``(E, encoder)``: the LLM dimension and the text encoder's name (``model``
    column of ``item_embeddings``), kept in the model's config so that serving can tell
    which encoder a new item's text must go through.
    """
    emb = wh.read(S.ITEM_EMBEDDINGS)
    S.require_columns(emb, S.subset(S.ITEM_EMBEDDINGS_SCHEMA, "item_id", "embedding", "model"), S.ITEM_EMBEDDINGS)
    encoder = _encoder_name(emb)
    pca = wh.read(S.ITEM_EMBEDDINGS_PCA)
    S.require_columns(pca, S.subset(S.ITEM_EMBEDDINGS_PCA_SCHEMA, "item_id", "embedding"), S.ITEM_EMBEDDINGS_PCA)
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
    projection = require_pca(wh.root, encoder, wh.version(S.ITEM_EMBEDDINGS), hidden)
    llm_full = np.zeros((n_items + 1, llm.shape[1]), dtype=np.float32)
    pca_full = np.zeros((n_items + 1, hidden), dtype=np.float32)
    llm_full[idx], pca_full[idx] = llm, reduced
    buf = io.BytesIO()
    np.savez(buf, llm=llm_full, pca=pca_full, pca_mean=projection.mean, pca_components=projection.components)
    write_bytes(path, buf.getvalue(), atomic=False)
    return int(llm.shape[1]), encoder


def _encoder_name(emb: DataFrame) -> str:
    names = sorted(r[0] for r in emb.select("model").distinct().collect() if r[0])
    if len(names) != 1:
        raise InputError(
            f"table {S.ITEM_EMBEDDINGS}: column model names {len(names)} text encoders ({', '.join(names)}), "
            "expected one; rerun `longtail encode`"
        )
    return names[0]


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
    for table in read_parquet_dir(users_dir, ["train_item_idxs", "valid_item_idx", "item_idxs"]):
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
