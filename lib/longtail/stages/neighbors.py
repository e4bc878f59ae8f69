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

``ivf`` method (approximate, partitioned; nothing per user on the driver):
1. The driver draws a bounded seeded hash sample of the users (``neighbors.ivf_sample`` at most,
   32 per list) and fits ``ivf_lists`` unit centroids on it (spherical k-means, faiss); they are
   staged as one small file, the only thing it holds (``longtail.ranking.ivf``).
   The lists are numbered so that consecutive lists are neighbours (a coarse k-means over them).
2. One Spark pass assigns every user its ``ivf_probe`` nearest lists (the first is its own list);
   a shuffle stages one file per bucket of consecutive lists of about ``block_size`` users
   (unit rows, user_idx, ids, own and probed lists).
3. Spark tasks, a few buckets each, search every member against the members of every list it
   probes, with the exact method's block search (so the same similarities, ties and self
   exclusion; small lists searched together with the pairs outside a user's probes masked), and
   write the finished top-N: a user's candidates are the members of its probed lists. With
   ``ivf_probe`` >= the lists every user meets every other: the exact lists. A task reads the
   buckets its users probe and keeps recent ones (16 x ``block_size`` users at most).

``auto`` (the default): exact up to :data:`EXACT_MAX_USERS` users, ivf above.

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
from collections import OrderedDict
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
from longtail.ranking import ivf
from longtail.ranking.vectors import unit_rows

_NO_IDX = np.iinfo(np.int64).max
#: ``neighbors.method: auto`` searches up to this many users exactly (Beauty's 22,363 and the demo
#: keep their lists); above, ivf. The exact cost grows with the square of the users (318 s for
#: 223,630 users on 2 cores, docs/scaling.md), ivf's with users x sqrt(users).
EXACT_MAX_USERS = 250_000
#: Seed of the ivf sample's hash and of its k-means (reruns give the same lists).
IVF_SEED = 20_240_601
METHODS = ("auto", "exact", "ivf", "faiss")


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
    #: ivf: lists searched per user (``blocks`` holds the lists); 0 for the other methods.
    probe: int = 0

    @property
    def users_per_second(self) -> float:
        return self.users / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        how = {
            "exact": f"{self.blocks} blocks of <= {self.block_size}",
            "ivf": f"{self.blocks} inverted lists, {self.probe} probed per user",
        }.get(self.method, "HNSW index")
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
                 cand_dup: np.ndarray | None = None, allowed: np.ndarray | None = None):
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
        allowed: (q, c) bool, the pairs that may be neighbours (ivf: the candidate's list is
            one the query probes); None: every pair.

    Returns:
        The updated ``(sims, idx, ids)``, each (q, n), best first, ties to the smaller idx.
    """
    margin = n if margin is None else margin
    c = len(cand)
    if c == 0:
        return best
    scores = _block_scores(query, query_idx, cand, cand_idx, cand_dup)
    if allowed is not None:
        scores[~allowed] = -np.inf
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
        cfg: the ``neighbors`` section (top_n, block_size, method, ivf_lists, ivf_probe, ivf_sample).

    Returns:
        :class:`NeighborsReport`.

    Raises:
        ConfigError: non-positive top_n or block_size, unknown method.
        TableNotFoundError, SchemaError: missing inputs, or embeddings that are null or of
            differing lengths.
        EnvironmentProblem: ``faiss`` or ``ivf`` asked for (or chosen) and faiss not installed.
    """
    started = time.perf_counter()
    if cfg.top_n <= 0:
        raise ConfigError(f"neighbors.top_n {cfg.top_n}: must be positive")
    if cfg.block_size <= 0:
        raise ConfigError(f"neighbors.block_size {cfg.block_size}: must be positive")
    if cfg.method not in METHODS:
        raise ConfigError(f"neighbors.method {cfg.method!r}: not one of {', '.join(METHODS)}")
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
    method, count, probe = cfg.method, None, 0
    if method in ("auto", "ivf"):
        count = users.count()  # one small Spark job: the method and the lists depend on it
        method = choose_method(method, count)
    with wh.job():
        if method == "faiss":
            _, count, blocks, dim = _faiss_neighbors(wh, users, cfg.top_n, cfg.block_size)
        elif method == "ivf":
            count, blocks, dim, probe = _ivf_neighbors(wh, users, cfg, count)
        else:
            _, count, blocks, dim = _exact_neighbors(wh, users, cfg.top_n, cfg.block_size)
    return NeighborsReport(
        count, cfg.top_n, method, cfg.block_size, blocks, dim, time.perf_counter() - started, probe
    )


def choose_method(setting: str, users: int) -> str:
    """The method ``neighbors.method`` asks for: ``auto`` is exact up to :data:`EXACT_MAX_USERS`
    users and ivf above; any other setting is itself."""
    if setting == "auto":
        return "exact" if users <= EXACT_MAX_USERS else "ivf"
    return setting


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
    return _staged_sizes(blocks)


def _staged_sizes(blocks: DataFrame) -> list[tuple[int, int, int]]:
    """Run a staging job whose rows are ``(block, rows, dim)`` (one per staged file) and return
    them sorted by block (:func:`_staged_rows`)."""
    return sorted((int(r["block"]), int(r["rows"]), int(r["dim"])) for r in _staged_rows(blocks))


def _staged_rows(blocks: DataFrame) -> list:
    """The rows of a staging job (one per staged file, with ``block``, ``rows``, ``dim``); a
    task's data error becomes one line.

    Raises:
        SchemaError: an embedding or user_idx is null, or the blocks' dims differ.
    """
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
    return rows


def write_block(tmp: str, frame: pd.DataFrame, key: str = "block", by_list: bool = False) -> pd.DataFrame:
    """Normalise one block of ``(user_id, embedding, user_idx, <key>[, list, probes])`` and save
    it as ``<tmp>/<key>-<value>.npz`` (runs in a task), rows by user_idx (``by_list``: in the
    order given); returns its ``(block, rows, dim)`` row."""
    if not by_list:
        frame = frame.sort_values("user_idx", kind="stable")
    if frame["embedding"].isna().any() or frame["user_idx"].isna().any():
        bad = frame.loc[frame["embedding"].isna() | frame["user_idx"].isna(), "user_id"].iloc[0]
        raise ValueError(f"{schemas.USER_EMBEDDINGS}: user {bad!r} has no embedding or no user_idx")
    lengths = {len(e) for e in frame["embedding"]}
    if len(lengths) != 1:
        raise ValueError(f"{schemas.USER_EMBEDDINGS}: embeddings have different lengths {sorted(lengths)}")
    x = normalize_rows(np.stack(frame["embedding"].to_numpy()))
    block = int(frame[key].iloc[0])
    extra = {"probes": np.stack(frame["probes"].to_numpy()).astype(np.int64)} if "probes" in frame else {}
    if "list" in frame:
        extra["list"] = frame["list"].to_numpy(np.int64)
    buf = io.BytesIO()
    np.savez(buf, emb=x, idx=frame["user_idx"].to_numpy(np.int64), ids=np.array(frame["user_id"].tolist(), dtype=str),
             dup=duplicate_of(x), **extra)
    write_bytes(f"{tmp}/{key}-{block}.npz", buf.getvalue(), atomic=False)
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


# --------------------------------------------------------------------------- ivf


def _ivf_neighbors(wh, users: DataFrame, cfg: NeighborsConfig, count: int) -> tuple[int, int, int, int]:
    """The ivf method (module docstring); returns ``(users, lists, dim, probe)``.

    The driver holds the sample and the centroids (``ivf_sample x dim`` floats at most) and the
    member count of every list; every user-sized step runs in Spark tasks. Lists are staged in
    buckets of consecutive (so neighbouring) lists of about ``block_size`` users: one file and
    one search call per bucket, however small the lists.
    """
    tmp = f"{absolute(wh.root)}/_tmp/neighbors-{uuid.uuid4().hex}"
    try:
        lists = ivf.list_count(count, cfg.ivf_lists, cfg.ivf_sample)
        sample = _sample_embeddings(users, ivf.sample_size(count, lists, cfg.ivf_sample), count)
        if not len(sample):
            _write(wh, wh.spark.createDataFrame([], _RESULT_SCHEMA))
            return 0, 0, 0, 0
        centroids = ivf.order_centroids(ivf.fit_centroids(normalize_rows(sample), lists, seed=IVF_SEED), seed=IVF_SEED)
        buf = io.BytesIO()
        np.save(buf, centroids)
        write_bytes(f"{tmp}/centroids.npy", buf.getvalue(), atomic=False)
        probe = min(cfg.ivf_probe, len(centroids))
        per_bucket = max(1, round(cfg.block_size * len(centroids) / max(count, 1)))
        buckets, members, dim = _stage_lists(users, tmp, probe, centroids.shape[1], per_bucket)
        n, block_size = cfg.top_n, cfg.block_size

        def search(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            from longtail.stages import neighbors as nb

            for frame in frames:
                keys = buckets[frame["id"].to_numpy()]
                yield from nb.search_staged_buckets(tmp, keys, members, per_bucket, n, block_size)

        # A few buckets per task: consecutive buckets probe mostly the same lists (BucketCache).
        parts = max(1, -(-len(buckets) // SEARCH_BUCKETS_PER_TASK))
        result = wh.spark.range(len(buckets), numPartitions=parts).mapInPandas(search, _RESULT_SCHEMA)
        _write(wh, result)
        return sum(members.values()), len(centroids), dim, probe
    finally:
        _discard(tmp)


#: Buckets (of about ``block_size`` users) searched per ivf task.
SEARCH_BUCKETS_PER_TASK = 4


def _sample_embeddings(users: DataFrame, size: int, count: int) -> np.ndarray:
    """At most ``size`` of the ``count`` user embeddings, ``[S, E]`` float32, to fit the lists on
    (driver side).

    A seeded hash of ``user_idx`` picks them (the same users on every rerun, whatever the
    partitioning) and orders them; neither a task nor the driver holds more than ``size`` rows.

    Raises:
        SchemaError: the sampled embeddings have different lengths.
    """
    import pyarrow.compute as pc

    key = F.xxhash64(F.col("user_idx"), F.lit(IVF_SEED))
    # A hash threshold keeps about 1.25 x size users in a map-only pass, so that the sort below
    # (each task keeps its `size` smallest hashes) runs over a fraction of the users.
    keep = min(1.0, 1.25 * size / max(count, 1))
    picked = (
        users.where(F.col("embedding").isNotNull() & F.col("user_idx").isNotNull())
        .select("embedding", key.alias("h"), "user_idx")
        .where(F.pmod(F.col("h"), F.lit(1 << 30)) < F.lit(int(keep * (1 << 30))))
        .orderBy("h", "user_idx")
        .limit(int(size))
        .select("embedding")
        .toArrow()
    )
    column = picked.column("embedding").combine_chunks()
    if not len(column):
        return np.zeros((0, 0), dtype=np.float32)
    lengths = np.unique(pc.list_value_length(column).to_numpy(zero_copy_only=False))
    if len(lengths) > 1:
        raise SchemaError(
            f"table {schemas.USER_EMBEDDINGS}: embeddings have different lengths {sorted(int(v) for v in lengths)}"
        )
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return values.reshape(len(column), int(lengths[0]))


def _stage_lists(users: DataFrame, tmp: str, probe: int, dim: int, per_bucket: int):
    """Assign every user its ``probe`` nearest lists (tasks) and stage one file per bucket of
    ``per_bucket`` consecutive lists (:func:`write_bucket`).

    Returns:
        ``(buckets, members, dim)``: the staged bucket ids (int64 array, ascending), the member
        count of every list that has members, the embedding size.

    Raises:
        SchemaError: an embedding or user_idx is null, or an embedding is not ``dim`` long.
    """

    def assign(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from longtail.stages import neighbors as nb

        centroids = nb.read_centroids(tmp)
        for frame in frames:
            yield nb.assign_lists(frame, centroids, probe, per_bucket)

    def stage(frame: pd.DataFrame) -> pd.DataFrame:
        from longtail.stages import neighbors as nb

        return nb.write_bucket(tmp, frame)

    assigned = users.select("user_id", "embedding", "user_idx").mapInPandas(
        assign, "user_id string, embedding array<float>, user_idx int, list long, bucket long, probes array<long>"
    )
    staged = assigned.groupBy("bucket").applyInPandas(
        stage, "block long, rows long, dim int, lists array<long>, counts array<long>"
    )
    rows = _staged_rows(staged)
    members = {int(k): int(c) for r in rows for k, c in zip(r["lists"], r["counts"])}
    return np.array(sorted(int(r["block"]) for r in rows), dtype=np.int64), members, int(rows[0]["dim"])


def read_centroids(tmp: str) -> np.ndarray:
    """The staged ``[L, E]`` centroids of an ivf run."""
    return np.load(io.BytesIO(read_bytes(f"{tmp}/centroids.npy")))


def assign_lists(frame: pd.DataFrame, centroids: np.ndarray, probe: int, per_bucket: int = 1) -> pd.DataFrame:
    """``frame`` (``user_id, embedding, user_idx``) with its users' own ``list``, its
    ``bucket`` (``list // per_bucket``) and the ``probes`` searched
    (:func:`longtail.ranking.ivf.probe_lists`; runs in a task).

    Raises:
        ValueError: a null embedding or user_idx, or an embedding not as long as the centroids
            (the message names the table and the user).
    """
    bad = frame["embedding"].isna() | frame["user_idx"].isna()
    if bad.any():
        user = frame.loc[bad, "user_id"].iloc[0]
        raise ValueError(f"{schemas.USER_EMBEDDINGS}: user {user!r} has no embedding or no user_idx")
    dim = centroids.shape[1]
    lengths = frame["embedding"].map(len).to_numpy()
    if len(frame) and (lengths != dim).any():
        other = int(lengths[lengths != dim][0])
        raise ValueError(f"{schemas.USER_EMBEDDINGS}: embeddings have different lengths {sorted({dim, other})}")
    x = normalize_rows(np.stack(frame["embedding"].to_numpy())) if len(frame) else np.zeros((0, dim), np.float32)
    probes = ivf.probe_lists(x, centroids, probe)
    own = probes[:, 0] if len(frame) else np.zeros(0, np.int64)
    return frame.assign(list=own, bucket=own // per_bucket, probes=list(probes))


def write_bucket(tmp: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Stage one bucket of lists (runs in a task): :func:`write_block` with ``key="bucket"``,
    members ordered by list then user_idx (each list a contiguous run, ascending user_idx),
    their ``list`` and ``probes`` kept; returns its ``(block, rows, dim, lists, counts)`` row."""
    out = write_block(tmp, frame.sort_values(["list", "user_idx"], kind="stable"), key="bucket", by_list=True)
    lists, counts = np.unique(frame["list"].to_numpy(np.int64), return_counts=True)
    return out.assign(lists=[lists], counts=[counts])


def read_bucket(tmp: str, key: int):
    """A staged bucket: (unit rows, user_idx, user ids, duplicate_of, probed lists, own list),
    ordered by own list then user_idx."""
    with np.load(io.BytesIO(read_bytes(f"{tmp}/bucket-{key}.npz"))) as z:
        return z["emb"], z["idx"], z["ids"].astype(object), z["dup"], z["probes"], z["list"]


def search_staged_buckets(tmp: str, keys: Iterable[int], members: dict[int, int], per_bucket: int, n: int,
                          block_size: int) -> Iterator[pd.DataFrame]:
    """Result rows of the members of each bucket in ``keys`` (runs in a task); ``members``:
    the member count of every list that has members. Buckets read here are kept while they fit
    (:class:`BucketCache`): consecutive buckets hold neighbouring lists
    (:func:`~longtail.ranking.ivf.order_centroids`) and probe mostly the same lists."""
    cache = BucketCache(tmp, LIST_CACHE_BLOCKS * block_size, per_bucket)
    for key in keys:
        query, query_idx, query_ids, _, probes, _ = cache.bucket(int(key))
        sims, _, ids = search_list(query, query_idx, probes, cache.members_of, members, n, block_size)
        valid = sims > -np.inf
        yield pd.DataFrame({
            "user_id": query_ids.astype(str),
            "neighbors": [list(r[v]) for r, v in zip(ids, valid)],
            "similarities": [s[v] for s, v in zip(sims, valid)],
        })


#: A task keeps up to this many block_size-worths of users of the buckets it read (BucketCache).
LIST_CACHE_BLOCKS = 16


class BucketCache:
    """Staged buckets read by this task, the most recently used kept up to ``users`` members in all."""

    def __init__(self, tmp: str, users: int, per_bucket: int) -> None:
        self.tmp, self.budget, self.per_bucket, self.held = tmp, users, per_bucket, 0
        self.buckets: OrderedDict[int, tuple] = OrderedDict()

    def bucket(self, key: int) -> tuple:
        """:func:`read_bucket` of ``key``, from memory when it is still held."""
        if key in self.buckets:
            self.buckets.move_to_end(key)
            return self.buckets[key]
        value = self.buckets[key] = read_bucket(self.tmp, key)
        self.held += len(value[1])
        while self.held > self.budget and len(self.buckets) > 1:
            _, old = self.buckets.popitem(last=False)
            self.held -= len(old[1])
        return value

    def members_of(self, key: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(unit rows, user_idx ascending, ids)`` of list ``key``'s members."""
        emb, idx, ids, _, _, own = self.bucket(key // self.per_bucket)
        lo, hi = np.searchsorted(own, [key, key + 1])
        return emb[lo:hi], idx[lo:hi], ids[lo:hi]


def search_list(query: np.ndarray, query_idx: np.ndarray, probes: np.ndarray, fetch, members: dict[int, int],
                n: int, block_size: int):
    """Top-N of the query users among the members of the lists each of them probes.

    Small lists are searched together (pieces of about ``block_size`` candidates, pairs outside
    the query's probes masked: one product instead of one per list); a large list is cut into
    pieces of ``block_size``. Each piece goes through :func:`search_block`, so similarities,
    ties and self exclusion are the exact method's.

    Args:
        query, query_idx: (q, E) unit rows and their user_idx. probes: (q, P) list ids per query.
        fetch: list id -> ``(unit rows, user_idx ascending, ids, ...)`` of its members.
        members: list id -> member count, for the lists that have members.

    Returns:
        ``(sims, idx, ids)``, each (q, n), as :func:`top_n_for_block`.
    """
    best = empty_top_n(len(query), n)
    probed = [k for k in np.unique(probes).tolist() if k in members]
    for group in _groups(probed, members, min(block_size, GROUP_MEMBERS)):
        emb, idx, ids, origin = _gather(group, fetch)
        hit = (probes[:, :, None] == np.asarray(group)[None, None, :]).any(axis=1)  # (q, lists in group)
        rows = np.nonzero(hit.any(axis=1))[0]
        for q in range(0, len(rows), block_size):
            r = rows[q : q + block_size]
            part = tuple(a[r] for a in best)
            for c in range(0, len(emb), block_size):
                piece = slice(c, c + block_size)
                allowed = hit[r][:, origin[piece]]
                part = search_block(query[r], query_idx[r], emb[piece], idx[piece], ids[piece], part, n,
                                    allowed=None if allowed.all() else allowed)
            for whole, new in zip(best, part):
                whole[r] = new
    missing = np.isneginf(best[0])
    return best[0], np.where(missing, _NO_IDX, best[1]), np.where(missing, None, best[2])


#: Small lists are searched together up to this many candidates (one product instead of one per
#: list); more would score too many pairs a query does not probe. Lists at 100M users hold
#: thousands of users: one list per product there.
GROUP_MEMBERS = 256


def _groups(lists: list[int], members: dict[int, int], block_size: int) -> Iterator[list[int]]:
    """Consecutive runs of ``lists`` holding about ``block_size`` members (a larger list alone)."""
    group, size = [], 0
    for key in lists:
        if group and size + members[key] > block_size:
            yield group
            group, size = [], 0
        group.append(key)
        size += members[key]
    if group:
        yield group


def _gather(group: list[int], fetch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The members of ``group``'s lists as one candidate set sorted by user_idx:
    ``(unit rows, user_idx, ids, position in group of each member's list)``."""
    parts = [fetch(key) for key in group]
    if len(parts) == 1:
        emb, idx, ids = parts[0][:3]
        return emb, idx, ids, np.zeros(len(idx), dtype=np.int64)
    idx = np.concatenate([p[1] for p in parts])
    order = np.argsort(idx, kind="stable")
    origin = np.repeat(np.arange(len(parts)), [len(p[1]) for p in parts])
    return (np.concatenate([p[0] for p in parts])[order], idx[order],
            np.concatenate([p[2] for p in parts])[order], origin[order])


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
