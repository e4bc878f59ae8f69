"""Similar items: the item -> items lists of ``longtail similar-items`` (table ``similar_items``).

Three sources, each a dot product of a *query* vector (the item whose list it is) and an *item*
vector (a candidate), row = catalogue idx (:class:`SimilarityView`):

- ``collaborative``: the cosine of the trained model's item vectors (items the model has a row for);
- ``semantic``: the cosine of the LLM item embeddings (``item_embeddings``): items known only from
  their text get neighbours and are neighbours;
- ``blend``: ``w_c z_c + w_s z_s``, each source's similarity z-scored per query item over the
  catalogue (:func:`~longtail.ranking.topk.zscore_blend_users`, the blend ``score.hybrid`` uses), so
  neither scale dominates; an item missing from one source is ranked by the other alone.

The exposure adjustment of the served models, for items (CSLS, Conneau et al., ICLR 2018): each
candidate's similarity is lowered by ``penalty x hubness``, its hubness being the mean of its 10
highest similarities to a seeded sample of query items (itself left out). An item close to very
many items (a hub: typically a bestseller) moves down every list, so the head does not fill them.
Still one dot product: items ``[v, -hubness]``, queries ``[q, penalty]``, as
:class:`~longtail.inference.scorers.ExposureAdjusted`.

A list never holds the item itself, nor an item the availability rules exclude (``blocked``).
The tasks of the stage rank query items in batches (:meth:`SimilarityView.top_k`): the exact top K
over the catalogue in item chunks, or with a candidate index (``similar_items.retrieval``, the
choice of ``score.retrieval``) the exact top K among its candidates.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from longtail.core.errors import InputError
from longtail.ranking.retrieval import CandidateIndex, build_index, candidate_count
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
        parts: the blend's parts ``(weight, unit vectors [N, D_m], mean, cov)``; None for one source.
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
        else:  # [w_m q_m / std_m ..., offset]: meets the items' [v_m ..., 1]
            base = zscore_blend_users([(w, torch.from_numpy(v[idxs]), m, c) for w, v, m, c in self.parts])
        column = torch.full((len(idxs), 1), self.penalty, dtype=torch.float32)
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


def make_index(view: SimilarityView, nlist: int = 0, nprobe: int = 64) -> CandidateIndex:
    """The candidate index of a view: its allowed items, the hubness column as the per-item bias.

    Raises:
        EnvironmentProblem: faiss is not installed.
    """
    bias = view.penalty * view.items[:, -1]  # the index's queries get a 1 there, ours the penalty
    return build_index(view.items[:, :-1], allowed=view.allowed, bias=bias, nlist=nlist, nprobe=nprobe)


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
    units = {"collaborative": _unit(collaborative), "semantic": _unit(semantic)}
    views = []
    for source in sources:
        if source == "blend":
            views.append(_blend_view(units, weights, blocked, penalty))
        else:
            if units[source] is None:
                raise InputError(f"config key similar_items.sources: {source} has no item vectors ({_WHY[source]})")
            vectors, rows = units[source]
            views.append(_view(source, vectors, rows, blocked, penalty))
    for view in views:
        if penalty:  # a sample per source, whichever other sources are asked for
            rng = np.random.default_rng([seed, SOURCES.index(view.source)])
            view.items[:, -1] = -hubness(view, hubness_queries, rng)
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


def _blend_view(units: dict, weights: tuple[float, float], blocked: np.ndarray, penalty: float) -> SimilarityView:
    """The z-score blend of the sources that have vectors (one alone when the other has none)."""
    parts, matrices, rows = [], [], None
    for (source, pair), weight in zip(units.items(), weights):
        if pair is None or not weight:
            continue
        vectors, has = pair
        mean, cov = catalogue_moments(torch.from_numpy(vectors), torch.from_numpy(has))
        parts.append((float(weight), vectors, mean, cov))
        matrices.append(torch.from_numpy(vectors))
        rows = has.copy() if rows is None else rows | has
    if not parts:
        raise InputError("config key similar_items.sources: blend has no source with item vectors and a weight above 0")
    items = zscore_blend_items(matrices).numpy()  # [v_c, v_s, 1]: the 1 meets the queries' offset
    items = np.concatenate([items, np.zeros((len(items), 1), dtype=np.float32)], axis=1)
    return SimilarityView("blend", items, rows, rows & ~blocked, float(penalty), parts=parts)


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


#: The semantic weights (times the collaborative weight) ``semantic_weight: auto`` chooses from.
WEIGHT_GRID = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)


def choose_semantic_weight(
    collaborative: tuple[np.ndarray, np.ndarray] | None,
    semantic: tuple[np.ndarray, np.ndarray] | None,
    pairs: np.ndarray,
    k: int = 10,
    grid: tuple[float, ...] = WEIGHT_GRID,
    item_chunk: int = 4096,
) -> tuple[float, dict[float, float]]:
    """The blend's semantic weight (the collaborative one 1) of ``grid`` whose top-``k`` lists hold
    the next item of the most validation ``pairs``; ties go to the larger weight (more of the text).

    One pass over the catalogue: each source's per-query z-scores once per item chunk, every weight's
    running top ``k`` from their weighted sums (no hubness adjustment: it is chosen after).

    Args:
        collaborative, semantic: as :func:`build_views`. pairs: ``[P, 2]`` item idxs (query, next item).

    Returns:
        ``(weight, {weight: HR@k})``; ``(1.0, {})`` when a source has no vectors or there are no pairs.
    """
    units = [_unit(collaborative), _unit(semantic)]
    if any(u is None for u in units) or not len(pairs):
        return 1.0, {}
    queries = np.asarray(pairs[:, 0], dtype=np.int64)
    sides = []
    for vectors, has in units:  # [q / std, offset] and [v, 1]: one source's z-scores as one product
        mean, cov = catalogue_moments(torch.from_numpy(vectors), torch.from_numpy(has))
        user = zscore_blend_users([(1.0, torch.from_numpy(vectors[queries]), mean, cov)])
        sides.append((user, zscore_blend_items([torch.from_numpy(vectors)])))
    rows = torch.from_numpy(units[0][1] | units[1][1])
    best = {w: (torch.full((len(queries), k), NEG_INF), torch.zeros((len(queries), k), dtype=torch.long)) for w in grid}
    itself = torch.from_numpy(queries)
    for start in range(0, len(rows), item_chunk):
        end = min(start + item_chunk, len(rows))
        z = [u @ items[start:end].T for u, items in sides]
        invalid = ~rows[start:end][None, :] | (itself[:, None] == torch.arange(start, end)[None, :])
        for w in grid:
            scores = (z[0] + w * z[1]).masked_fill(invalid, NEG_INF)
            merged_scores = torch.cat([best[w][0], scores], dim=1)
            merged_items = torch.cat([best[w][1], torch.arange(start, end).expand(len(queries), -1)], dim=1)
            top, pos = torch.topk(merged_scores, k, dim=1)
            best[w] = (top, torch.gather(merged_items, 1, pos))
    nxt = torch.from_numpy(np.asarray(pairs[:, 1], dtype=np.int64))[:, None]
    hr = {w: float((best[w][1] == nxt).any(dim=1).float().mean()) for w in grid}
    return max(grid, key=lambda w: (round(hr[w], 12), w)), hr


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
