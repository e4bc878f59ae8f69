"""Similar users: blockwise exact top-N against a brute-force numpy reference, then through Spark."""
from __future__ import annotations

import os

import numpy as np
import pytest
from longtail.core import schemas
from longtail.core.config import NeighborsConfig
from longtail.core.errors import ConfigError, SchemaError
from longtail.stages import neighbors as nb


def brute_force(x: np.ndarray, idx: np.ndarray, n: int):
    """Reference: full float64 similarity matrix, self excluded, (similarity desc, idx asc)."""
    order = np.argsort(idx)
    x, idx = nb.normalize_rows(x[order]).astype(np.float64), idx[order]
    sims = (x @ x.T).astype(np.float32)
    np.fill_diagonal(sims, -np.inf)
    rank = np.lexsort((np.broadcast_to(idx, sims.shape), -sims), axis=1)[:, :n]
    return idx, np.take_along_axis(sims, rank, 1), idx[rank]


def exact_top_n(vectors: np.ndarray, idx: np.ndarray, ids: np.ndarray, n: int, block_size: int):
    """The stage's blockwise search in one process, without Spark.

    Returns ``(sims, idx, ids)`` (users, n) for the query users in ascending ``idx`` order;
    missing entries have similarity ``-inf`` and id None.
    """
    order = np.argsort(idx, kind="stable")
    x = nb.normalize_rows(vectors[order])
    idx, ids = np.asarray(idx, dtype=np.int64)[order], np.asarray(ids, dtype=object)[order]
    blocks = []
    for s in range(0, len(x), block_size):
        xb = x[s : s + block_size]
        blocks.append((xb, idx[s : s + block_size], ids[s : s + block_size], nb.duplicate_of(xb)))
    parts = [nb.top_n_for_block(b[0], b[1], blocks, n) for b in blocks]
    if not parts:
        return np.zeros((0, n), np.float32), np.zeros((0, n), np.int64), np.zeros((0, n), object)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def random_users(seed: int, users: int, dim: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((users, dim)).astype(np.float32)
    # Duplicated users (identical texts), exact ties of distinct users, and empty-text users.
    x[rng.choice(users, min(25, users // 4), replace=False)] = x[0]
    x[rng.choice(users, min(10, users // 6), replace=False)] = 0.0
    idx = rng.permutation(users * 3)[:users].astype(np.int64)  # gaps and any order
    return x, idx


def test_top_k_columns_breaks_ties_towards_smaller_columns():
    scores = np.array([[0.5, 0.9, 0.5, 0.5, 0.1], [1.0, 1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    assert nb.top_k_columns(scores, 3).tolist() == [[0, 1, 2], [0, 1, 2]]
    assert nb.top_k_columns(scores, 9).shape == (2, 5)


def test_duplicate_of_points_at_first_identical_row():
    x = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [2, 2]], dtype=np.float32)
    assert nb.duplicate_of(x).tolist() == [0, 1, 0, 1, 4]


@pytest.mark.parametrize("users,dim,n,block", [(300, 16, 10, 64), (257, 8, 5, 300), (120, 32, 12, 7), (12, 4, 20, 5)])
def test_blockwise_exact_top_n_equals_brute_force(users, dim, n, block):
    x, idx = random_users(users + dim, users, dim)
    ids = np.array([f"user{i}" for i in idx], dtype=object)
    sims, got_idx, got_ids = exact_top_n(x, idx, ids, n, block)
    ref_idx, ref_sims, ref_nbrs = brute_force(x, idx, n)
    k = min(n, users - 1)
    assert np.array_equal(got_idx[:, :k], ref_nbrs[:, :k])
    np.testing.assert_allclose(sims[:, :k], ref_sims[:, :k], atol=1e-6)
    assert (got_idx[:, :k] != ref_idx[:, None]).all(), "a user is never its own neighbour"
    assert np.isneginf(sims[:, k:]).all() and (got_ids[:, k:] == None).all()  # noqa: E711
    assert got_ids[0, 0] == f"user{got_idx[0, 0]}"


def test_ties_between_identical_users_go_to_the_smaller_index():
    x = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [1, 0]], dtype=np.float32)
    idx = np.array([40, 30, 20, 10, 0])
    sims, got, _ = exact_top_n(x, idx, idx.astype(str).astype(object), 2, block_size=2)
    by_user = dict(zip(sorted(idx), got.tolist()))
    assert by_user[0] == [20, 30] and by_user[20] == [0, 30] and by_user[40] == [0, 20]
    assert by_user[10] == [0, 20]  # orthogonal to everyone: similarity 0 ties, smallest idx
    np.testing.assert_allclose(sims[0], [1.0, 1.0])


# --------------------------------------------------------------------------- ivf, in one process


def planted_users(seed: int, users: int, dim: int, topics: int, spread: float = 0.3):
    """Users near one of ``topics`` random directions (neighbours exist), shuffled ``user_idx``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, dim))
    x = centres[rng.integers(0, topics, users)] + spread * rng.standard_normal((users, dim))
    return x.astype(np.float32), rng.permutation(users * 2)[:users].astype(np.int64)


def ivf_top_n(vectors, idx, ids, n, lists, probe, block_size, tmp):
    """The ivf method's task code in one process (fit, assign, stage buckets under ``tmp``, search
    them); returns ``(sims, ids)`` in ascending ``idx`` order, as :func:`exact_top_n`."""
    import pandas as pd
    from longtail.ranking import ivf

    frame = pd.DataFrame({"user_id": list(ids), "embedding": list(vectors), "user_idx": np.asarray(idx)})
    unit = nb.normalize_rows(vectors[np.argsort(idx)])
    centroids = ivf.order_centroids(ivf.fit_centroids(unit, lists, seed=nb.IVF_SEED), seed=nb.IVF_SEED)
    per_bucket = max(1, round(block_size * len(centroids) / len(frame)))
    assigned = nb.assign_lists(frame, centroids, probe, per_bucket)
    staged = [nb.write_bucket(str(tmp), group) for _, group in assigned.groupby("bucket")]
    members = {int(k): int(c) for row in staged for k, c in zip(row["lists"][0], row["counts"][0])}
    buckets = sorted(int(row["block"][0]) for row in staged)
    rows = pd.concat(nb.search_staged_buckets(str(tmp), buckets, members, per_bucket, n, block_size))
    got = {u: (list(nbrs), list(sims)) for u, nbrs, sims in zip(rows["user_id"], rows["neighbors"], rows["similarities"])}
    in_order = [str(ids[i]) for i in np.argsort(idx, kind="stable")]
    sims = np.array([got[u][1] + [-np.inf] * (n - len(got[u][1])) for u in in_order], dtype=np.float32)
    found = np.array([got[u][0] + [None] * (n - len(got[u][0])) for u in in_order], dtype=object)
    return sims, found


def recall_at(exact_ids, approx_ids) -> float:
    return float(np.mean([len(set(e) & set(a)) / len(e) for e, a in zip(exact_ids, approx_ids)]))


@pytest.mark.parametrize("block", [7, 64])  # 7: lists cut into pieces, buckets evicted from the task's cache
def test_ivf_probing_every_list_equals_the_exact_search(block, tmp_path):
    pytest.importorskip("faiss")
    x, idx = random_users(11, 200, 12)  # duplicates, zero users, ties: the exact search's hard cases
    ids = np.array([f"user{i}" for i in idx], dtype=object)
    want_sims, _, want_ids = exact_top_n(x, idx, ids, 10, 64)
    sims, got = ivf_top_n(x, idx, ids, 10, lists=9, probe=9, block_size=block, tmp=tmp_path)
    assert np.array_equal(got, want_ids)
    assert np.array_equal(sims, want_sims)


def test_ivf_recall_on_planted_users_is_high_at_a_small_probe(tmp_path):
    pytest.importorskip("faiss")
    x, idx = planted_users(2, 2000, 16, topics=30)
    ids = np.array([f"user{i}" for i in idx], dtype=object)
    _, _, want = exact_top_n(x, idx, ids, 10, 512)
    # 179 lists (4 sqrt(2000)), 16 probed: each user meets about 9% of the others.
    _, got = ivf_top_n(x, idx, ids, 10, lists=179, probe=16, block_size=512, tmp=tmp_path / "16")
    assert recall_at(want, got) >= 0.95
    _, few = ivf_top_n(x, idx, ids, 10, lists=179, probe=1, block_size=512, tmp=tmp_path / "1")
    assert recall_at(want, few) < 0.8  # the probe is what buys the recall


def test_auto_is_exact_up_to_the_threshold_then_ivf():
    assert nb.choose_method("auto", 22_363) == "exact"  # Beauty keeps its lists
    assert nb.choose_method("auto", nb.EXACT_MAX_USERS) == "exact"
    assert nb.choose_method("auto", nb.EXACT_MAX_USERS + 1) == "ivf"
    assert nb.choose_method("faiss", 10) == "faiss" and nb.choose_method("ivf", 10) == "ivf"


# --------------------------------------------------------------------------- Spark


def _write_users(wh, x, idx):
    spark = wh.spark
    emb = [(f"user{i}", [float(v) for v in row], "test", "h") for i, row in zip(idx, x)]
    wh.write(spark.createDataFrame(emb, schemas.USER_EMBEDDINGS_SCHEMA), schemas.USER_EMBEDDINGS)
    seqs = [(f"user{i}", int(i), [1], [1], 1, 1) for i in idx]
    wh.write(spark.createDataFrame(seqs, schemas.USER_SEQUENCES_SCHEMA), schemas.USER_SEQUENCES)


@pytest.mark.spark
@pytest.mark.slow
def test_run_neighbors_equals_brute_force_with_bounded_blocks(warehouse):
    x, idx = random_users(7, 300, 16)
    _write_users(warehouse, x, idx)
    report = nb.run_neighbors(warehouse, NeighborsConfig(top_n=10, block_size=64, method="exact"))
    assert report.users == 300 and report.blocks >= 5 and report.dim == 16
    assert "300 users" in str(report)
    rows = {r["user_id"]: r for r in warehouse.read(schemas.SIMILAR_USERS).collect()}
    ref_idx, ref_sims, ref_nbrs = brute_force(x, idx, 10)
    assert len(rows) == 300
    for i, sims, nbrs in zip(ref_idx, ref_sims, ref_nbrs):
        row = rows[f"user{i}"]
        assert row["neighbors"] == [f"user{j}" for j in nbrs]
        np.testing.assert_allclose(row["similarities"], sims, atol=1e-6)
    # The staged blocks are gone (empty folders of the table writer's manifests may stay).
    left = [os.path.join(d, f) for d, _, names in os.walk(os.path.join(warehouse.root, "_tmp")) for f in names]
    assert not left


@pytest.mark.spark
@pytest.mark.slow
def test_few_users_and_the_faiss_method(warehouse):
    x, idx = random_users(3, 200, 8)
    _write_users(warehouse, x, idx)
    nb.run_neighbors(warehouse, NeighborsConfig(top_n=5, block_size=50, method="faiss"))
    got = {r["user_id"]: r for r in warehouse.read(schemas.SIMILAR_USERS).collect()}
    rows = {k: r["neighbors"] for k, r in got.items()}
    ref_idx, ref_sims, _ = brute_force(x, idx, 5)
    approx = [rows[f"user{i}"] for i in ref_idx]
    approx_sims = [got[f"user{i}"]["similarities"] for i in ref_idx]
    assert all(f"user{i}" not in rows[f"user{i}"] for i in idx)
    assert all(len(r) == 5 for r in approx)
    # Tied users are interchangeable: any neighbour as similar as the exact 5th counts as found.
    found = [min(5, sum(s >= float(r[-1]) - 1e-5 for s in a)) for r, a in zip(ref_sims, approx_sims)]
    assert sum(found) / (5 * len(found)) > 0.95
    # The staged blocks and the staged result file are gone.
    assert not [f for _, _, names in os.walk(os.path.join(warehouse.root, "_tmp")) for f in names]

    # Three users, top 10: each gets the two others.
    _write_users(warehouse, x[:3], idx[:3])
    nb.run_neighbors(warehouse, NeighborsConfig(top_n=10, block_size=2))
    small = {r["user_id"]: r["neighbors"] for r in warehouse.read(schemas.SIMILAR_USERS).collect()}
    assert {k: sorted(v) for k, v in small.items()} == {
        f"user{i}": sorted(f"user{j}" for j in idx[:3] if j != i) for i in idx[:3]
    }


class DriverFetches:
    """Records what every DataFrame fetch to the driver returns (columns, rows), while active."""

    METHODS = ("collect", "toArrow", "toPandas", "toLocalIterator", "take", "tail")

    def __init__(self, monkeypatch):
        from pyspark.sql.classic.dataframe import DataFrame

        self.seen: list[tuple[list[str], int]] = []
        for name in self.METHODS:
            monkeypatch.setattr(DataFrame, name, self._spy(getattr(DataFrame, name)))

    def _spy(self, original):
        def fetch(df, *args, **kwargs):
            out = original(df, *args, **kwargs)
            if not hasattr(out, "__len__"):  # an iterator: drain it to count the rows
                out = list(out)
            self.seen.append((list(df.columns), len(out)))
            return out

        return fetch


@pytest.mark.spark
@pytest.mark.slow
def test_ivf_method_in_spark_exact_when_every_list_is_probed_idempotent_no_users_on_driver(warehouse, monkeypatch):
    pytest.importorskip("faiss")
    x, idx = planted_users(5, 240, 16, topics=6)
    _write_users(warehouse, x, idx)
    ref_idx, ref_sims, ref_nbrs = brute_force(x, idx, 10)  # what the exact method writes (tested above)

    def table():
        return {r["user_id"]: (r["neighbors"], r["similarities"]) for r in warehouse.read(schemas.SIMILAR_USERS).collect()}

    fetches = DriverFetches(monkeypatch)
    cfg = NeighborsConfig(top_n=10, block_size=64, method="ivf", ivf_lists=8, ivf_probe=8, ivf_sample=50)
    report = nb.run_neighbors(warehouse, cfg)
    monkeypatch.undo()
    assert report.method == "ivf" and report.users == 240 and report.blocks == 8 and report.probe == 8
    assert "8 inverted lists, 8 probed" in str(report)
    first = table()  # every list probed: the exact lists and similarities
    assert {u: r[0] for u, r in first.items()} == {
        f"user{i}": [f"user{j}" for j in row] for i, row in zip(ref_idx, ref_nbrs)
    }
    np.testing.assert_allclose([first[f"user{i}"][1] for i in ref_idx], ref_sims, atol=1e-6)
    # The driver got the bounded sample (embeddings only) and one row per bucket, never a user's row.
    assert not [cols for cols, _ in fetches.seen if "user_id" in cols or "neighbors" in cols]
    assert sum(rows for _, rows in fetches.seen) <= cfg.ivf_sample + 8
    assert any(cols == ["embedding"] and 0 < rows <= cfg.ivf_sample for cols, rows in fetches.seen)

    nb.run_neighbors(warehouse, cfg)
    assert table() == first  # a rerun writes the same table
    assert not [f for _, _, names in os.walk(os.path.join(warehouse.root, "_tmp")) for f in names]


def test_bad_neighbors_config_is_rejected():
    with pytest.raises(ConfigError, match="neighbors.top_n 0"):
        nb.run_neighbors(None, NeighborsConfig(top_n=0))
    with pytest.raises(ConfigError, match="neighbors.block_size -1"):
        nb.run_neighbors(None, NeighborsConfig(block_size=-1))


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.parametrize("method", ["exact", "faiss", "ivf"])
def test_blocks_of_different_embedding_lengths_stop_with_one_line_and_no_table(warehouse, method):
    spark = warehouse.spark
    # Each block is consistent on its own (4 users of 3 dims, then 4 of 5): only the staging sees both.
    emb = [(f"user{i}", [0.5] * (3 if i < 4 else 5), "test", "h") for i in range(8)]
    warehouse.write(spark.createDataFrame(emb, schemas.USER_EMBEDDINGS_SCHEMA), schemas.USER_EMBEDDINGS)
    seqs = [(f"user{i}", i, [1], [1], 1, 1) for i in range(8)]
    warehouse.write(spark.createDataFrame(seqs, schemas.USER_SEQUENCES_SCHEMA), schemas.USER_SEQUENCES)
    with pytest.raises(SchemaError, match=r"table user_embeddings: embeddings have different lengths \[3, 5\]"):
        nb.run_neighbors(warehouse, NeighborsConfig(top_n=2, block_size=4, method=method))
    assert not warehouse.exists(schemas.SIMILAR_USERS)
