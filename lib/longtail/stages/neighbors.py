"""``longtail neighbors``: the top-N most similar other users of every user (cosine of user embeddings).

Reads ``user_embeddings`` (and ``user_sequences`` for ``user_idx``); writes ``similar_users``
(``neighbors`` most similar first, ``similarities`` the cosines).

Exact method (default), blockwise and distributed, never the users x users matrix:
1. Users are cut into blocks of at most ``block_size`` by ``user_idx``; one Spark task per
   block L2-normalises it and stages it as a small file under ``<warehouse>/_tmp/``.
2. One Spark task per query block multiplies its block with each candidate block in turn
   (float32), shortlists the best ``top_n + margin`` per row, re-scores the shortlisted entries
   that can still reach the top N exactly (float64, rounded to float32) and merges them into a
   running top-N. Memory per task: two blocks plus a ``block_size`` x ``block_size`` score
   matrix (about 16 MiB at 2048), whatever the number of users.
3. The staged files are deleted, whatever happens.

Order and ties: higher similarity first, then smaller ``user_idx``; a user is never its own
neighbour. Users with zero embeddings (empty text) have similarity 0 to everyone. Fewer than
``top_n`` other users give shorter lists. The float32 pass only shortlists (identical user
vectors in a block get one shared value, so BLAS rounding cannot split their tie); the final
order uses exactly computed similarities, so results equal a float64 brute force rounded to
float32, unless more than ``margin`` (= top_n) *distinct* candidates sit within float32
rounding (~1e-6) of one row's cut-off inside one block.

``faiss`` method: an HNSW inner-product index on the driver (approximate, for very large user
counts); its recall@N against the exact method is measured by ``benchmarks/neighbors.py``. The
tasks stage the unit rows as in step 1 and the driver reads the block files (float32, 4 x dim
bytes per user in the driver's Python, nothing through the JVM); the lists go back through a
staged Parquet file.
"""
from __future__ import annotations

import io
import time
import uuid
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from longtail.core import schemas
from longtail.core.config import NeighborsConfig
from longtail.core.errors import ConfigError, EnvironmentProblem, SchemaError
from longtail.core.files import absolute, read_bytes, remove_tree, write_bytes
from longtail.ranking.vectors import unit_rows

_NO_IDX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class NeighborsReport:
    """Summary of one ``neighbors`` run."""

    users: int
    top_n: int
    method: str
    block_size: int
    blocks: int
    dim: int
    seconds: float

    @property
    def users_per_second(self) -> float:
        return self.users / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        how = f"{self.blocks} blocks of <= {self.block_size}" if self.method == "exact" else "HNSW index"
        return (
            f"neighbors ({self.method}, top {self.top_n}): {self.users} users, dim {self.dim}, {how}; "
            f"{self.seconds:.1f}s ({self.users_per_second:.0f} users/s)"
        )


# --------------------------------------------------------------------------- pure maths


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); all-zero rows stay zero."""
    return unit_rows(np.asarray(x, dtype=np.float64)).astype(np.float32)


def top_k_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest scores per row, ties to the smaller column.

    Returns ``(rows, min(k, cols))`` int64, in column order (not sorted by score).
    """
    q, c = scores.shape
    k = min(k, c)
    if k == 0:
        return np.zeros((q, 0), dtype=np.int64)
    if k == c:
        return np.broadcast_to(np.arange(c, dtype=np.int64), (q, c)).copy()
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
    greater = scores > kth
    equal = scores == kth
    need = k - greater.sum(axis=1, keepdims=True)
    if (equal.sum(axis=1, keepdims=True) <= need).all():
        take = greater | equal
    else:
        # Several columns tie at the cut-off: keep the first ones (smallest user_idx).
        take = greater | (equal & (np.cumsum(equal, axis=1) <= need))
    return np.nonzero(take)[1].reshape(q, k)


def merge_top_n(sims: np.ndarray, idx: np.ndarray, n: int, *payload: np.ndarray):
    """The best ``n`` per row by higher similarity, then smaller idx; ``payload`` arrays follow along."""
    order = np.lexsort((idx, -sims), axis=1)[:, :n]
    return tuple(np.take_along_axis(a, order, 1) for a in (sims, idx, *payload))


def empty_top_n(rows: int, n: int):
    """A running top-N with nothing in it: ``(sims, idx, ids)``, each (rows, n)."""
    return (np.full((rows, n), -np.inf, dtype=np.float32), np.full((rows, n), _NO_IDX, dtype=np.int64),
            np.full((rows, n), None, dtype=object))


def duplicate_of(x: np.ndarray) -> np.ndarray:
    """For each row, the first row with identical content (itself when unique)."""
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    rows = np.ascontiguousarray(x).view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    return first[inverse.ravel()].astype(np.int64)


def search_block(query: np.ndarray, query_idx: np.ndarray, cand: np.ndarray, cand_idx: np.ndarray,
                 cand_ids: np.ndarray, best, n: int, margin: int | None = None,
                 cand_dup: np.ndarray | None = None):
    """Merge one candidate block into the running top-N of a query block.

    The block's similarities are computed in float32 (one matrix product) only to shortlist
    ``n + margin`` candidates per row; shortlisted entries that can still reach the top n are
    re-scored exactly (float64, rounded to float32), and the running top-N holds exact values.

    Args:
        query: (q, E) unit rows, float32; ``query_idx`` their user_idx (int64).
        cand: (c, E) unit rows; ``cand_idx`` ascending user_idx; ``cand_ids`` user ids;
            ``cand_dup`` from :func:`duplicate_of` (computed when None).
        best: the running ``(sims, idx, ids)`` (see :func:`empty_top_n`).
        n: neighbours to keep; ``margin`` extra shortlisted per row (default n).

    Returns:
        The updated ``(sims, idx, ids)``, each (q, n), best first, ties to the smaller idx.
    """
    margin = n if margin is None else margin
    c = len(cand)
    if c == 0:
        return best
    scores = _block_scores(query, query_idx, cand, cand_idx, cand_dup)
    k = min(n + margin, c)
    cols, ranked = _shortlist(scores, n, k)
    short = np.take_along_axis(scores, cols, 1)
    keep = _within_reach(short, ranked, best[0][:, -1:], min(n, k), query.shape[1])
    exact = _exact_scores(query, cand, cols, keep)
    return merge_top_n(
        np.concatenate([best[0], exact], 1),
        np.concatenate([best[1], cand_idx[cols]], 1),
        n,
        np.concatenate([best[2], cand_ids[cols]], 1),
    )


def _block_scores(query: np.ndarray, query_idx: np.ndarray, cand: np.ndarray, cand_idx: np.ndarray,
                  cand_dup: np.ndarray | None) -> np.ndarray:
    """float32 similarities (q, c) of the query rows to the candidates (arguments as in
    :func:`search_block`); a query's own row, if among the candidates, gets ``-inf``."""
    c = len(cand)
    scores = query @ cand.T
    # Identical candidate vectors can get float32 products differing in the last bit (BLAS
    # edge kernels); give them the same value so ties at the cut-off go to the smaller idx.
    dup = duplicate_of(cand) if cand_dup is None else cand_dup
    moved = np.nonzero(dup != np.arange(c))[0]
    if len(moved):
        scores[:, moved] = scores[:, dup[moved]]
    # Self-similarity: the query's own row in this candidate block, if it is there.
    pos = np.searchsorted(cand_idx, query_idx)
    hit = pos < c
    hit[hit] = cand_idx[pos[hit]] == query_idx[hit]
    scores[np.nonzero(hit)[0], pos[hit]] = -np.inf
    return scores


def _shortlist(scores: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The columns of the ``k`` highest ``scores`` per row, (q, k).

    Returns:
        ``(cols, ranked)``: ``ranked`` holds those k scores per row, highest first, or is None
        when ``k`` covers every column (``cols`` is then every column, in order).
    """
    q, c = scores.shape
    if k >= c:
        return np.broadcast_to(np.arange(c, dtype=np.int64), (q, c)), None
    # argpartition picks arbitrarily among values tied at the cut-off; that only matters
    # where the tied group reaches into the top n: those rows are redone deterministically.
    cols = np.argpartition(scores, c - k, axis=1)[:, c - k :]
    ranked = -np.sort(-np.take_along_axis(scores, cols, 1), axis=1)
    tied = ranked[:, min(n, k) - 1] == ranked[:, k - 1]
    if tied.any():
        cols[tied] = top_k_columns(scores[tied], k)
    return cols, ranked


def _within_reach(short: np.ndarray, ranked: np.ndarray | None, running_nth: np.ndarray, nth: int,
                  dim: int) -> np.ndarray:
    """Mask of the shortlisted float32 scores ``short`` that could reach the top n once exact.

    ``ranked`` is ``short`` sorted highest first per row (sorted here when None),
    ``running_nth`` (q, 1) the running top-N's worst value, ``nth`` the rank to compare
    with in the block and ``dim`` the embedding size.
    """
    # float32 products of unit vectors are off by at most E * 2^-23. An entry can only reach the
    # top n if it is within that of the block's n-th and of the running n-th best value.
    eps = dim * 2.0**-23
    if ranked is None:
        ranked = -np.sort(-short, axis=1)
    block_nth = ranked[:, nth - 1 : nth].astype(np.float64)
    return (short > -np.inf) & (short >= block_nth - 2 * eps) & (short >= running_nth - eps)


def _exact_scores(query: np.ndarray, cand: np.ndarray, cols: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Similarities of the query rows to candidates ``cols`` (q, k) where ``keep``, in float64
    rounded to float32; ``-inf`` elsewhere."""
    exact = np.full(cols.shape, -np.inf, dtype=np.float32)
    rows, js = np.nonzero(keep)
    # In slices: each gathers float64 copies of one query and one candidate row per entry.
    step = 8192
    for s in range(0, len(rows), step):
        r, j = rows[s : s + step], js[s : s + step]
        exact[r, j] = np.einsum(
            "ij,ij->i", query[r].astype(np.float64), cand[cols[r, j]].astype(np.float64)
        ).astype(np.float32)
    return exact


def top_n_for_block(query: np.ndarray, query_idx: np.ndarray, candidate_blocks: Iterable, n: int):
    """Exact top-N of every query row over ``(cand, cand_idx, cand_ids[, cand_dup])`` blocks.

    Returns ``(sims, idx, ids)``, each (q, n); missing entries: similarity ``-inf``, id None.
    """
    best = empty_top_n(len(query), n)
    for block in candidate_blocks:
        cand, cand_idx, cand_ids = block[:3]
        dup = block[3] if len(block) > 3 else None
        best = search_block(query, query_idx, cand, cand_idx, cand_ids, best, n, cand_dup=dup)
    missing = np.isneginf(best[0])
    return best[0], np.where(missing, _NO_IDX, best[1]), np.where(missing, None, best[2])


# --------------------------------------------------------------------------- Spark stage


def run_neighbors(wh, cfg: NeighborsConfig) -> NeighborsReport:
    """Write ``similar_users``: each user's top-N most similar other users.

    Args:
        wh: the warehouse.
        cfg: the ``neighbors`` section (top_n, block_size, method).

    Returns:
        :class:`NeighborsReport`.

    Raises:
        ConfigError: non-positive top_n or block_size, unknown method.
        TableNotFoundError, SchemaError: missing inputs, or embeddings that are null or of
            differing lengths.
        EnvironmentProblem: ``faiss`` asked for and not installed.
    """
    started = time.perf_counter()
    if cfg.top_n <= 0:
        raise ConfigError(f"neighbors.top_n {cfg.top_n}: must be positive")
    if cfg.block_size <= 0:
        raise ConfigError(f"neighbors.block_size {cfg.block_size}: must be positive")
    if cfg.method not in ("exact", "faiss"):
        raise ConfigError(f"neighbors.method {cfg.method!r}: not one of exact, faiss")
    emb = wh.read(schemas.USER_EMBEDDINGS)
    schemas.require_columns(
        emb, schemas.subset(schemas.USER_EMBEDDINGS_SCHEMA, "user_id", "embedding"),
        schemas.USER_EMBEDDINGS,
    )
    seq = wh.read(schemas.USER_SEQUENCES)
    schemas.require_columns(
        seq, schemas.subset(schemas.USER_SEQUENCES_SCHEMA, "user_id", "user_idx"),
        schemas.USER_SEQUENCES,
    )
    users = emb.select("user_id", "embedding").join(seq.select("user_id", "user_idx"), "user_id")
    with wh.job():
        if cfg.method == "faiss":
            _, count, blocks, dim = _faiss_neighbors(wh, users, cfg.top_n, cfg.block_size)
        else:
            _, count, blocks, dim = _exact_neighbors(wh, users, cfg.top_n, cfg.block_size)
    return NeighborsReport(count, cfg.top_n, cfg.method, cfg.block_size, blocks, dim, time.perf_counter() - started)


_RESULT_SCHEMA = "user_id string, neighbors array<string>, similarities array<float>"


def _exact_neighbors(wh, users: DataFrame, n: int, block_size: int):
    tmp = f"{absolute(wh.root)}/_tmp/neighbors-{uuid.uuid4().hex}"
    try:
        staged = _stage_blocks(users, tmp, block_size)
        if not staged:
            _write(wh, wh.spark.createDataFrame([], _RESULT_SCHEMA))
            return None, 0, 0, 0
        block_ids = [b for b, _, _ in staged]
        count = sum(r for _, r, _ in staged)

        def search(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            from longtail.stages import neighbors as nb

            for frame in frames:
                for i in frame["id"]:
                    yield nb.search_staged_block(tmp, block_ids, int(i), n)

        result = wh.spark.range(len(block_ids), numPartitions=len(block_ids)).mapInPandas(search, _RESULT_SCHEMA)
        _write(wh, result)
        return result, count, len(block_ids), staged[0][2]
    finally:
        _discard(tmp)


def _stage_blocks(users: DataFrame, tmp: str, block_size: int) -> list[tuple[int, int, int]]:
    """Write one normalised block file per ``user_idx // block_size``; return (block, rows, dim)
    sorted by block (so by ``user_idx``), every block of the same dim.

    Raises:
        SchemaError: an embedding or user_idx is null, or the blocks' dims differ.
    """

    def stage(frame: pd.DataFrame) -> pd.DataFrame:
        from longtail.stages import neighbors as nb

        return nb.write_block(tmp, frame)

    blocks = (
        users.withColumn("block", F.floor(F.col("user_idx") / F.lit(block_size)).cast("long"))
        .groupBy("block")
        .applyInPandas(stage, "block long, rows long, dim int")
    )
    try:
        rows = blocks.collect()
    except Exception as exc:  # noqa: BLE001 - turn a data problem into one line
        if f"{schemas.USER_EMBEDDINGS}:" in str(exc):
            msg = str(exc)[str(exc).index(f"{schemas.USER_EMBEDDINGS}:"):].splitlines()[0]
            raise SchemaError(f"table {msg}") from None
        raise
    dims = sorted({int(r["dim"]) for r in rows})
    if len(dims) > 1:
        raise SchemaError(f"table {schemas.USER_EMBEDDINGS}: embeddings have different lengths {dims}")
    return sorted((int(r["block"]), int(r["rows"]), int(r["dim"])) for r in rows)


def write_block(tmp: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Normalise one block of ``(user_id, embedding, user_idx, block)`` and save it (runs in a task)."""
    frame = frame.sort_values("user_idx", kind="stable")
    if frame["embedding"].isna().any() or frame["user_idx"].isna().any():
        bad = frame.loc[frame["embedding"].isna() | frame["user_idx"].isna(), "user_id"].iloc[0]
        raise ValueError(f"{schemas.USER_EMBEDDINGS}: user {bad!r} has no embedding or no user_idx")
    lengths = {len(e) for e in frame["embedding"]}
    if len(lengths) != 1:
        raise ValueError(f"{schemas.USER_EMBEDDINGS}: embeddings have different lengths {sorted(lengths)}")
    x = normalize_rows(np.stack(frame["embedding"].to_numpy()))
    block = int(frame["block"].iloc[0])
    buf = io.BytesIO()
    np.savez(buf, emb=x, idx=frame["user_idx"].to_numpy(np.int64), ids=np.array(frame["user_id"].tolist(), dtype=str),
             dup=duplicate_of(x))
    write_bytes(f"{tmp}/block-{block}.npz", buf.getvalue(), atomic=False)
    return pd.DataFrame({"block": [block], "rows": [len(frame)], "dim": [x.shape[1]]})


def read_block(tmp: str, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A staged block: (unit rows float32, user_idx int64 ascending, user ids, duplicate_of)."""
    with np.load(io.BytesIO(read_bytes(f"{tmp}/block-{block}.npz"))) as z:
        return z["emb"], z["idx"], z["ids"].astype(object), z["dup"]


def search_staged_block(tmp: str, block_ids: list[int], i: int, n: int) -> pd.DataFrame:
    """One query block against every staged candidate block, as result rows (runs in a task)."""
    query, query_idx, query_ids, _ = read_block(tmp, block_ids[i])
    candidates = (read_block(tmp, b) for b in block_ids)  # one candidate block in memory at a time
    sims, _, ids = top_n_for_block(query, query_idx, candidates, n)
    valid = sims > -np.inf
    return pd.DataFrame({
        "user_id": query_ids.astype(str),
        "neighbors": [list(r[v]) for r, v in zip(ids, valid)],
        "similarities": [s[v] for s, v in zip(sims, valid)],
    })


def _faiss_neighbors(wh, users: DataFrame, n: int, block_size: int):
    try:
        import faiss
    except ImportError:
        raise EnvironmentProblem("neighbors.method faiss: faiss is not installed (pip install faiss-cpu)") from None
    tmp = f"{absolute(wh.root)}/_tmp/neighbors-{uuid.uuid4().hex}"
    try:
        # The tasks stage the unit rows as block files (as for the exact method) and the driver
        # reads them: no embedding passes through the JVM driver, whose heap a collect or
        # toLocalIterator of 1.1M x 384 floats overflowed (benchmarks/scale.py, docs/scaling.md).
        staged = _stage_blocks(users, tmp, block_size)
        if not staged:
            _write(wh, wh.spark.createDataFrame([], _RESULT_SCHEMA))
            return None, 0, 0, 0
        x, idx, ids = _read_staged(tmp, staged)
        sims, pos = faiss_search(x, n, faiss)
        valid = pos >= 0
        cand_idx = np.where(valid, idx[np.where(valid, pos, 0)], _NO_IDX)
        sims = np.where(valid, sims, -np.inf).astype(np.float32)
        cand_ids = np.where(valid, ids[np.where(valid, pos, 0)], None)
        sims, cand_idx, cand_ids = merge_top_n(sims, cand_idx, n, cand_ids)
        result = _result_file(tmp, ids, sims, cand_ids)
        _write(wh, wh.spark.read.schema(_RESULT_SCHEMA).parquet(result))
        return None, len(ids), 1, x.shape[1]
    finally:
        _discard(tmp)


def _read_staged(tmp: str, staged: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every staged block in one array, ordered by ``user_idx``: (unit rows, user_idx, user ids)."""
    x = np.empty((sum(r for _, r, _ in staged), staged[0][2]), dtype=np.float32)
    idx, ids, at = [], [], 0
    for block, rows, _ in staged:  # staged is sorted by block, and blocks by user_idx
        emb, block_idx, block_ids, _ = read_block(tmp, block)
        x[at : at + rows] = emb
        idx.append(block_idx)
        ids.append(block_ids)
        at += rows
    return x, np.concatenate(idx), np.concatenate(ids)


def _result_file(tmp: str, ids: np.ndarray, sims: np.ndarray, cand_ids: np.ndarray) -> str:
    """The neighbour lists as a Parquet file under ``tmp`` for Spark to read; returns its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keep = sims > -np.inf
    table = pa.table({
        "user_id": pa.array(ids.astype(str)),
        "neighbors": pa.array([list(r[v]) for r, v in zip(cand_ids, keep)], pa.list_(pa.string())),
        "similarities": pa.array([s[v] for s, v in zip(sims, keep)], pa.list_(pa.float32())),
    })
    buf = io.BytesIO()
    pq.write_table(table, buf)
    path = f"{tmp}/result/part-0.parquet"
    write_bytes(path, buf.getvalue(), atomic=False)
    return f"{tmp}/result"


def faiss_search(x: np.ndarray, n: int, faiss=None, m: int = 32, ef: int | None = None):
    """Approximate top-N (self removed) with an HNSW inner-product index over unit rows ``x``.

    Returns ``(sims (users, n) float32, positions (users, n) int64, -1 where missing)``.
    """
    if faiss is None:
        import faiss
    index = faiss.IndexHNSWFlat(x.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    index.add(np.ascontiguousarray(x, dtype=np.float32))
    # A few extra results so that ties among them can be ordered by idx like the exact method.
    k = min(2 * n + 1, len(x))
    index.hnsw.efSearch = max(ef or 0, 64, 4 * k)
    d, p = index.search(np.ascontiguousarray(x, dtype=np.float32), k)
    rows = np.arange(len(x))[:, None]
    d = np.where(p == rows, -np.inf, d)
    p = np.where(p == rows, -1, p)
    key = np.where(p >= 0, p, np.iinfo(np.int64).max)
    order = np.lexsort((key, -d), axis=1)[:, :n]
    d, p = np.take_along_axis(d, order, 1), np.take_along_axis(p, order, 1)
    p = np.where(np.isfinite(d), p, -1)
    if d.shape[1] < n:
        pad = n - d.shape[1]
        d = np.pad(d, ((0, 0), (0, pad)), constant_values=-np.inf)
        p = np.pad(p, ((0, 0), (0, pad)), constant_values=-1)
    return d.astype(np.float32), p.astype(np.int64)


def _write(wh, df: DataFrame) -> None:
    wh.write(schemas.conform(df, schemas.SIMILAR_USERS), schemas.SIMILAR_USERS, mode="overwrite")


# --------------------------------------------------------------------------- staging files


def _discard(path: str) -> None:
    try:
        remove_tree(path)
    except OSError:  # pragma: no cover - best effort: a leftover scratch folder is harmless
        pass
