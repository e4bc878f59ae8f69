"""Similar items: the item -> items lists of ``longtail similar-items`` (table ``similar_items``).

Three sources, each a dot product of a *query* vector (the item whose list it is) and an *item*
vector (a candidate), row = catalogue idx (:class:`SimilarityView`):

- ``collaborative``: the cosine of the trained model's item vectors (items the model has a row for);
- ``semantic``: the cosine of the LLM item embeddings (``item_embeddings``): items known only from
  their text get neighbours and are neighbours;
- ``blend``: ``w_c z_c + w_s z_s``, each source's *adjusted* similarity (below) z-scored per query
  item over the catalogue (:func:`~longtail.ranking.topk.zscore_blend_users`, the blend ``score.hybrid``
  uses), so neither scale dominates; an item missing from one source is ranked by the other alone.
  A z-score per query is an affine map of that query's scores, so with one weight at 0 the blend's
  lists are that source's lists (:func:`blend_view` then returns that source's view): the endpoints
  of the weight grid :func:`choose_blend` chooses from on validation pairs are the sources themselves.

The exposure adjustment of the served models, for items (CSLS, Conneau et al., ICLR 2018): each
candidate's similarity is lowered by ``penalty x hubness``, its hubness being the mean of its 10
highest similarities to a seeded sample of query items (itself left out). An item close to very
many items (a hub: typically a bestseller) moves down every list, so the head does not fill them.
Still one dot product: items ``[v, -hubness]``, queries ``[q, penalty]``, as
:class:`~longtail.inference.scorers.ExposureAdjusted`. The blend has no hubness of its own: it blends
the two adjusted sources (the moments of ``[v, -hubness]`` give the z-scores of adjusted scores).

A list never holds the item itself, nor an item the availability rules exclude (``blocked``).
The tasks of the stage rank query items in batches (:meth:`SimilarityView.top_k`): the exact top K
over the catalogue in item chunks, or with a candidate index (``similar_items.retrieval``, the
choice of ``score.retrieval``) the exact top K among its candidates.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from longtail.core.errors import InputError
from longtail.ranking.retrieval import (
    DEFAULT_NPROBE,
    DEFAULT_TARGET_RECALL,
    CandidateIndex,
    build_index,
    candidate_count,
    tune_index,
)
from longtail.ranking.topk import (
    NEG_INF,
    candidate_topk,
    catalogue_moments,
    chunked_topk,
    zscore_blend_items,
    zscore_blend_users,
)
from longtail.ranking.vectors import unit_rows

SOURCES = ("collaborative", "semantic", "blend")
#: Highest similarities averaged into an item's hubness (as the models' ``item_hubness``).
HUBNESS_NEIGHBOURS = 10


@dataclass
class SimilarityView:
    """One source's vectors. ``score(q, j) = query_vectors([q]) @ items[j]``.

    Attributes:
        source: ``collaborative``, ``semantic`` or ``blend``.
        items: ``[N, D + 1]`` float32 candidate vectors, the last column ``-hubness``.
        rows: ``[N]`` bool, the items this source has a vector for (they get a list; row 0 never).
        allowed: ``[N]`` bool, the items that may be a neighbour (``rows`` minus unavailable items).
        penalty: the hubness penalty (the queries' last column).
        parts: the blend's parts ``(weight, source view, mean, cov)`` (the moments of the source's
            ``items``); None for one source.
    """

    source: str
    items: np.ndarray
    rows: np.ndarray
    allowed: np.ndarray
    penalty: float
    parts: list | None = None
    _excluded: np.ndarray | None = field(default=None, repr=False)

    def query_vectors(self, idxs: np.ndarray) -> torch.Tensor:
        """``[B, D + 1]`` query vectors of item idxs ``idxs`` (the penalty as the last column)."""
        if self.parts is None:
            base = torch.from_numpy(self.items[idxs, :-1])
        else:  # [w_m [q_m, p] / std_m ..., offset]: meets the items' [[v_m, -hub_m] ..., 1]
            base = zscore_blend_users([(w, view.query_vectors(idxs), m, c) for w, view, m, c in self.parts])
        # A query without a vector here gets no penalty either: its part of a blend is then 0, not
        # a ranking by low hubness.
        column = torch.from_numpy((self.penalty * self.rows[idxs]).astype(np.float32))[:, None]
        return torch.cat([base.to(torch.float32), column], dim=1)

    def excluded(self) -> torch.Tensor:
        """Item idxs that are never a neighbour (no vector here, unavailable, padding)."""
        if self._excluded is None:
            self._excluded = np.nonzero(~self.allowed)[0].astype(np.int64)
        return torch.from_numpy(self._excluded)

    def top_k(
        self, idxs: np.ndarray, k: int, item_chunk: int, index: CandidateIndex | None = None, candidates: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar allowed items of each query item ``idxs``, never the item itself.

        With ``index`` (:func:`make_index` of this view) the exact top among ``max(candidates, k + 1)``
        candidates; a query left with fewer than ``k`` (an IVF probe that found too few) is ranked over
        the whole catalogue instead, so lists are as long with the index as without.

        Returns:
            ``(scores [B, k] float32, items [B, k] int64)``, best first; ``-inf`` / 0 where the
            source has fewer than ``k`` other allowed items.
        """
        queries = self.query_vectors(idxs)
        items = torch.from_numpy(self.items)
        itself = torch.from_numpy(np.asarray(idxs, dtype=np.int64)[:, None])
        if index is None:
            scores, found = chunked_topk(queries, items, k, seen=itself, excluded=self.excluded(), item_chunk=item_chunk)
        else:
            c = candidate_count(candidates, k, 1, index.size)
            pool = torch.from_numpy(index.search(queries[:, :-1].numpy(), c, threads=torch.get_num_threads()))
            scores, found = candidate_topk(queries, items, pool, k, seen=itself, excluded=self.excluded())
            short = torch.nonzero(torch.isneginf(scores[:, -1]))[:, 0]
            if len(short):
                scores[short], found[short] = chunked_topk(
                    queries[short], items, k, seen=itself[short], excluded=self.excluded(), item_chunk=item_chunk
                )
        return scores.numpy().astype(np.float32), found.numpy()


def make_index(view: SimilarityView, nlist: int = 0, nprobe: int | str = 64, *, tune_items: int = 2000,
               target_recall: float = DEFAULT_TARGET_RECALL, candidates: int = 100, k: int = 10,
               seed: int = 0) -> CandidateIndex:
    """The candidate index of a view: its allowed items, the hubness column as the per-item bias.

    ``nprobe`` ``auto``: the lists' form and the fewest lists reaching ``target_recall`` on the
    lists of ``tune_items`` items (a seeded sample of those with a vector; each query's own item
    excluded, as in the table), :func:`~longtail.ranking.retrieval.tune_index`.

    Raises:
        EnvironmentProblem: faiss is not installed.
    """
    bias = view.penalty * view.items[:, -1]  # the index's queries get a 1 there, ours the penalty
    items = view.items[:, :-1]
    if nprobe != "auto":
        return build_index(items, allowed=view.allowed, bias=bias, nlist=nlist, nprobe=int(nprobe))
    rows = np.flatnonzero(view.rows)
    rows = rows[rows > 0]
    if len(rows) > tune_items:
        rows = np.sort(np.random.default_rng(seed).choice(rows, tune_items, replace=False))
    if not len(rows):
        return build_index(items, allowed=view.allowed, bias=bias, nlist=nlist, nprobe=DEFAULT_NPROBE)
    queries = view.query_vectors(rows).numpy()[:, :-1]  # the index appends the bias column's 1
    return tune_index(items, queries, seen=rows[:, None], allowed=view.allowed, bias=bias, nlist=nlist,
                      target_recall=target_recall, candidates=candidates, k=k)


def build_views(
    sources: list[str],
    collaborative: tuple[np.ndarray, np.ndarray] | None,
    semantic: tuple[np.ndarray, np.ndarray] | None,
    blocked: np.ndarray,
    weights: tuple[float, float] = (1.0, 1.0),
    penalty: float = 0.5,
    hubness_queries: int = 5000,
    seed: int = 0,
) -> list[SimilarityView]:
    """The views of ``sources``, hubness included (computed here, on the driver).

    Args:
        sources: a subset of :data:`SOURCES`.
        collaborative, semantic: ``(vectors [N, D], has_vector [N] bool)`` in catalogue idx space
            (row 0 padding); None where there are none.
        blocked: ``[N]`` bool, items the availability rules exclude (never a neighbour).
        weights: the blend's ``(collaborative, semantic)`` weights.
        penalty: ``similar_items.hubness_penalty`` (0: no adjustment, the hubness is not computed).
        hubness_queries: query items sampled (seeded) for the hubness.

    Raises:
        InputError: a source without vectors (naming the key and what to run), or a blend whose
            weights are both 0.
    """
    singles = source_views(sources, collaborative, semantic, blocked, penalty, hubness_queries, seed)
    return [blend_view(singles, weights) if s == "blend" else singles[s] for s in sources]


def source_views(
    sources: list[str],
    collaborative: tuple[np.ndarray, np.ndarray] | None,
    semantic: tuple[np.ndarray, np.ndarray] | None,
    blocked: np.ndarray,
    penalty: float = 0.5,
    hubness_queries: int = 5000,
    seed: int = 0,
) -> dict[str, SimilarityView]:
    """``{source: view}`` of the single sources ``sources`` needs (a blend needs both where both
    have vectors), each with its hubness. Arguments and errors as :func:`build_views`."""
    units = {"collaborative": _unit(collaborative), "semantic": _unit(semantic)}
    wanted = [s for s in ("collaborative", "semantic") if s in sources or ("blend" in sources and units[s] is not None)]
    views = {}
    for source in wanted:
        if units[source] is None:
            raise InputError(f"config key similar_items.sources: {source} has no item vectors ({_WHY[source]})")
        view = _view(source, *units[source], blocked, penalty)
        if penalty:  # a sample per source, whichever other sources are asked for
            rng = np.random.default_rng([seed, SOURCES.index(source)])
            view.items[:, -1] = -hubness(view, hubness_queries, rng)
        views[source] = view
    if "blend" in sources and not views:
        raise InputError("config key similar_items.sources: blend has no source with item vectors")
    return views


_WHY = {
    "collaborative": "the model has no item in the catalogue",
    "semantic": "no item_embeddings: run `longtail encode`",
}


def _unit(pair: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Unit rows where there is a vector, zero rows elsewhere; None when no item has one."""
    if pair is None:
        return None
    vectors, rows = np.asarray(pair[0], dtype=np.float32), np.asarray(pair[1], dtype=bool).copy()
    rows[0] = False
    rows &= np.linalg.norm(vectors, axis=1) > 0
    if not rows.any():
        return None
    unit = unit_rows(vectors).astype(np.float32)
    unit[~rows] = 0.0
    return unit, rows


def _view(source: str, vectors: np.ndarray, rows: np.ndarray, blocked: np.ndarray, penalty: float) -> SimilarityView:
    items = np.concatenate([vectors, np.zeros((len(vectors), 1), dtype=np.float32)], axis=1)
    return SimilarityView(source, items, rows, rows & ~blocked, float(penalty))


def blend_view(singles: dict[str, SimilarityView], weights: tuple[float, float]) -> SimilarityView:
    """The ``blend`` view: ``w_c z_c + w_s z_s`` of the adjusted source views in ``singles``.

    A source without a view or with weight 0 is left out; with one source left the blend *is* that
    source (its view renamed: the same lists and scores), so a blend weight of 0 or 1 gives exactly
    the collaborative or the semantic lists.

    Raises:
        InputError: no source left (both weights 0, or no vectors).
    """
    used = [(float(w), singles[s]) for s, w in zip(("collaborative", "semantic"), weights) if w and s in singles]
    if not used:
        raise InputError("config key similar_items.sources: blend has no source with item vectors and a weight above 0")
    if len(used) == 1:
        return dataclasses.replace(used[0][1], source="blend", _excluded=None)
    parts, rows = [], np.zeros(len(used[0][1].rows), dtype=bool)
    for weight, view in used:
        mean, cov = _moments(view)
        parts.append((weight, view, mean, cov))
        rows |= view.rows
    items = zscore_blend_items([torch.from_numpy(v.items) for _, v in used]).numpy()  # [.., 1] meets the offset
    items = np.concatenate([items, np.zeros((len(items), 1), dtype=np.float32)], axis=1)  # no hubness of its own
    allowed = rows & np.logical_or.reduce([v.allowed for _, v in used])
    return SimilarityView("blend", items, rows, allowed, 0.0, parts=parts)


def _moments(view: SimilarityView) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of a single view's items ``[v, -hubness]`` over the items it has."""
    return catalogue_moments(torch.from_numpy(view.items), torch.from_numpy(view.rows))


def hubness(view: SimilarityView, queries: int, rng: np.random.Generator, item_chunk: int = 4096) -> np.ndarray:
    """``[N]`` float32: each item's mean of its :data:`HUBNESS_NEIGHBOURS` highest unadjusted scores
    over a sample of at most ``queries`` query items of the view (never its own score); 0 for items
    without a vector."""
    pool = np.nonzero(view.rows)[0]
    sample = np.sort(rng.choice(pool, size=min(queries, len(pool)), replace=False))
    q = view.query_vectors(sample)[:, :-1]
    items = torch.from_numpy(view.items[:, :-1])
    take = min(HUBNESS_NEIGHBOURS, max(len(sample) - 1, 1))
    out = np.zeros(len(view.items), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(items), item_chunk):
            scores = q @ items[start : start + item_chunk].T
            inside = np.nonzero((sample >= start) & (sample < start + scores.shape[1]))[0]
            scores[torch.from_numpy(inside), torch.from_numpy(sample[inside] - start)] = NEG_INF
            out[start : start + scores.shape[1]] = torch.topk(scores, take, dim=0).values.mean(0).numpy()
    out[~view.rows | ~np.isfinite(out)] = 0.0
    return out


#: The semantic shares ``s`` of the blend (weights ``1 - s`` and ``s``) ``semantic_weight: auto``
#: chooses from; 0 and 1 are the collaborative and the semantic source themselves.
SHARES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


@dataclass
class BlendChoice:
    """The blend chosen on validation pairs.

    Attributes:
        share: the semantic share ``s`` (weights ``1 - s``, ``s``).
        figures: per share of the grid ``{"hr", "tail_hr", "tail_share"}`` on the validation pairs
            (``hr``: share of pairs whose next item is in the query item's top K; ``tail_hr``: the
            same over pairs whose next item is a tail item; ``tail_share``: tail items' share of the
            slots of the lists of the sampled items).
        pairs: validation pairs; tail_pairs: those whose next item is a tail item.
    """

    share: float
    figures: dict[float, dict[str, float]]
    pairs: int
    tail_pairs: int

    @property
    def weights(self) -> tuple[float, float]:
        return 1.0 - self.share, self.share


def choose_blend(
    singles: dict[str, SimilarityView],
    pairs: np.ndarray,
    tail: np.ndarray,
    k: int = 10,
    shares: tuple[float, ...] = SHARES,
    tail_queries: int = 5000,
    seed: int = 0,
    item_chunk: int = 4096,
    query_batch: int = 2048,
    hr_tolerance: float = 0.0,
) -> BlendChoice | None:
    """Of the shares whose blend lists hold the next item of validation ``pairs`` (item-to-item
    HR@``k``) at least ``1 - hr_tolerance`` times as often as the best share's, the one with the
    highest tail share of the lists (then tail-item HR@``k``, then the smaller share). The lists are
    the table's: adjusted sources, availability, never the query item; the grid holds both sources
    (0, 1), so the choice is within the tolerance of either on these pairs (at 0: at least as good).

    One pass over the catalogue per batch of queries: each source's z-scores once per item chunk,
    every share's running top ``k`` from their weighted sums.

    Args:
        singles: :func:`source_views` (both sources). pairs: ``[P, 2]`` item idxs (query, next item).
        tail: ``[N]`` bool, tail items (text-only items count as tail). tail_queries: a seeded sample
            of items both sources know, whose lists give the tail share. hr_tolerance: the relative
            HR@``k`` a share may give up to the best for more tail items (``similar_items.hr_tolerance``).

    Returns:
        :class:`BlendChoice`; None when a source has no view or there are no pairs.
    """
    if set(singles) != {"collaborative", "semantic"} or not len(pairs):
        return None
    both = np.nonzero(singles["collaborative"].rows & singles["semantic"].rows)[0]
    rng = np.random.default_rng([seed, 7])
    sample = np.sort(rng.choice(both, size=min(tail_queries, len(both)), replace=False)) if len(both) else both
    queries = np.concatenate([np.asarray(pairs[:, 0], dtype=np.int64), sample.astype(np.int64)])
    found = {s: np.zeros((len(queries), k), dtype=np.int64) for s in shares}
    for start in range(0, len(queries), query_batch):
        batch = queries[start : start + query_batch]
        for share, items in _grid_top_k(singles, batch, k, shares, item_chunk).items():
            found[share][start : start + len(batch)] = items
    nxt, is_tail = np.asarray(pairs[:, 1], dtype=np.int64), np.asarray(tail, dtype=bool)
    figures = {s: _choice_figures(found[s], nxt, is_tail) for s in shares}
    most = max(figures[s]["hits"] for s in shares)
    # Shares within the tolerance of the best HR serve the same list quality; of those, the one that
    # shows more tail items serves the long tail at no cost.
    tied = [s for s in shares if figures[s]["hits"] >= (1.0 - hr_tolerance) * most]
    best = max(tied, key=lambda s: (figures[s]["tail_share"], figures[s]["tail_hits"], -s))
    tail_pairs = int(is_tail[nxt].sum())
    for f in figures.values():
        f["hr"], f["tail_hr"] = f.pop("hits") / len(nxt), f.pop("tail_hits") / max(tail_pairs, 1)
    return BlendChoice(best, figures, len(nxt), tail_pairs)


def _grid_top_k(
    singles: dict[str, SimilarityView], queries: np.ndarray, k: int, shares: tuple[float, ...], item_chunk: int,
) -> dict[float, np.ndarray]:
    """``{share: [B, k] item idxs}``: the blend lists of ``queries`` at every share (0 where a query
    has no list at that share, or its list is short)."""
    views = (singles["collaborative"], singles["semantic"])
    sides = [(zscore_blend_users([(1.0, v.query_vectors(queries), *_moments(v))]),
              zscore_blend_items([torch.from_numpy(v.items)])) for v in views]
    allowed = [torch.from_numpy(v.allowed) for v in views]
    best = {s: (torch.full((len(queries), k), NEG_INF), torch.zeros((len(queries), k), dtype=torch.long))
            for s in shares}
    itself = torch.from_numpy(queries)[:, None]
    with torch.no_grad():
        for start in range(0, len(views[0].items), item_chunk):
            end = min(start + item_chunk, len(views[0].items))
            z = [user @ items[start:end].T for user, items in sides]
            ids = torch.arange(start, end)
            for s in shares:
                scores = z[0] if s == 0 else z[1] if s == 1 else (1 - s) * z[0] + s * z[1]
                ok = allowed[0][start:end] if s == 0 else allowed[1][start:end] if s == 1 else (
                    allowed[0][start:end] | allowed[1][start:end])
                scores = scores.masked_fill(~ok[None, :] | (itself == ids[None, :]), NEG_INF)
                top, pos = torch.topk(torch.cat([best[s][0], scores], dim=1), k, dim=1)
                best[s] = (top, torch.gather(torch.cat([best[s][1], ids.expand(len(queries), -1)], dim=1), 1, pos))
    out = {}
    for s in shares:
        rows = views[0].rows if s == 0 else views[1].rows if s == 1 else views[0].rows | views[1].rows
        items = best[s][1].numpy().copy()
        items[~rows[queries][:, None] | torch.isneginf(best[s][0]).numpy()] = 0
        out[s] = items
    return out


def _choice_figures(found: np.ndarray, nxt: np.ndarray, tail: np.ndarray) -> dict[str, float]:
    """Hits of the first ``len(nxt)`` lists (the pairs'), tail hits, and the tail share of the rest."""
    pairs, sample = found[: len(nxt)], found[len(nxt) :]
    hit = (pairs == nxt[:, None]).any(axis=1)
    filled = sample[sample > 0]
    return {"hits": int(hit.sum()), "tail_hits": int((hit & tail[nxt]).sum()),
            "tail_share": float(tail[filled].mean()) if len(filled) else 0.0}


def check_list_length(views: list[SimilarityView], k: int) -> None:
    """Every item of every view can get ``k`` neighbours (other allowed items), or one line naming K.

    Raises:
        InputError: naming ``similar_items.top_k`` and the source.
    """
    for view in views:
        others = int(view.allowed.sum()) - 1  # an item that is allowed is not its own neighbour
        if k > others:
            raise InputError(
                f"config key similar_items.top_k: {k} is more than the {others} other items source {view.source} "
                "can rank; nothing written"
            )


# --------------------------------------------------------------------------- figures of a table (Spark)


def table_figures(lists) -> dict[str, dict[str, float]]:
    """Per source: ``items`` (items with a list), ``coverage`` (share of them that are in some list)
    and ``tail_share`` (share of the slots holding a tail item), in one aggregation.

    Args:
        lists: a DataFrame of ``source``, ``item_id``, ``similar_item_id`` and ``is_tail`` (of the
            similar item) rows, e.g. one ``run_date`` of ``similar_items`` with the tail flags joined.
    """
    from pyspark.sql import functions as F  # noqa: PLC0415 - the maths above needs no Spark

    rows = lists.groupBy("source").agg(
        F.countDistinct("item_id").alias("items"),
        F.countDistinct("similar_item_id").alias("neighbours"),
        F.avg(F.col("is_tail").cast("double")).alias("tail_share"),
    ).collect()
    return {
        r["source"]: {
            "items": int(r["items"]), "coverage": float(r["neighbours"]) / max(int(r["items"]), 1),
            "tail_share": float(r["tail_share"] or 0.0),
        }
        for r in rows
    }


def item_to_item_hits(lists, pairs, k: int) -> dict[str, dict[str, dict[str, float]]]:
    """Item-to-item HR@``k`` per source: the share of ``pairs`` whose next item is among the ``k``
    most similar items of their last item, overall and for pairs whose next item is a tail item.

    Args:
        lists: ``source``, ``item_id``, ``rank``, ``similar_item_id`` rows (``similar_items``).
        pairs: one row per user: ``last_item_id``, ``next_item_id``, ``tail_item`` (bool).
        k: the cut-off (ranks ``<= k``). A last item without a list in a source is a miss there.

    Returns:
        ``{source: {"overall": {"hr@k": x}, "tail_item": {"hr@k": y}}}``.
    """
    from pyspark.sql import functions as F  # noqa: PLC0415

    totals = {bool(r["tail_item"]): int(r["count"]) for r in pairs.groupBy("tail_item").count().collect()}
    top = lists.where(F.col("rank") <= k).select("source", "item_id", "similar_item_id")
    joined = pairs.join(
        top, (pairs["last_item_id"] == top["item_id"]) & (pairs["next_item_id"] == top["similar_item_id"])
    )
    hits: dict[str, dict[bool, int]] = {}
    for r in joined.groupBy("source", "tail_item").count().collect():
        hits.setdefault(r["source"], {})[bool(r["tail_item"])] = int(r["count"])
    sources = sorted({r["source"] for r in lists.select("source").distinct().collect()})
    everyone = sum(totals.values())
    return {
        s: {
            "overall": {f"hr@{k}": sum(hits.get(s, {}).values()) / everyone if everyone else 0.0},
            "tail_item": {f"hr@{k}": hits.get(s, {}).get(True, 0) / totals[True] if totals.get(True) else 0.0},
        }
        for s in sources
    }
