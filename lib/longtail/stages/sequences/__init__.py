"""``longtail sequences``: filter, map ids, build per-user sequences, split, segment.

From ``interactions`` to the three tables the models read, all in Spark:

1. optional rating threshold (keep ``rating >= min_rating``);
2. iterative k-core: drop users and items with fewer than k interactions until nothing changes;
3. dense ids from append-only maps (``_user_ids``, ``_item_ids``): ids already given keep
   their value across reruns, new users and items get ``max + 1, ...`` ordered by first
   interaction time, then id; ``item_idx`` 0 is padding, so ids start at 1;
4. per-user history ordered by (ts, item_id), truncated to the latest ``max_len``, and the
   leave-one-out split of LLM-ESR (train = all but the last two, valid = second-last,
   test = last; users with fewer than three items keep them all as training);
5. item popularity on the training part of each user's whole filtered history, and head/tail
   segments for items and users (``pareto``, ``threshold`` or ``share``).

Two paths write the same rows: up to ``sequences.local_max_rows`` interactions the steps run on
the driver (:mod:`.local`, pandas: one Spark job instead of 60-70), above it in Spark (this module).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from longtail.core import schemas
from longtail.core.config import SegmentConfig, SequencesConfig
from longtail.core.errors import ConfigError, ConflictError, InputError
from longtail.stages.sequences import local

#: Times a job that lost a conflict to a concurrent writer starts again from fresh reads.
CONFLICT_RETRIES = 2


@dataclass(frozen=True)
class SequencesSummary:
    """What ``run_sequences`` built; ``str()`` is the short table the CLI prints."""

    users: int
    items: int
    interactions: int
    #: 1 - interactions / (users * items).
    sparsity: float
    head_items: int
    #: Share of all (filtered) interactions that fall on head items.
    head_item_interaction_share: float
    tail_users: int
    tail_user_share: float
    #: Rows left after the rating threshold, before k-core filtering.
    rows_before_k_core: int
    k_core: int
    #: Filtering passes until stable (the last one removes nothing).
    k_core_rounds: int
    new_users: int
    new_items: int
    segment_method: str

    def __str__(self) -> str:
        removed = self.rows_before_k_core - self.interactions
        rows = [
            ("users", f"{self.users:,}", f"tail {self.tail_users:,} ({self.tail_user_share:.1%})"),
            ("items", f"{self.items:,}",
             f"head {self.head_items:,} hold {self.head_item_interaction_share:.1%} of interactions"),
            ("interactions", f"{self.interactions:,}",
             f"{removed:,} removed by the {self.k_core}-core "
             f"({self.k_core_rounds} pass{'' if self.k_core_rounds == 1 else 'es'})"),
            ("sparsity", f"{self.sparsity:.4%}", ""),
            ("new ids", f"{self.new_users:,} users", f"{self.new_items:,} items"),
        ]
        lines = [f"sequences: segments by {self.segment_method}"]
        lines += [f"  {a:<13}{b:>14}   {c}".rstrip() for a, b, c in rows]
        return "\n".join(lines)


def run_sequences(wh, cfg: SequencesConfig) -> SequencesSummary:
    """Build ``user_sequences``, ``item_stats`` and ``user_stats`` from ``interactions``.

    Up to ``cfg.local_max_rows`` interactions (after the rating threshold) every step runs on the
    driver (:mod:`.local`, one Spark job to collect them); above it every step runs in Spark.
    Both paths write the same rows.

    Args:
        wh: the :class:`~longtail.core.tables.Warehouse` (its ``spark`` runs everything).
        cfg: the ``sequences`` config section.

    Returns:
        A :class:`SequencesSummary`.

    Raises:
        TableNotFoundError: no ``interactions`` table.
        SchemaError: ``interactions`` lacks a contract column.
        ConfigError: ``k_core`` < 1, ``max_len`` < 3 or a segment share outside [0, 1].
        InputError: nothing is left after the rating threshold and k-core filtering.
        Tables are left as they were when any of these is raised.
    """
    _check_config(cfg)
    raw = wh.read(schemas.INTERACTIONS)
    schemas.require_columns(raw, schemas.INTERACTIONS_SCHEMA, schemas.INTERACTIONS)
    # Ingest never writes null keys; dropping them here keeps one bad row from failing a join.
    events = raw.select("user_id", "item_id", "ts", "rating").where(
        F.col("user_id").isNotNull() & F.col("item_id").isNotNull() & F.col("ts").isNotNull()
    )
    if cfg.min_rating is not None:
        # Null ratings fail the comparison and are dropped: they do not meet the threshold.
        events = events.where(F.col("rating") >= F.lit(float(cfg.min_rating)))

    small = _collect_if_small(events, cfg.local_max_rows)
    if small is not None:
        kc_local = local.k_core_frame(small, cfg.k_core)
        return _build(wh, cfg, kc_local, lambda: _outputs_local(wh, cfg, kc_local, events))
    kc = k_core(events, cfg.k_core)
    cached = [kc.users, kc.items]  # released in the finally below, whatever happens
    try:
        return _build(wh, cfg, kc, lambda: _outputs_spark(wh, cfg, kc, cached))
    finally:
        for df in cached:
            df.unpersist()


def _collect_if_small(events: DataFrame, max_rows: int):
    """The interactions as a pandas frame (``user_id``, ``item_id``, ``ts`` in microseconds) when
    there are at most ``max_rows`` of them, else None. One job either way: it stops reading at
    ``max_rows + 1`` rows, so a large table costs a bounded collect, never a full count."""
    if max_rows <= 0:
        return None
    rows = events.select("user_id", "item_id", F.unix_micros("ts").alias("ts")).limit(max_rows + 1).toArrow()
    return rows.to_pandas() if rows.num_rows <= max_rows else None


@dataclass
class _Outputs:
    """What one attempt computed: the id rows to append, the three tables, the summary counts."""

    new_user_ids: DataFrame
    new_item_ids: DataFrame
    user_sequences: DataFrame
    item_stats: DataFrame
    user_stats: DataFrame
    #: items, head_items, head_interactions, new_items, users, tail_users, new_users.
    figures: Any


def _build(wh, cfg: SequencesConfig, kc, outputs: Callable[[], _Outputs]) -> SequencesSummary:
    """Compute (``outputs``, which maps ids from the id maps it reads) and write the three tables.

    One warehouse job from reading the id maps to the last write: the id maps are appended
    against the version read (a concurrent ``sequences`` that assigned ids meanwhile is a
    conflict, never a duplicate id), and a failure undoes what the job committed. A conflict is
    retried (:data:`CONFLICT_RETRIES` times): the job reads the maps again, so ids already
    given keep their value.
    """
    _check_rows_left(cfg, kc)
    for attempt in range(CONFLICT_RETRIES + 1):
        try:
            with wh.job():
                out = outputs()
                _append_new_ids(wh, schemas.USER_IDS, out.new_user_ids, out.figures["new_users"])
                _append_new_ids(wh, schemas.ITEM_IDS, out.new_item_ids, out.figures["new_items"])
                for table, df in ((schemas.USER_SEQUENCES, out.user_sequences), (schemas.ITEM_STATS, out.item_stats),
                                  (schemas.USER_STATS, out.user_stats)):
                    wh.write(schemas.conform(df, table), table, mode="overwrite")
                return _summary(cfg, kc, out.figures)
        except ConflictError:
            if attempt == CONFLICT_RETRIES:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _outputs_spark(wh, cfg: SequencesConfig, kc: "KCore", cached: list[DataFrame]) -> _Outputs:
    """The distributed steps; every DataFrame persisted here is added to ``cached`` (the caller
    unpersists them)."""
    user_map, new_user_map, user_start = _extend_id_map(wh, schemas.USER_IDS, "user_id", "user_idx", kc.users)
    item_map, new_item_map, item_start = _extend_id_map(wh, schemas.ITEM_IDS, "item_id", "item_idx", kc.items)
    cached += [new_user_map, new_item_map]

    history = _history(kc.events, user_map, item_map)
    cached.append(history)
    item_stats = segment_items(_item_stats(kc.items, item_map, history), cfg.segments).cache()
    user_stats = segment_users(_user_stats(history), cfg.segments).cache()
    cached += [item_stats, user_stats]
    # Summary figures before writing (one job): they also say whether the id maps grew.
    fig = _figures(item_stats, user_stats, item_start, user_start)
    return _Outputs(new_user_map, new_item_map, _split(history, cfg.max_len), item_stats, user_stats, fig)


def _outputs_local(wh, cfg: SequencesConfig, kc: local.LocalKCore, events: DataFrame) -> _Outputs:
    """The same outputs from the driver's frames (:mod:`.local`), handed back as DataFrames.

    ``events``: the (at most ``local_max_rows``) interactions the driver collected, as a DataFrame:
    only the id-map rows of their users and items come to the driver, never the whole maps (which
    keep every user and item ever seen, and so grow with users whatever this run's size).
    """
    known_users, user_start = _read_id_map(wh, schemas.USER_IDS, "user_id", "user_idx", events)
    known_items, item_start = _read_id_map(wh, schemas.ITEM_IDS, "item_id", "item_idx", events)
    new_users, _ = local.new_ids(kc.users, known_users, "user_id", "user_idx", user_start)
    new_items, _ = local.new_ids(kc.items, known_items, "item_id", "item_idx", item_start)
    item_map = pd.concat([known_items, new_items], ignore_index=True)
    history = local.histories(kc.events, pd.concat([known_users, new_users], ignore_index=True), item_map)
    item_stats = local.segment_items(local.item_stats(kc.items, item_map, history), cfg.segments)
    user_stats = local.segment_users(local.user_stats(history), cfg.segments)
    fig = local.figures(item_stats, user_stats, item_start, user_start)

    def frame(rows: pd.DataFrame, table: str) -> DataFrame:
        schema = schemas.SCHEMAS[table]
        return wh.spark.createDataFrame(rows[schema.names], schema)

    return _Outputs(
        frame(new_users, schemas.USER_IDS), frame(new_items, schemas.ITEM_IDS),
        frame(local.split(history, cfg.max_len), schemas.USER_SEQUENCES),
        frame(item_stats, schemas.ITEM_STATS), frame(user_stats, schemas.USER_STATS), fig,
    )


def _read_id_map(wh, table: str, key: str, idx: str, events: DataFrame) -> tuple[pd.DataFrame, int]:
    """The rows of the id map ``table`` (``key``, ``idx``) whose key occurs in ``events``, and the
    map's largest idx (0 when empty or missing), pinned to the version read.

    The map is filtered in Spark (a semi-join with ``events``), so the driver holds at most one row
    per key of these interactions (bounded by ``sequences.local_max_rows``); rows of keys absent
    from them could only be looked up by keys that are not there, so the tables are the same.
    """
    if not wh.exists(table):
        return pd.DataFrame({key: pd.Series([], dtype=object), idx: pd.Series([], dtype=np.int32)}), 0
    known = wh.read(table, version=wh.version(table))
    schemas.require_columns(known, schemas.SCHEMAS[table], table)
    start = int(known.agg(F.max(idx)).first()[0] or 0)
    rows = known.select(key, idx).join(events.select(key), key, "left_semi").toPandas()
    return rows.astype({idx: np.int32}), start


def _check_rows_left(cfg: SequencesConfig, kc) -> None:
    """Raise :class:`InputError` when the filters left no interactions."""
    if kc.after == 0:
        rating = "" if cfg.min_rating is None else f"rating >= {cfg.min_rating} and "
        raise InputError(
            f"table {schemas.INTERACTIONS}: no interactions left after {rating}{cfg.k_core}-core filtering "
            f"({kc.before:,} rows before k-core); lower sequences.k_core"
            + ("" if cfg.min_rating is None else " or sequences.min_rating")
        )


def _history(events: DataFrame, user_map: DataFrame, item_map: DataFrame) -> DataFrame:
    """``user_id``, ``user_idx`` and ``history`` (the user's item_idx, oldest first), cached."""
    # Whole filtered history per user, oldest first; ties on ts broken by item_id (and the
    # item_idx that follows from it), so reruns give the same order.
    return (
        events.join(user_map, "user_id")
        .join(item_map, "item_id")
        .groupBy("user_id", "user_idx")
        .agg(F.sort_array(F.collect_list(F.struct("ts", "item_id", "item_idx"))).alias("_h"))
        .select("user_id", "user_idx", F.transform("_h", lambda x: x["item_idx"]).alias("history"))
        .cache()
    )


def _item_stats(items: DataFrame, item_map: DataFrame, history: DataFrame) -> DataFrame:
    """Per surviving item: ``item_id``, ``item_idx``, ``popularity`` (training occurrences,
    0 when only in validation/test) and ``interactions`` (all filtered ones)."""
    popularity = (
        history.select(F.explode(_train_part(F.col("history"))).alias("item_idx"))
        .groupBy("item_idx")
        .agg(F.count(F.lit(1)).alias("popularity"))
    )
    return (
        items.join(item_map, "item_id")
        .join(popularity, "item_idx", "left")
        .select("item_id", "item_idx", F.coalesce("popularity", F.lit(0)).cast("long").alias("popularity"),
                F.col("n").alias("interactions"))
    )


def _user_stats(history: DataFrame) -> DataFrame:
    """Per user: ``user_id``, ``user_idx`` and ``length`` of the whole filtered history."""
    return history.select("user_id", "user_idx", F.size("history").cast("int").alias("length"))


def _figures(item_stats: DataFrame, user_stats: DataFrame, item_start: int, user_start: int):
    """One row of counts for the summary: items, head_items, head_interactions, new_items,
    users, tail_users, new_users (ids above ``*_start`` are new)."""
    head, rows = F.col("segment") == schemas.HEAD, F.count(F.lit(1))
    return item_stats.agg(
        rows.alias("items"), F.count(F.when(head, 1)).alias("head_items"),
        F.sum(F.when(head, F.col("interactions"))).alias("head_interactions"),
        F.count(F.when(F.col("item_idx") > item_start, 1)).alias("new_items"),
    ).crossJoin(user_stats.agg(
        rows.alias("users"), F.count(F.when(~head, 1)).alias("tail_users"),
        F.count(F.when(F.col("user_idx") > user_start, 1)).alias("new_users"),
    )).first()


def _append_new_ids(wh, table: str, new: DataFrame, n_new: int) -> None:
    """Add the ``new`` rows to the id map ``table`` (creating it, even empty, if missing)."""
    if n_new or not wh.exists(table):
        # Append-only: rows already there are never rewritten, so ids stay put.
        wh.write(schemas.conform(new, table), table, mode="append" if wh.exists(table) else "overwrite")


def _summary(cfg: SequencesConfig, kc, fig) -> SequencesSummary:
    """The :class:`SequencesSummary` from the k-core result and the :func:`_figures` row."""
    n_users, n_items = int(fig["users"]), int(fig["items"])
    return SequencesSummary(
        users=n_users,
        items=n_items,
        interactions=kc.after,
        sparsity=1.0 - kc.after / (n_users * n_items),
        head_items=int(fig["head_items"]),
        head_item_interaction_share=float(fig["head_interactions"] or 0) / kc.after,
        tail_users=int(fig["tail_users"]),
        tail_user_share=int(fig["tail_users"]) / n_users,
        rows_before_k_core=kc.before,
        k_core=cfg.k_core,
        k_core_rounds=kc.rounds,
        new_users=int(fig["new_users"]),
        new_items=int(fig["new_items"]),
        segment_method=cfg.segments.method,
    )


# --------------------------------------------------------------------------- steps


@dataclass
class KCore:
    """Result of :func:`k_core`."""

    #: The interactions that survive.
    events: DataFrame
    #: ``user_id`` / ``item_id`` with ``n`` (interactions) and ``first_ts``, of the survivors (cached).
    users: DataFrame
    items: DataFrame
    #: Rows before and after filtering; passes run (the last one finds nothing to remove).
    before: int
    after: int
    rounds: int


def k_core(events: DataFrame, k: int) -> KCore:
    """Iteratively keep only users and items with at least ``k`` interactions.

    Removing a user can push an item under ``k`` and the other way round, so passes repeat
    until nothing is under ``k``. Each pass aggregates per user and per item (one job; the
    small aggregates are cached and double as the survivors' description when the pass finds
    nothing to remove); if something is under ``k``, the rows of the users and items that
    stay are kept through joins with those aggregates (small: Spark broadcasts them, the
    interactions are not shuffled) and checkpointed, so the plan stays one pass deep.

    Args:
        events: rows with ``user_id``, ``item_id`` and ``ts`` (one row per interaction).
        k: the core size; ``k <= 1`` keeps everything.
    """
    def entities(df: DataFrame, key: str) -> DataFrame:
        return df.groupBy(key).agg(F.count(F.lit(1)).alias("n"), F.min("ts").alias("first_ts")).cache()

    current, before, rounds = events, None, 0
    while True:
        users, items = entities(current, "user_id"), entities(current, "item_id")
        u = users.agg(F.sum("n").alias("rows"), F.min("n").alias("min_user"))
        i = items.agg(F.min("n").alias("min_item"))
        rows, min_user, min_item = u.crossJoin(i).first()
        rows, rounds = rows or 0, rounds + 1
        before = rows if before is None else before
        if rows == 0 or (min_user >= k and min_item >= k):
            return KCore(current, users, items, before, rows, rounds)
        current = (
            current.join(users.where(F.col("n") >= k).select("user_id"), "user_id", "left_semi")
            .join(items.where(F.col("n") >= k).select("item_id"), "item_id", "left_semi")
            .localCheckpoint()
        )
        users.unpersist()
        items.unpersist()


def _extend_id_map(wh, table: str, key: str, idx: str, entities: DataFrame) -> tuple[DataFrame, DataFrame, int]:
    """The id map of ``table`` extended by the ``entities`` (``key``, ``first_ts``) it lacks.

    New entities get ``max(idx) + 1, ...`` ordered by ``first_ts`` then ``key``; ids of
    entities that are no longer in ``entities`` stay reserved.

    Returns:
        (the whole map: known and new rows; the new rows only (cached); the old max id).
    """
    if wh.exists(table):
        # Pinned to the version read: the lazy plans below must not see our own append.
        known = wh.read(table, version=wh.version(table))
        schemas.require_columns(known, schemas.SCHEMAS[table], table)
        known = known.select(key, idx)
        start = int(known.agg(F.max(idx)).first()[0] or 0)
    else:
        known, start = wh.spark.createDataFrame([], schemas.SCHEMAS[table]), 0
    fresh = entities.join(known, key, "left_anti").select(key, "first_ts")
    new = (
        rank_in_order(fresh, [F.col("first_ts").asc(), F.col(key).asc()])
        .select(key, (F.lit(start) + F.col("_rank")).cast("int").alias(idx))
        .cache()
    )
    return known.unionByName(new), new, start


def _train_part(history: Column) -> Column:
    # LLM-ESR: the last two items are validation and test; a user with fewer than three
    # items has no validation/test and trains on everything.
    return F.when(F.size(history) >= 3, F.slice(history, 1, F.size(history) - 2)).otherwise(history)


def _split(history: DataFrame, max_len: int) -> DataFrame:
    n = F.size("history")
    seq = F.slice("history", F.greatest(n - max_len + 1, F.lit(1)), max_len)
    out = history.select("user_id", "user_idx", seq.alias("item_idxs"))
    m = F.size("item_idxs")
    return out.select(
        "user_id",
        "user_idx",
        "item_idxs",
        _train_part(F.col("item_idxs")).alias("train_item_idxs"),
        F.when(m >= 3, F.element_at("item_idxs", -2)).cast("int").alias("valid_item_idx"),
        F.when(m >= 3, F.element_at("item_idxs", -1)).cast("int").alias("test_item_idx"),
    )


# --------------------------------------------------------------------------- segments


def segment_items(item_stats: DataFrame, cfg: SegmentConfig) -> DataFrame:
    """Add ``segment`` (head/tail) to rows with ``item_idx`` and ``popularity``.

    ``pareto``: the ``head_item_share`` most popular items (ties by item_idx) are head;
    ``threshold``: tail if popularity < ``item_threshold``; ``share``: the most popular
    items that together hold ``head_interaction_share`` of the popularity are head.
    Items with zero popularity are always tail.
    """
    head = _head(item_stats, "popularity", "item_idx", cfg.method, cfg.head_item_share,
                 cfg.item_threshold, cfg.head_interaction_share)
    return head.withColumn("segment", F.when(F.col("_head") & (F.col("popularity") > 0), F.lit(schemas.HEAD))
                           .otherwise(F.lit(schemas.TAIL))).drop("_head")


def segment_users(user_stats: DataFrame, cfg: SegmentConfig) -> DataFrame:
    """Add ``segment`` (head/tail) to rows with ``user_idx`` and ``length``.

    ``pareto``: the ``head_user_share`` longest histories (ties by user_idx) are head;
    ``threshold``: tail if length < ``user_threshold``; ``share``: the longest histories
    that together hold ``head_interaction_share`` of the interactions are head.
    """
    head = _head(user_stats, "length", "user_idx", cfg.method, cfg.head_user_share,
                 cfg.user_threshold, cfg.head_interaction_share)
    return head.withColumn("segment", F.when(F.col("_head"), F.lit(schemas.HEAD))
                           .otherwise(F.lit(schemas.TAIL))).drop("_head")


def _head(df: DataFrame, value: str, idx: str, method: str, head_share: float, threshold: int,
          interaction_share: float) -> DataFrame:
    if method == "threshold":
        return df.withColumn("_head", F.col(value) >= F.lit(threshold))
    ranked = rank_in_order(df, [F.col(value).desc(), F.col(idx).asc()], weight=value)
    if method == "pareto":
        # Round half up: 20% of 12,101 items is 2,420 head items.
        cut = F.floor(F.lit(float(head_share)) * F.col("_total") + F.lit(0.5))
        flag = F.col("_rank") <= cut
    elif method == "share":
        # The smallest prefix that reaches the share: include the item that crosses it.
        flag = (F.col("_cum") - F.col(value)) < F.lit(float(interaction_share)) * F.col("_total_weight")
    else:  # pragma: no cover - config validation rejects it
        raise ConfigError(f"config key sequences.segments.method: unknown {method!r}")
    return ranked.withColumn("_head", flag).drop("_rank", "_cum", "_total", "_total_weight")


# --------------------------------------------------------------------------- ranking


def rank_in_order(df: DataFrame, order: list[Column], weight: str | None = None) -> DataFrame:
    """Add ``_rank`` (1..n in ``order``), ``_total`` (n) and, with ``weight``, ``_cum`` (running
    sum of ``weight`` up to and including the row) and ``_total_weight``.

    ``order`` must be a total order (end with a unique column). Works without moving all
    rows to one partition: a global sort gives ordered ranges, each range is ranked on its
    own, and the sizes (and sums) of the ranges before it are added.
    """
    part = "_part"
    # The checkpoint pins the partition ids: both uses below must see the same ones.
    ordered = df.orderBy(*order).withColumn(part, F.spark_partition_id()).localCheckpoint()
    w = Window.partitionBy(part).orderBy(*order).rowsBetween(Window.unboundedPreceding, Window.currentRow)
    out = ordered.withColumn("_rank", F.row_number().over(Window.partitionBy(part).orderBy(*order)))
    sums = [F.count(F.lit(1)).alias("_n")]
    if weight is not None:
        out = out.withColumn("_cum", F.sum(weight).over(w))
        sums.append(F.sum(weight).alias("_w"))
    # One row per partition: a global window here is tiny.
    sizes = ordered.groupBy(part).agg(*sums)
    before = Window.orderBy(part).rowsBetween(Window.unboundedPreceding, -1)
    everything = Window.orderBy(part).rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    cols = [part, F.coalesce(F.sum("_n").over(before), F.lit(0)).alias("_n_before"),
            F.sum("_n").over(everything).alias("_total")]
    if weight is not None:
        cols += [F.coalesce(F.sum("_w").over(before), F.lit(0)).alias("_w_before"),
                 F.sum("_w").over(everything).alias("_total_weight")]
    offsets = sizes.select(*cols)
    out = out.join(F.broadcast(offsets), part).withColumn("_rank", F.col("_rank") + F.col("_n_before"))
    if weight is not None:
        out = out.withColumn("_cum", F.col("_cum") + F.col("_w_before")).drop("_w_before")
    return out.drop(part, "_n_before")


def _check_config(cfg: SequencesConfig) -> None:
    if cfg.k_core < 1:
        raise ConfigError(f"config key sequences.k_core: must be >= 1, got {cfg.k_core}")
    if cfg.max_len < 3:
        raise ConfigError(f"config key sequences.max_len: must be >= 3 (train, valid, test), got {cfg.max_len}")
    s = cfg.segments
    for name in ("head_item_share", "head_user_share", "head_interaction_share"):
        v = getattr(s, name)
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"config key sequences.segments.{name}: must be in [0, 1], got {v}")
    if s.method not in ("pareto", "threshold", "share"):
        raise ConfigError(f"config key sequences.segments.method: unknown {s.method!r}")
