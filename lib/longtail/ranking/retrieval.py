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
Quantizer = Literal["norm", "spherical"]
#: The ways :func:`build_index` forms lists, in the order :func:`tune_index` tries them.
QUANTIZERS: tuple[str, ...] = ("norm", "spherical")
#: ``ann_nprobe: auto`` aims at this recall@10 of the served lists against exact ones, measured
#: on sampled queries (``score.ann_target_recall``).
DEFAULT_TARGET_RECALL = 0.98
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
    #: How the lists were formed: ``norm`` (L2 k-means on the rows with the norm column) or
    #: ``spherical`` (inner-product k-means on the rows as they are); see :func:`build_index`.
    quantizer: str = "norm"
    #: What :func:`tune_index` measured when it chose ``quantizer`` and ``nprobe`` (None: set by hand).
    tuning: dict | None = None
    _index: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict:
        # Only the bytes travel; each process rebuilds the faiss object once (search()).
        return {k: v for k, v in self.__dict__.items() if k != "_index"} | {"_index": None}

    def describe(self) -> str:
        """One phrase for reports: ``flat, N items`` or ``ivf_pq L lists, nprobe P, N items``."""
        if self.kind == "flat":
            return f"flat, {self.size} items"
        shortlist = f", at least {self.shortlist} candidates" if self.shortlist else ""
        tuned = ""
        if self.tuning:
            tuned = (f", tuned: recall@10 {self.tuning['recall_at_10']:.3f} on {self.tuning['queries']} sampled "
                     f"queries (target {self.tuning['target']:g}){_short_of_target(self.tuning)}")
        return (f"{self.kind} {self.nlist} lists ({self.quantizer}), nprobe {self.nprobe}{shortlist}, "
                f"{self.size} items{tuned}")

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
        if self.kind != "flat":  # every call: tune_index changes nprobe between searches of one index
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

    def search_counted(self, users: np.ndarray, c: int) -> tuple[np.ndarray, float]:
        """:meth:`search`, and the mean share of the indexed items it scanned per user (1.0 for flat)."""
        faiss = _faiss()
        if self.kind == "flat":
            return self.search(users, c), 1.0
        faiss.cvar.indexIVF_stats.reset()
        found = self.search(users, c)
        return found, _scanned_share(faiss, len(users), self.size)


def _scanned_share(faiss, queries: int, size: int) -> float:
    stats = faiss.cvar.indexIVF_stats
    return float(stats.ndis) / max(1, queries * size)


def build_index(
    items: np.ndarray,
    allowed: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    nlist: int = 0,
    nprobe: int = DEFAULT_NPROBE,
    kind: IndexKind = DEFAULT_KIND,
    shortlist: int = PQ_SHORTLIST,
    quantizer: Quantizer = "norm",
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
        quantizer: how the IVF kinds form their lists: ``norm`` (the MIPS-to-L2 norm column, L2
            k-means) or ``spherical`` (inner-product k-means of the rows as they are, lists chosen by
            the inner product with their centroid). Neither wins on every catalogue
            (:func:`tune_index` measures both).

    Returns:
        :class:`CandidateIndex`.

    Raises:
        EnvironmentProblem: faiss is not installed. ValueError: no item may be returned, another
            kind or quantizer.
    """
    if kind not in ("auto", "flat", "ivf", "ivf_pq"):
        raise ValueError(f"index kind {kind!r}: not one of auto, flat, ivf, ivf_pq")
    if quantizer not in QUANTIZERS:
        raise ValueError(f"quantizer {quantizer!r}: not one of {', '.join(QUANTIZERS)}")
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
        if quantizer == "norm":
            rows = with_norm_column(rows, even=kind == "ivf_pq")
        elif kind == "ivf_pq" and rows.shape[1] % 2:  # the fast scan packs codes in pairs
            rows = np.concatenate([rows, np.zeros((len(rows), 1), dtype=np.float32)], axis=1)
        index = _ivf_index(faiss, np.ascontiguousarray(rows), lists, kind, quantizer)
        index.nprobe = min(int(nprobe), lists)
    else:
        index = faiss.IndexIDMap(faiss.IndexFlatIP(rows.shape[1]))
    index.add_with_ids(np.ascontiguousarray(rows), ids)
    quantised = lists and kind == "ivf_pq"
    return CandidateIndex(
        data=faiss.serialize_index(index), kind=kind if lists else "flat", nlist=lists,
        nprobe=min(int(nprobe), lists) if lists else 0, size=len(ids), dim=vectors.shape[1],
        biased=bias is not None, width=rows.shape[1], shortlist=int(shortlist) if quantised else 0,
        quantizer=quantizer if lists else "norm",
    )


def tune_index(
    items: np.ndarray,
    queries: np.ndarray,
    *,
    seen: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    nlist: int = 0,
    kind: IndexKind = DEFAULT_KIND,
    target_recall: float = DEFAULT_TARGET_RECALL,
    candidates: int = 100,
    k: int = 10,
    item_chunk: int = 8192,
) -> CandidateIndex:
    """The index of :func:`build_index` whose lists and ``nprobe`` serve ``queries`` at ``target_recall``.

    The served lists are what counts: for each setting, the candidates of every query are scored
    exactly and the top ``k`` unseen ones compared with the exact top ``k`` over every allowed
    item (recall@k, as ``benchmarks/retrieval.py`` measures it). ``nprobe`` doubles from 1 to
    ``nlist`` (scanning every list: exact for ``ivf``); the first setting at the target ends a
    quantizer's sweep. Quantizers are tried in :data:`QUANTIZERS` order; the next one is built
    only when the previous needed more than :data:`DEFAULT_NPROBE` lists or missed the target (a
    second k-means costs the driver a second build). Of all settings tried, the one that scans
    the fewest vectors per query at the target wins; when none reaches it, the highest recall.

    Why measure rather than fix: the best quantizer and probe count depend on the vectors.
    On 1M synthetic items the norm column gave recall@10 0.970 at nprobe 64 of 4,000 lists
    against 0.945 for inner-product k-means; on Beauty's trained ``llmesr_sasrec`` (440 lists)
    the opposite: 0.886 against 0.948 (docs/scaling.md).

    Args:
        items: ``[N, D]`` item matrix (row 0 padding), as :func:`build_index`.
        queries: ``[Q, D]`` float query vectors (a sample of the users the index will serve).
        seen: optional ``[Q, L]`` int item idxs per query that its list must not hold (0: none).
        allowed, bias, nlist, kind: as :func:`build_index` (a biased index scores ``q . v + b``).
        candidates: asked per query (``score.candidates``).
        target_recall: recall@k to reach. k: list length compared.

    Returns:
        :class:`CandidateIndex` with ``tuning``: ``target``, ``queries``, ``quantizer``, ``nprobe``,
        ``recall_at_10`` (at ``k``), ``scanned`` (mean share of the indexed items scanned per query)
        and ``tried`` (every setting measured). A flat index (too few items for lists) is returned as
        it is, exact, without tuning.

    Raises:
        EnvironmentProblem: faiss is not installed. ValueError: as :func:`build_index`, or no query.
    """
    import torch

    from longtail.ranking.topk import candidate_topk, chunked_topk

    if len(queries) == 0:
        raise ValueError("no query to tune the index on")
    users = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    matrix = torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32))
    if bias is not None:  # exact scores in the index's space: items [v, b], queries [q, 1]
        users = torch.cat([users, torch.ones((len(users), 1))], dim=1)
        matrix = torch.cat([matrix, torch.from_numpy(np.asarray(bias, dtype=np.float32))[:, None]], dim=1)
    seen_t = None if seen is None else torch.from_numpy(np.asarray(seen, dtype=np.int64))
    excluded = None if allowed is None else torch.from_numpy(np.nonzero(~np.asarray(allowed, dtype=bool))[0])
    k = min(k, max(1, int(len(items) - 1 - (0 if excluded is None else len(excluded)))))
    _, want = chunked_topk(users, matrix, k, seen=seen_t, excluded=excluded, item_chunk=item_chunk)
    most_seen = int(seen_counts(seen).max(initial=0)) if seen is not None else 0
    tried: list[dict] = []
    built: dict[str, CandidateIndex] = {}
    for quantizer in QUANTIZERS:
        index = build_index(items, allowed=allowed, bias=bias, nlist=nlist, nprobe=1, kind=kind,
                            quantizer=quantizer)
        if index.kind == "flat":
            return index
        built[quantizer] = index
        c = candidate_count(candidates, k, most_seen, index.size)
        probe = _with_nprobe(index, 1)  # one faiss object per form, its nprobe set per search

        def measure(nprobe: int, probe=probe, quantizer=quantizer, c=c) -> dict:
            probe.nprobe = int(nprobe)
            found, scanned = probe.search_counted(queries, c)
            _, got = candidate_topk(users, matrix, torch.from_numpy(found), k, seen=seen_t, excluded=excluded)
            tried.append({"quantizer": quantizer, "nprobe": nprobe, "recall_at_10": _recall(got, want),
                          "scanned": scanned})
            return tried[-1]

        reached = _fewest_probes(measure, index.nlist, target_recall)
        if reached is not None and reached <= DEFAULT_NPROBE:
            break
    best = _best_setting(tried, target_recall)
    tuning = {"target": float(target_recall), "queries": int(len(queries)), **best, "tried": tried}
    return _with_nprobe(built[best["quantizer"]], best["nprobe"], tuning)


def _fewest_probes(measure, nlist: int, target: float) -> int | None:
    """The fewest lists (to within an eighth) whose ``measure(nprobe)["recall_at_10"]`` reaches
    ``target``: 1, 2, 4, ... up to ``nlist``, then a bisection between the last two (the doubling
    alone can overshoot by half: 64 lists 0.963, 128 lists 0.982 at 1M items). None: never reached."""
    below, p = 0, 1
    while True:
        p = min(p, nlist)
        if measure(p)["recall_at_10"] >= target:
            break
        if p == nlist:
            return None
        below, p = p, p * 2
    above = p
    while above - below > max(1, above // 8):
        middle = (below + above) // 2
        if measure(middle)["recall_at_10"] >= target:
            above = middle
        else:
            below = middle
    return above


def _with_nprobe(index: CandidateIndex, nprobe: int, tuning: dict | None = None) -> CandidateIndex:
    import dataclasses

    return dataclasses.replace(index, nprobe=int(nprobe), tuning=tuning if tuning is not None else index.tuning,
                               _index=None)


def _recall(got, want) -> float:
    """Mean over rows of |got ∩ want| / |want| (item 0 never counts)."""
    got, want = np.asarray(got), np.asarray(want)
    hits = [len(set(g[g > 0]) & set(w[w > 0])) / max(1, int((w > 0).sum())) for g, w in zip(got, want)]
    return float(np.mean(hits)) if hits else 1.0


def _short_of_target(tuning: dict) -> str:
    """A warning phrase when the tuned lists miss their target recall ('' when they reach it).

    When even scanning every list missed it, more probes cannot help: the exactly re-scored
    candidates are too few for how close the top scores lie (seen at 1.1M synthetic items with a
    model that had learnt nothing, docs/scaling.md), so the phrase names the two settings that can.
    """
    if tuning["recall_at_10"] >= tuning["target"]:
        return ""
    every_list = any(t.get("scanned", 0.0) >= 1.0 for t in tuning.get("tried", []))
    where = "even with every list scanned" if every_list else "at every setting tried"
    return f"; BELOW THE TARGET {where}: raise `candidates` or set `retrieval: exact`"


def _best_setting(tried: list[dict], target: float) -> dict:
    """The setting that scans least among those at ``target``; else the highest recall (then least scanned)."""
    reached = [t for t in tried if t["recall_at_10"] >= target]
    if reached:
        return dict(min(reached, key=lambda t: (t["scanned"], -t["recall_at_10"])))
    return dict(max(tried, key=lambda t: (t["recall_at_10"], -t["scanned"])))


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


def _ivf_index(faiss, rows: np.ndarray, lists: int, kind: str, quantizer: str = "norm"):
    """A trained, empty IVF index over ``rows``: lists by k-means, scanned by inner product.

    ``norm`` (rows with the norm column): the coarse quantiser is L2 (the transform makes nearest
    in L2 = highest inner product, and its k-means non-spherical); the lists are scanned by inner
    product, which the norm column does not change (users hold 0 there). ``spherical``: an
    inner-product quantiser over unit centroids, faiss's own choice for inner-product IVFs.
    ``ivf_pq`` codes whole vectors, not residuals: with an L2 quantiser faiss's inner-product
    residual scan would add the L2 distance as the centroid's term.
    """
    width = rows.shape[1]
    coarse = faiss.IndexFlatL2(width) if quantizer == "norm" else faiss.IndexFlatIP(width)
    if kind == "ivf_pq":
        index = faiss.IndexIVFPQFastScan(coarse, width, lists, width // PQ_DIMS_PER_CODE, 4,
                                         faiss.METRIC_INNER_PRODUCT)
        index.by_residual = False
    else:
        index = faiss.IndexIVFFlat(coarse, width, lists, faiss.METRIC_INNER_PRODUCT)
    # faiss sets spherical for inner-product IVFs; the norm transform wants plain k-means.
    index.cp.spherical = quantizer == "spherical"
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
