"""Candidate retrieval: a maximum-inner-product index over the served item vectors (faiss).

Exact scoring costs users x items dot products (``chunked_topk``); at millions of items that
is the whole nightly job (docs/scaling.md). An index returns each user's ``C`` best candidates
by inner product instead, and only those are scored exactly (``topk.candidate_topk``).

The index (:func:`build_index`) is built once from the item matrix, without row 0 (padding) and
without the items the scorer cannot rank, so neither is ever returned:

- **flat** (``IndexFlatIP``): every item is scanned, the result is exact; chosen when the
  catalogue is too small for inverted lists (fewer than :data:`MIN_ITEMS_PER_LIST` per list);
- **ivf** (``IndexIVFFlat``): ``nlist`` lists (``4 sqrt(N)`` by default, the low end of faiss's
  guideline of 4-16 sqrt(N): fewer, larger lists keep the k-means on the driver cheap) holding
  full vectors; a search scans the ``nprobe`` lists nearest the user. ``nprobe = nlist`` is exact;
- **ivf_pq** (``IndexIVFPQFastScan``, from :data:`PQ_MIN_ITEMS` items): the same lists holding 4-bit
  codes of each dimension, scanned 32 items at a time in SIMD registers; a search returns at
  least :data:`PQ_SHORTLIST` candidates, which the caller scores exactly from the full matrix.

Both IVF kinds use the MIPS-to-L2 transform (:func:`with_norm_column`): items get one more
column so that every row has the same norm, users a 0 there, and the k-means and the choice of
lists run in L2, where they follow the inner product even though popular items are longer (an
inner-product k-means lets the longest centroids take most items). The lists are scanned by
inner product, which the extra column does not change.

A per-item additive bias ``b`` (``score = u . v + b``) folds into the inner product as one
more dimension: items ``[v, b]``, users ``[u, 1]``.

Measured (``benchmarks/retrieval.py --vectors``, 1M synthetic items, one thread, docs/scaling.md):
the transform raised IVF's recall@10 at nprobe 64 from 0.945 to 0.970; the full-vector scan
costs about 20 ns per vector, the fast scan of 4-bit codes about 2-3 ns, so ``ivf_pq`` with 100
candidates re-scored exactly served recall 0.96 at 30x fewer core-seconds than the exact scan, where
``ivf`` served 0.97 at 8x. Codes of 2 dimensions each (half the scan) lost too much: 0.91 with 400
candidates. Codes of residuals cannot be used: with an L2 quantiser faiss's inner-product scan
adds the centroid's L2 distance as its term (recall 0.12-0.52).

Why IVF and not HNSW (``benchmarks/retrieval.py``, 50,000 synthetic items, 100 candidates, one
thread): HNSW (M 32, efSearch 100) took 4x IVF's build time and served lists of recall@10 0.87
in the time IVF (nprobe 64) served 0.99; an inner-product graph has no exact setting, IVF has
one (``nprobe = nlist``); and IVF's build is one k-means over a sample
(:data:`TRAIN_POINTS_PER_LIST` items per list) plus one assignment pass, where HNSW inserts every
item into a graph (``neighbors``' HNSW: 1,343 s for 1.1M users on 2 cores).

The index travels as bytes (:class:`CandidateIndex` pickles them; ``faiss.serialize_index``)
and is rebuilt from them on first search in each process. faiss is the ``ann`` extra and is
imported only here, inside functions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from longtail.core.errors import EnvironmentProblem

#: ``score.retrieval: auto`` ranks catalogues up to this many rankable items exactly: there the
#: scan costs about 1 ms per user or less on one thread (``benchmarks/retrieval.py``: 0.35 ms at
#: 50,000 items, 1.0-1.3 ms at 200,000) and the lists stay exactly what they were. Above it the
#: scan grows with the catalogue and the index, already 2.4-3.8x faster at 200,000 items with a
#: recall@10 of 0.98 (nprobe 64), gains with its square root.
EXACT_MAX_ITEMS = 200_000
#: Items per inverted list below which lists are pointless: faiss's k-means asks for 39 training
#: points per centroid, and a catalogue that small (under about 24,000 items at 4 sqrt(N) lists)
#: is scanned whole in a fraction of a millisecond per user.
MIN_ITEMS_PER_LIST = 39
#: k-means trains on at most this many items per list (a seeded sample; faiss's default is 256):
#: the build is the driver's cost, ``points x nlist x dim x iterations``, so at 10M items and
#: 12,649 lists 64 per list is a quarter of faiss's default.
TRAIN_POINTS_PER_LIST = 64

#: Lists scanned per user by default (``score.ann_nprobe``).
DEFAULT_NPROBE = 64
#: ``ivf_pq`` codes each dimension in 4 bits (16 levels per dimension, fast scan).
PQ_DIMS_PER_CODE = 1
#: Candidates an ``ivf_pq`` search returns at least, re-scored exactly by the caller.
PQ_SHORTLIST = 100
#: ``kind="auto"`` quantises (``ivf_pq``) from this many indexed items up; below, the lists hold
#: full vectors (``ivf``): the scan is cheap there and the codes' 4-bit centroids need data.
PQ_MIN_ITEMS = 100_000

Retrieval = Literal["exact", "ann"]
IndexKind = Literal["auto", "flat", "ivf", "ivf_pq"]
DEFAULT_KIND: IndexKind = "auto"


def choose_retrieval(setting: str, rankable: int) -> Retrieval:
    """``exact`` or ``ann`` for ``score.retrieval`` (``auto``: exact up to :data:`EXACT_MAX_ITEMS` items).

    Args:
        setting: ``auto``, ``exact`` or ``ann``. rankable: items the scorer may rank.

    Raises:
        ValueError: another setting (the config's validation refuses it before).
    """
    if setting == "auto":
        return "exact" if rankable <= EXACT_MAX_ITEMS else "ann"
    if setting not in ("exact", "ann"):
        raise ValueError(f"retrieval {setting!r}: not one of auto, exact, ann")
    return setting  # type: ignore[return-value]


def list_count(n_items: int, nlist: int = 0) -> int:
    """Inverted lists for ``n_items`` indexed items; 0 means a flat (exact) index.

    Args:
        nlist: ``score.ann_nlist``: 0 chooses ``round(4 sqrt(n_items))``, flat when that leaves
            fewer than :data:`MIN_ITEMS_PER_LIST` items per list; a number is taken as it is, at
            most one list per item.
    """
    if nlist:
        return max(1, min(int(nlist), n_items))
    automatic = round(4 * math.sqrt(max(n_items, 0)))
    return automatic if automatic and n_items >= MIN_ITEMS_PER_LIST * automatic else 0


def candidate_count(candidates: int, pool: int, seen: int, indexed: int) -> int:
    """How many candidates to ask the index for: ``max(candidates, pool + seen)``, at most ``indexed``.

    ``pool`` items must remain after a user's ``seen`` items drop out (K, or the MMR re-rank's
    pool); ``pool + seen`` candidates guarantee it, so with an exact index the lists equal the
    exact ones. The lists of an ``ivf`` index hold full vectors, so the index's order of the
    items it scanned is already the exact one: ``candidates`` (``score.candidates``) beyond
    ``pool + seen`` is a margin for rounding (faiss's and torch's sums differ in the last bit),
    not for recall, which ``nprobe`` sets. An ``ivf_pq`` index widens every search to its
    ``shortlist`` (:meth:`CandidateIndex.search`); candidates beyond that buy recall there.
    """
    return max(1, min(max(int(candidates), int(pool) + int(seen)), int(indexed)))


def seen_counts(seen: np.ndarray) -> np.ndarray:
    """Distinct item idxs (not 0) per row of a padded ``[B, L]`` array of seen items."""
    if seen.size == 0:
        return np.zeros(seen.shape[0], dtype=np.int64)
    s = np.sort(seen, axis=1)
    new = np.ones_like(s, dtype=bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    return ((s > 0) & new).sum(axis=1)


@dataclass
class CandidateIndex:
    """A serialised faiss inner-product index over item idxs; what each task searches.

    Attributes:
        data: ``faiss.serialize_index`` bytes (uint8). kind: ``flat``, ``ivf`` or ``ivf_pq``.
        nlist, nprobe: inverted lists and lists scanned per search (0 for flat).
        size: items indexed. dim: user vector width the index expects (without the bias column).
        biased: items carry a bias column (users get a 1 appended).
        width: the indexed vectors' width: ``dim`` (+ 1 bias) for flat; + 1 norm column (and a zero
            column to make it even for ``ivf_pq``) for the IVF kinds, where users get zeros.
        shortlist: candidates a quantised index (``ivf_pq``) returns at least, whatever fewer is
            asked for: its order is approximate, the caller's exact re-score picks the top; 0 otherwise.
    """

    data: np.ndarray
    kind: str
    nlist: int
    nprobe: int
    size: int
    dim: int
    biased: bool
    width: int = 0
    shortlist: int = 0
    _index: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict:
        # Only the bytes travel; each process rebuilds the faiss object once (search()).
        return {k: v for k, v in self.__dict__.items() if k != "_index"} | {"_index": None}

    def describe(self) -> str:
        """One phrase for reports: ``flat, N items`` or ``ivf_pq L lists, nprobe P, N items``."""
        if self.kind == "flat":
            return f"flat, {self.size} items"
        shortlist = f", at least {self.shortlist} candidates" if self.shortlist else ""
        return f"{self.kind} {self.nlist} lists, nprobe {self.nprobe}{shortlist}, {self.size} items"

    def search(self, users: np.ndarray, c: int, threads: int | None = None) -> np.ndarray:
        """The ``c`` (at least; ``shortlist`` for ``ivf_pq``) items of highest inner product per user, best first.

        Args:
            users: ``[B, dim]`` float user vectors. c: candidates per user.
            threads: faiss's OpenMP threads (a Spark task's cores); None leaves faiss's setting.

        Returns:
            ``[B, max(c, shortlist)]`` int64 item idxs (at most ``size`` columns); 0 where the index
            found fewer (IVF lists short).

        Raises:
            EnvironmentProblem: faiss is not installed. ValueError: user vectors of another width.
        """
        faiss = _faiss()
        if threads:
            faiss.omp_set_num_threads(int(threads))
        if self._index is None:
            self._index = faiss.deserialize_index(self.data)
            if self.kind != "flat":
                faiss.extract_index_ivf(self._index).nprobe = self.nprobe
        queries = np.asarray(users, dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise ValueError(f"user vectors are {queries.shape[1]}-d, the index holds {self.dim}-d items")
        columns = [queries]
        if self.biased:
            columns.append(np.ones((len(queries), 1), dtype=np.float32))
        extra = (self.width or self.dim + self.biased) - self.dim - self.biased
        if extra:  # the norm column (and padding) of the IVF kinds: users hold 0 there
            columns.append(np.zeros((len(queries), extra), dtype=np.float32))
        wanted = min(max(int(c), self.shortlist), self.size)
        _, labels = self._index.search(np.ascontiguousarray(np.concatenate(columns, axis=1)), wanted)
        return np.where(labels > 0, labels, 0).astype(np.int64)


def build_index(
    items: np.ndarray,
    allowed: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    nlist: int = 0,
    nprobe: int = DEFAULT_NPROBE,
    kind: IndexKind = DEFAULT_KIND,
    shortlist: int = PQ_SHORTLIST,
) -> CandidateIndex:
    """A maximum-inner-product index over the rows of ``items`` (row = item idx).

    Args:
        items: ``[N, D]`` float item vectors, row 0 padding (never indexed).
        allowed: ``[N]`` bool, the items that may be returned (default: every row but 0).
        bias: ``[N]`` per-item additive score (``u . v + b``), folded in as a column; None: none.
        nlist: lists (``score.ann_nlist``; 0: :func:`list_count`'s automatic choice).
        nprobe: lists scanned per search (``score.ann_nprobe``), at most ``nlist``.
        kind: ``ivf`` (full vectors in the lists) or ``ivf_pq`` (4-bit codes, fast scan); either is
            flat when :func:`list_count` gives 0 lists. ``flat`` forces the exact index; ``auto``
            is ``ivf_pq`` from :data:`PQ_MIN_ITEMS` items up, ``ivf`` below.
        shortlist: ``ivf_pq`` only: candidates a search returns at least (for the exact re-score).

    Returns:
        :class:`CandidateIndex`.

    Raises:
        EnvironmentProblem: faiss is not installed. ValueError: no item may be returned, another kind.
    """
    if kind not in ("auto", "flat", "ivf", "ivf_pq"):
        raise ValueError(f"index kind {kind!r}: not one of auto, flat, ivf, ivf_pq")
    faiss = _faiss()
    vectors = np.asarray(items, dtype=np.float32)
    keep = np.ones(len(vectors), dtype=bool) if allowed is None else np.asarray(allowed, dtype=bool).copy()
    keep[0] = False
    ids = np.nonzero(keep)[0].astype(np.int64)
    if not len(ids):
        raise ValueError("no item to index")
    rows = vectors[ids]
    if bias is not None:
        rows = np.concatenate([rows, np.asarray(bias, dtype=np.float32)[ids, None]], axis=1)
    lists = list_count(len(ids), nlist) if kind != "flat" else 0
    if kind == "auto":
        kind = "ivf_pq" if len(ids) >= PQ_MIN_ITEMS else "ivf"
    if lists:
        rows = with_norm_column(rows, even=kind == "ivf_pq")
        index = _ivf_index(faiss, rows, lists, kind)
        index.nprobe = min(int(nprobe), lists)
    else:
        index = faiss.IndexIDMap(faiss.IndexFlatIP(rows.shape[1]))
    index.add_with_ids(np.ascontiguousarray(rows), ids)
    quantised = lists and kind == "ivf_pq"
    return CandidateIndex(
        data=faiss.serialize_index(index), kind=kind if lists else "flat", nlist=lists,
        nprobe=min(int(nprobe), lists) if lists else 0, size=len(ids), dim=vectors.shape[1],
        biased=bias is not None, width=rows.shape[1], shortlist=int(shortlist) if quantised else 0,
    )


def with_norm_column(rows: np.ndarray, even: bool = False) -> np.ndarray:
    """``rows`` with one more column ``sqrt(M^2 - |r|^2)`` (``M`` the largest norm), so every row has norm ``M``.

    The MIPS-to-L2 transform (Bachrach et al., RecSys 2014): for a query ``[u, 0]`` the inner
    product is unchanged and the L2 distance is ``|u|^2 + M^2 - 2 u . r``, so k-means and the
    nearest lists in L2 follow the inner product even where norms differ (popular items are longer,
    the bias column varies). ``even``: one zero column more where the width is odd (the fast scan packs codes in pairs).
    """
    rows = np.asarray(rows, dtype=np.float32)
    squared = np.einsum("ij,ij->i", rows, rows, dtype=np.float64)
    norm = np.sqrt(np.maximum(squared.max(initial=0.0) - squared, 0.0)).astype(np.float32)
    columns = [rows, norm[:, None]]
    if even and (rows.shape[1] + 1) % 2:
        columns.append(np.zeros((len(rows), 1), dtype=np.float32))
    return np.ascontiguousarray(np.concatenate(columns, axis=1))


def _ivf_index(faiss, rows: np.ndarray, lists: int, kind: str):
    """A trained, empty IVF index over ``rows`` (with the norm column): L2 k-means lists, inner-product scan.

    The coarse quantiser is L2 (the transform makes nearest in L2 = highest inner product, and its
    k-means non-spherical); the lists are scanned by inner product, which the norm column does
    not change (users hold 0 there). ``ivf_pq`` codes whole vectors, not residuals: with an L2
    quantiser faiss's inner-product residual scan would add the L2 distance as the centroid's term.
    """
    width = rows.shape[1]
    quantizer = faiss.IndexFlatL2(width)
    if kind == "ivf_pq":
        index = faiss.IndexIVFPQFastScan(quantizer, width, lists, width // PQ_DIMS_PER_CODE, 4,
                                         faiss.METRIC_INNER_PRODUCT)
        index.by_residual = False
    else:
        index = faiss.IndexIVFFlat(quantizer, width, lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.spherical = False  # faiss sets it for inner-product IVFs; the transform wants plain k-means
    index.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST  # faiss samples (seeded: repeatable)
    index.train(rows)
    return index


def _faiss():
    """The faiss module; a one-line error naming the extra when it is missing."""
    try:
        import faiss  # noqa: PLC0415 - optional dependency, loaded where it is used
    except ImportError:
        raise EnvironmentProblem(
            "score.retrieval ann: faiss is not installed (pip install 'longtail[ann]')"
        ) from None
    return faiss
