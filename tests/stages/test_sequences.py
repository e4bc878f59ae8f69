"""sequences: rating threshold, iterative k-core, stable ids, ordering, leave-one-out, segments."""
from __future__ import annotations

import dataclasses

import pytest
from chispa import assert_df_equality
from longtail.core import schemas
from longtail.core.config import SegmentConfig, SequencesConfig
from longtail.core.errors import ConfigError, InputError
from longtail.stages.sequences import (
    SequencesSummary,
    local,
    rank_in_order,
    run_sequences,
    segment_items,
    segment_users,
)
from pyspark.sql import functions as F


def _load(wh, rows):
    """Write ``interactions`` from (user_id, item_id, unix seconds, rating) tuples."""
    df = wh.spark.createDataFrame(rows, "user_id string, item_id string, t long, rating double")
    df = df.withColumn("ts", F.timestamp_seconds("t"))
    wh.write(schemas.conform(df, schemas.INTERACTIONS), schemas.INTERACTIONS, mode="overwrite")


def _rows(wh, table, key):
    return {r[key]: r.asDict() for r in wh.read(table).collect()}


def _sequences(wh):
    return {r.user_id: r.asDict() for r in wh.read(schemas.USER_SEQUENCES).collect()}


@pytest.mark.spark
@pytest.mark.slow
def test_k_core_repeats_passes_until_nothing_is_removed(warehouse):
    # 2-core: d is removed first, which leaves u4 with one item, which leaves c with one
    # user, which leaves u3 with one item: four removing passes and a fifth that confirms.
    _load(warehouse, [
        ("u1", "a", 1, None), ("u1", "b", 2, None),
        ("u2", "a", 1, None), ("u2", "b", 2, None),
        ("u3", "b", 3, None), ("u3", "c", 4, None),
        ("u4", "c", 5, None), ("u4", "d", 6, None),
    ])
    summary = run_sequences(warehouse, SequencesConfig(k_core=2))
    assert set(_sequences(warehouse)) == {"u1", "u2"}
    assert set(_rows(warehouse, schemas.ITEM_STATS, "item_id")) == {"a", "b"}
    assert (summary.users, summary.items, summary.interactions) == (2, 2, 4)
    assert (summary.rows_before_k_core, summary.k_core_rounds) == (8, 5)


@pytest.mark.spark
def test_rating_threshold_keeps_rating_at_or_above_and_drops_null_ratings(warehouse):
    _load(warehouse, [
        ("u1", "a", 1, 5.0), ("u1", "b", 2, 4.0), ("u1", "c", 3, 3.9), ("u1", "d", 4, None),
        ("u2", "c", 1, 1.0),
    ])
    summary = run_sequences(warehouse, SequencesConfig(k_core=1, min_rating=4.0))
    seqs = _sequences(warehouse)
    assert set(seqs) == {"u1"}
    assert summary.interactions == 2
    items = _rows(warehouse, schemas.ITEM_STATS, "item_id")
    assert [items[i]["item_idx"] for i in ("a", "b")] == seqs["u1"]["item_idxs"]


@pytest.mark.spark
def test_equal_timestamps_are_ordered_by_item_id_and_first_run_ids_are_dense(warehouse):
    # Written out of order; u1's b, a, c share one timestamp.
    _load(warehouse, [
        ("u1", "c", 10, None), ("u1", "b", 10, None), ("u2", "x", 1, None),
        ("u1", "z", 5, None), ("u1", "a", 10, None), ("u2", "b", 2, None),
    ])
    run_sequences(warehouse, SequencesConfig(k_core=1))
    items = {k: v["item_idx"] for k, v in _rows(warehouse, schemas.ITEM_STATS, "item_id").items()}
    # Ids by first interaction time, then id: x@1, b@2, z@5, a@10, c@10.
    assert items == {"x": 1, "b": 2, "z": 3, "a": 4, "c": 5}
    seqs = _sequences(warehouse)
    assert seqs["u1"]["item_idxs"] == [items[i] for i in ("z", "a", "b", "c")]
    assert {u: s["user_idx"] for u, s in seqs.items()} == {"u2": 1, "u1": 2}


@pytest.mark.spark
def test_leave_one_out_split_and_users_with_fewer_than_three_items(warehouse, spark):
    _load(warehouse, [
        *[("long", f"i{k}", k, None) for k in range(1, 6)],
        ("three", "i1", 1, None), ("three", "i2", 2, None), ("three", "i3", 3, None),
        ("two", "i4", 10, None), ("two", "i5", 11, None),
    ])
    run_sequences(warehouse, SequencesConfig(k_core=1))
    expected = spark.createDataFrame(
        [
            ("long", 1, [1, 2, 3, 4, 5], [1, 2, 3], 4, 5),
            ("three", 2, [1, 2, 3], [1], 2, 3),
            ("two", 3, [4, 5], [4, 5], None, None),
        ],
        schemas.USER_SEQUENCES_SCHEMA,
    )
    assert_df_equality(warehouse.read(schemas.USER_SEQUENCES), expected, ignore_row_order=True,
                       ignore_nullable=True)


@pytest.mark.spark
def test_truncation_keeps_latest_items_and_popularity_counts_whole_history_training_part(warehouse):
    # One user with i1..i6 in time order, another with i6 once so i6 is known but not trained on.
    _load(warehouse, [*[("u1", f"i{k}", k, None) for k in range(1, 7)],
                      ("u2", "i6", 1, None), ("u2", "i1", 2, None), ("u2", "i2", 3, None)])
    run_sequences(warehouse, SequencesConfig(k_core=1, max_len=3,
                                             segments=SegmentConfig(method="threshold", item_threshold=0)))
    items = _rows(warehouse, schemas.ITEM_STATS, "item_id")
    idx = {k: v["item_idx"] for k, v in items.items()}
    u1 = _sequences(warehouse)["u1"]
    assert u1["item_idxs"] == [idx["i4"], idx["i5"], idx["i6"]]
    assert (u1["train_item_idxs"], u1["valid_item_idx"], u1["test_item_idx"]) == ([idx["i4"]], idx["i5"], idx["i6"])
    # Training parts of the whole histories: u1 -> i1..i4, u2 -> i6.
    pop = {k: v["popularity"] for k, v in items.items()}
    assert pop == {"i1": 1, "i2": 1, "i3": 1, "i4": 1, "i5": 0, "i6": 1}
    # Threshold 0 makes every item head, except the one never seen in training.
    assert {k for k, v in items.items() if v["segment"] == "tail"} == {"i5"}
    lengths = {k: v["length"] for k, v in _rows(warehouse, schemas.USER_STATS, "user_id").items()}
    assert lengths == {"u1": 6, "u2": 3}  # the whole filtered history, not the truncated one


@pytest.mark.spark
@pytest.mark.slow
def test_ids_stay_stable_across_reruns_new_ones_are_appended_and_dropped_ones_stay_reserved(warehouse):
    _load(warehouse, [("u1", "a", 1, None), ("u1", "b", 2, None), ("u1", "c", 3, None),
                      ("u2", "c", 4, None), ("u2", "a", 5, None)])
    first = run_sequences(warehouse, SequencesConfig(k_core=1))
    assert (first.new_users, first.new_items) == (2, 3)
    items1 = {r.item_id: r.item_idx for r in warehouse.read(schemas.ITEM_IDS).collect()}
    assert items1 == {"a": 1, "b": 2, "c": 3}

    # c disappears; a new user u0 (alphabetically first, but later in time) and a new item d arrive.
    _load(warehouse, [("u1", "a", 1, None), ("u1", "b", 2, None), ("u2", "a", 5, None),
                      ("u0", "d", 7, None), ("u0", "a", 8, None), ("u2", "d", 6, None)])
    second = run_sequences(warehouse, SequencesConfig(k_core=1))
    assert (second.new_users, second.new_items) == (1, 1)
    users = {r.user_id: r.user_idx for r in warehouse.read(schemas.USER_IDS).collect()}
    assert users == {"u1": 1, "u2": 2, "u0": 3}
    items2 = {r.item_id: r.item_idx for r in warehouse.read(schemas.ITEM_IDS).collect()}
    assert items2 == {"a": 1, "b": 2, "c": 3, "d": 4}  # 3 stays c's, unused
    stats = {k: v["item_idx"] for k, v in _rows(warehouse, schemas.ITEM_STATS, "item_id").items()}
    assert stats == {"a": 1, "b": 2, "d": 4}
    seqs = _sequences(warehouse)
    assert seqs["u2"]["item_idxs"] == [1, 4] and seqs["u0"]["user_idx"] == 3

    # Same input again: nothing new, id maps untouched.
    versions = (warehouse.version(schemas.USER_IDS), warehouse.version(schemas.ITEM_IDS))
    third = run_sequences(warehouse, SequencesConfig(k_core=1))
    assert (third.new_users, third.new_items) == (0, 0)
    assert (warehouse.version(schemas.USER_IDS), warehouse.version(schemas.ITEM_IDS)) == versions
    assert _sequences(warehouse) == seqs


@pytest.mark.spark
@pytest.mark.slow
def test_a_concurrent_run_that_assigned_ids_first_is_retried_without_duplicate_ids(warehouse):
    from longtail.core import faults
    from longtail.core.tables import Warehouse

    _load(warehouse, [("u1", "a", 1, None), ("u1", "b", 2, None), ("u2", "b", 3, None), ("u2", "c", 4, None)])
    other, raced = Warehouse(warehouse.spark, warehouse.root), []

    def race(name):  # another `sequences` assigns the same new ids while ours waits to commit them
        if name == f"commit:{schemas.USER_IDS}" and not raced:
            raced.append(None)  # once: the other run passes this point too
            raced[0] = run_sequences(other, SequencesConfig(k_core=1))

    faults.install(race)
    try:
        ours = run_sequences(warehouse, SequencesConfig(k_core=1))
    finally:
        faults.install(None)
    assert raced and raced[0].new_users == 2
    assert ours.new_users == 0  # retried: the ids were already there
    users = [(r.user_id, r.user_idx) for r in warehouse.read(schemas.USER_IDS).collect()]
    items = [(r.item_id, r.item_idx) for r in warehouse.read(schemas.ITEM_IDS).collect()]
    assert sorted(users) == [("u1", 1), ("u2", 2)] and sorted(items) == [("a", 1), ("b", 2), ("c", 3)]
    assert {k: v["user_idx"] for k, v in _sequences(warehouse).items()} == {"u1": 1, "u2": 2}


def _generated(seed: int, users: int, drop_every: int = 0) -> list[tuple]:
    """Interactions with what tells the paths apart if anything does: equal timestamps, repeated
    (user, item) pairs, null and low ratings, users and items near the k-core bound."""
    import random

    rng = random.Random(seed)
    rows = []
    for u in range(users):
        if drop_every and u % drop_every == 0:
            continue
        for _ in range(rng.randint(1, 9)):
            item = f"i{int(rng.paretovariate(1.2)) % 40:02d}"
            rating = rng.choice([None, 1.0, 3.0, 4.0, 5.0])
            rows.append((f"u{u:03d}", item, rng.randint(1, 30), rating))
    return rows


@pytest.mark.spark
@pytest.mark.slow
def test_the_driver_path_and_the_spark_path_write_the_same_tables(spark, tmp_path):
    from longtail.core.tables import Warehouse

    from tests.faults.stages import snapshot

    roots = {name: str(tmp_path / name) for name in ("driver", "spark")}
    summaries = {}
    # The second run on changed data (some users gone, new ones) extends the id maps.
    for seed, drop_every, method in ((1, 0, "share"), (2, 7, "pareto")):
        cfg = SequencesConfig(k_core=2, max_len=4, min_rating=3.0, segments=SegmentConfig(method=method))
        for name, max_rows in (("driver", cfg.local_max_rows), ("spark", 0)):
            wh = Warehouse(spark, roots[name])
            _load(wh, _generated(seed, 60, drop_every))
            summaries[name] = run_sequences(wh, dataclasses.replace(cfg, local_max_rows=max_rows))
        assert summaries["driver"] == summaries["spark"]
        assert snapshot(roots["driver"]) == snapshot(roots["spark"])
    assert summaries["driver"].new_users > 0 and summaries["driver"].users > 20


@pytest.mark.spark
def test_the_driver_path_fetches_only_the_id_rows_of_this_runs_users_and_items(warehouse, monkeypatch):
    # The id maps keep every user ever seen: the driver path must not bring them all to the driver.
    import longtail.stages.sequences as sequences

    _load(warehouse, [(f"u{n}", item, 10 * n + t, None) for n in range(6) for t, item in enumerate("ab")])
    run_sequences(warehouse, SequencesConfig(k_core=1))
    _load(warehouse, [("u0", "a", 1, None), ("u0", "c", 2, None), ("new", "a", 3, None)])
    fetched, real = {}, sequences._read_id_map

    def spy(wh, table, key, idx, events):
        rows, start = real(wh, table, key, idx, events)
        fetched[table] = (set(rows[key]), start)
        return rows, start

    monkeypatch.setattr(sequences, "_read_id_map", spy)
    summary = run_sequences(warehouse, SequencesConfig(k_core=1))
    assert fetched == {schemas.USER_IDS: ({"u0"}, 6), schemas.ITEM_IDS: ({"a"}, 2)}
    assert (summary.new_users, summary.new_items) == (1, 1)
    users = {r["user_id"]: r["user_idx"] for r in warehouse.read(schemas.USER_IDS).collect()}
    assert len(users) == 7 and users["u0"] == 1 and users["new"] == 7  # ids kept, the new one after the max
    assert {r["item_id"]: r["item_idx"] for r in warehouse.read(schemas.ITEM_IDS).collect()}["c"] == 3


@pytest.mark.spark
def test_above_local_max_rows_every_step_runs_in_spark(warehouse, monkeypatch):
    import longtail.stages.sequences as sequences

    _load(warehouse, [("u1", "a", 1, None), ("u1", "b", 2, None), ("u2", "a", 3, None)])
    monkeypatch.setattr(sequences.local, "k_core_frame", lambda *a: pytest.fail("the driver path ran"))
    summary = run_sequences(warehouse, SequencesConfig(k_core=1, local_max_rows=2))
    assert (summary.users, summary.interactions) == (2, 3)


@pytest.mark.spark
def test_nothing_left_after_filtering_is_an_input_error_and_writes_nothing(warehouse):
    _load(warehouse, [("u1", "a", 1, None), ("u1", "b", 2, None), ("u2", "a", 3, None)])
    with pytest.raises(InputError, match=r"interactions.*5-core"):
        run_sequences(warehouse, SequencesConfig(k_core=5))
    for table in (schemas.USER_SEQUENCES, schemas.ITEM_STATS, schemas.USER_STATS, schemas.USER_IDS):
        assert not warehouse.exists(table)


@pytest.mark.parametrize("cfg, key", [
    (SequencesConfig(max_len=2), "sequences.max_len"),
    (SequencesConfig(k_core=0), "sequences.k_core"),
    (SequencesConfig(segments=SegmentConfig(head_item_share=1.5)), "sequences.segments.head_item_share"),
])
def test_bad_config_is_rejected_before_any_work(cfg, key):
    with pytest.raises(ConfigError, match=key):
        run_sequences(None, cfg)


# ---------------------------------------------------------------------------- segments

ITEM_POP = [50, 30, 30, 10, 5, 5, 3, 2, 0, 0]  # item_idx 1..10
USER_LEN = [20, 5, 8, 8, 3]  # user_idx 1..5


def _segments(spark, method, **kw):
    """Head items and users by the Spark functions, checked equal to the driver path's."""
    import pandas as pd

    cfg = SegmentConfig(method=method, **kw)
    items = spark.createDataFrame([(i + 1, p) for i, p in enumerate(ITEM_POP)], "item_idx int, popularity long")
    users = spark.createDataFrame([(i + 1, n) for i, n in enumerate(USER_LEN)], "user_idx int, length int")
    head_items = {r.item_idx for r in segment_items(items, cfg).where("segment = 'head'").collect()}
    head_users = {r.user_idx for r in segment_users(users, cfg).where("segment = 'head'").collect()}
    # The rows in another order: the driver path must not depend on it.
    items_pd = pd.DataFrame({"item_idx": range(1, 11), "popularity": ITEM_POP}).iloc[::-1]
    users_pd = pd.DataFrame({"user_idx": range(1, 6), "length": USER_LEN}).iloc[::-1]
    local_items = local.segment_items(items_pd, cfg)
    local_users = local.segment_users(users_pd, cfg)
    assert set(local_items.loc[local_items.segment == "head", "item_idx"]) == head_items
    assert set(local_users.loc[local_users.segment == "head", "user_idx"]) == head_users
    return head_items, head_users


@pytest.mark.spark
def test_pareto_segments_take_the_top_share_with_ties_broken_by_index(spark):
    # 20% of 10 items: 2; items 2 and 3 tie at 30, the lower index wins. 20% of 5 users: 1.
    assert _segments(spark, "pareto") == ({1, 2}, {1})


@pytest.mark.spark
def test_threshold_segments_follow_llm_esr_rule(spark):
    assert _segments(spark, "threshold", item_threshold=10, user_threshold=8) == ({1, 2, 3, 4}, {1, 3, 4})


@pytest.mark.spark
def test_share_segments_are_the_smallest_prefix_reaching_the_share(spark):
    # Items: 80% of 135 = 108 is reached by 50 + 30 + 30. Users: 50% of 44 = 22 by 20 + 8.
    assert _segments(spark, "share", head_interaction_share=0.8) == ({1, 2, 3}, {1, 3, 4})
    assert _segments(spark, "share", head_interaction_share=0.5)[1] == {1, 3}


@pytest.mark.spark
def test_rank_in_order_is_global_across_partitions(spark):
    before = {k: spark.conf.get(k) for k in ("spark.sql.shuffle.partitions",
                                              "spark.sql.adaptive.coalescePartitions.enabled")}
    spark.conf.set("spark.sql.shuffle.partitions", "4")
    spark.conf.set("spark.sql.adaptive.coalescePartitions.enabled", "false")
    try:
        df = spark.createDataFrame([(i, (i * 7) % 5) for i in range(40)], "id int, w int").repartition(3)
        rows = rank_in_order(df, [F.col("w").desc(), F.col("id").asc()], weight="w").collect()
    finally:
        for k, v in before.items():
            spark.conf.set(k, v)
    rows.sort(key=lambda r: r._rank)
    expected = sorted(((i, (i * 7) % 5) for i in range(40)), key=lambda t: (-t[1], t[0]))
    assert [(r.id, r.w) for r in rows] == expected
    assert [r._rank for r in rows] == list(range(1, 41))
    running = 0
    for r in rows:
        running += r.w
        assert (r._cum, r._total, r._total_weight) == (running, 40, sum(t[1] for t in expected))


def test_summary_prints_the_figures():
    s = SequencesSummary(users=22363, items=12101, interactions=198502, sparsity=0.99927, head_items=2420,
                         head_item_interaction_share=0.55, tail_users=17890, tail_user_share=0.8,
                         rows_before_k_core=198502, k_core=5, k_core_rounds=1, new_users=22363,
                         new_items=12101, segment_method="pareto")
    text = str(s)
    for figure in ("22,363", "12,101", "198,502", "99.9270%", "55.0%", "17,890", "80.0%", "pareto"):
        assert figure in text
