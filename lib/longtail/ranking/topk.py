"""Pure tensor maths of scoring: chunked exact top-K, exact top-K among an index's candidates,
target ranks over the catalogue, MMR re-ranking and the z-score blend of several dot-product
scorers. No Spark here.

Conventions: the catalogue is indexed ``0..N-1`` by item idx and row 0 is padding, never
returned; histories are ``LongTensor[B, L]`` of item idxs, left-padded with 0. Every scorer
is a dot product ``user_vector @ item_vector``, so a whole catalogue is scored by one matrix
product per item chunk; memory per call is ``B * item_chunk`` scores plus the running top-K.

Devices: :func:`chunked_topk`, :func:`candidate_topk` and :func:`full_ranks` compute where
``user_vectors`` and ``item_vectors`` live (both on one device: a GPU when the scoring task has
one, ``longtail.inference.bundle.task_device``) and return tensors there; ``seen``,
``excluded``, ``targets`` and ``candidates`` may stay on the CPU. On the CPU the masks are
written through numpy (:func:`_mask_chunk`); elsewhere the same positions are found on the CPU
and written with one indexed assignment on the device (:func:`_mask_chunk_on_device`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


def _seen_coordinates(seen: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    """``(items, rows)`` of the non-padding entries of ``seen``, sorted by item.

    Sorted so each item chunk's entries are one contiguous slice (found by binary search):
    no per-chunk boolean masks, whose multi-threaded torch kernels cost milliseconds each on
    a busy CPU (measured 8 ms vs 0.09 ms single-threaded for a 1024-user batch).
    """
    if seen is None or seen.numel() == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    h = seen.numpy() if seen.device.type == "cpu" else seen.cpu().numpy()
    rows, cols = np.nonzero(h > 0)
    items = h[rows, cols].astype(np.int64)
    order = np.argsort(items, kind="stable")
    return items[order], rows[order].astype(np.int64)


def _host(t: torch.Tensor) -> bool:
    """Whether ``t`` is in host memory (numpy can write it); the accelerator paths otherwise."""
    return t.device.type == "cpu"


def _mask_chunk(
    scores: torch.Tensor,
    start: int,
    seen: tuple[np.ndarray, np.ndarray],
    excluded: torch.Tensor | None,
) -> None:
    """Set the scores of padding, seen and excluded items in one item chunk to ``-inf`` (in place)."""
    if not _host(scores):
        _mask_chunk_on_device(scores, start, seen, excluded)
        return
    width = scores.shape[1]
    end = start + width
    # numpy on the same memory: single-threaded scatter, no torch parallel-region overhead.
    flat_scores = scores.numpy().reshape(-1)
    if start == 0:
        flat_scores[0::width] = NEG_INF  # padding row
    items, rows = seen
    if items.size:
        lo, hi = np.searchsorted(items, [start, end])
        if hi > lo:
            flat_scores[rows[lo:hi] * width + (items[lo:hi] - start)] = NEG_INF
    if excluded is not None and excluded.numel():
        ex = excluded.numpy()
        inside = ex[(ex >= start) & (ex < end)]
        if inside.size:
            scores[:, torch.from_numpy(inside - start)] = NEG_INF


def _mask_chunk_on_device(
    scores: torch.Tensor,
    start: int,
    seen: tuple[np.ndarray, np.ndarray],
    excluded: torch.Tensor | None,
) -> None:
    """:func:`_mask_chunk` for scores on an accelerator: the positions are found on the CPU
    (binary search over the sorted seen items) and written in one indexed assignment each."""
    width = scores.shape[1]
    items, rows = seen
    flat = [np.arange(scores.shape[0], dtype=np.int64) * width] if start == 0 else []  # padding row
    if items.size:
        lo, hi = np.searchsorted(items, [start, start + width])
        if hi > lo:
            flat.append(rows[lo:hi] * width + (items[lo:hi] - start))
    if flat:
        positions = torch.from_numpy(np.concatenate(flat)).to(scores.device)
        scores.view(-1)[positions] = NEG_INF
    if excluded is not None and excluded.numel():
        ex = excluded.cpu().numpy()
        inside = ex[(ex >= start) & (ex < start + width)]
        if inside.size:
            scores[:, torch.from_numpy(inside - start).to(scores.device)] = NEG_INF


# --------------------------------------------------------------------------- top-K


def chunked_topk(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    k: int,
    seen: torch.Tensor | None = None,
    excluded: torch.Tensor | None = None,
    item_chunk: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` items per user by dot product, scoring the catalogue in chunks.

    Args:
        user_vectors: ``[B, D]`` float.
        item_vectors: ``[N, D]`` float, row = item idx (row 0 is padding, never returned).
        k: list length.
        seen: ``[B, L]`` item idxs to exclude per user (0 entries are ignored padding).
        excluded: ``[M]`` item idxs excluded for every user (items that cannot be scored).
        item_chunk: items per matrix product (bounds memory to ``B * item_chunk`` scores).

    Returns:
        ``(scores [B, k], items [B, k])`` best first, on the vectors' device. Where a user has
        fewer than ``k`` candidates the tail of the row holds score ``-inf`` and item 0.
    """
    b, n = user_vectors.shape[0], item_vectors.shape[0]
    best_scores = torch.full((b, k), NEG_INF, dtype=user_vectors.dtype, device=user_vectors.device)
    best_items = torch.zeros((b, k), dtype=torch.long, device=user_vectors.device)
    seen_at = _seen_coordinates(seen)
    for start in range(0, n, item_chunk):
        block = item_vectors[start : start + item_chunk]
        scores = user_vectors @ block.T
        _mask_chunk(scores, start, seen_at, excluded)
        best_scores, best_items = _merge_top(best_scores, best_items, scores, start, k)
    best_items = torch.where(torch.isneginf(best_scores), torch.zeros_like(best_items), best_items)
    return best_scores, best_items


#: Floats gathered per step of :func:`candidate_topk` (users x candidates x dimension): 64 MB.
CANDIDATE_FLOATS = 1 << 24


def candidate_topk(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    candidates: torch.Tensor,
    k: int,
    seen: torch.Tensor | None = None,
    excluded: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` per user among that user's ``candidates`` (from an index), by dot product.

    The same contract as :func:`chunked_topk` over a per-user subset of the catalogue: item 0
    (padding, or "no candidate"), ``seen`` and ``excluded`` items never come back.

    Args:
        user_vectors: ``[B, D]``; item_vectors: ``[N, D]`` (row = item idx).
        candidates: ``[B, C]`` item idxs per user, no repeats within a row (0: none).
        k: list length. seen, excluded: as :func:`chunked_topk`.

    Returns:
        ``(scores [B, k], items [B, k])`` best first, on the vectors' device; ``-inf`` and item 0
        where fewer than ``k`` candidates remain.
    """
    b, c = candidates.shape
    device = user_vectors.device
    host = candidates.cpu()  # the masks are built with numpy
    candidates = candidates.to(device)  # no copy where it already is
    rows = max(1, CANDIDATE_FLOATS // max(c * item_vectors.shape[1], 1))  # bounds the gathered block
    scores = torch.cat([
        candidate_scores(user_vectors[s : s + rows], item_vectors, candidates[s : s + rows])
        for s in range(0, b, rows)
    ]) if b else torch.zeros((0, c), dtype=user_vectors.dtype, device=device)
    drop = (host == 0).numpy() | _in_rows(host.numpy(), seen)
    if excluded is not None and excluded.numel():
        drop |= np.isin(host.numpy(), excluded.cpu().numpy())
    scores = scores.masked_fill(torch.from_numpy(drop).to(device), NEG_INF)
    best_scores = torch.full((b, k), NEG_INF, dtype=scores.dtype, device=device)
    best_items = torch.zeros((b, k), dtype=torch.long, device=device)
    top_scores, pos = torch.topk(scores, min(k, c), dim=1)
    best_scores[:, : pos.shape[1]] = top_scores
    best_items[:, : pos.shape[1]] = torch.gather(candidates, 1, pos)
    best_items = torch.where(torch.isneginf(best_scores), torch.zeros_like(best_items), best_items)
    return best_scores, best_items


def _in_rows(items: np.ndarray, seen: torch.Tensor | None) -> np.ndarray:
    """``[B, C]`` bool: whether ``items[b, c]`` is among the (non-zero) ``seen[b]``; one ``isin``
    over ``row * N + item`` keys instead of a loop over rows."""
    if seen is None or seen.numel() == 0 or items.size == 0:
        return np.zeros(items.shape, dtype=bool)
    s = seen.numpy()
    n = int(max(items.max(), s.max())) + 1
    rows = np.arange(items.shape[0], dtype=np.int64)[:, None]
    seen_keys = (rows * n + s)[s > 0]
    return np.isin(rows * n + items, seen_keys)


def _merge_top(
    best_scores: torch.Tensor, best_items: torch.Tensor, scores: torch.Tensor, start: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge one chunk's scores (columns = items ``start..``) into the running top-``k``."""
    top_scores, top_cols = torch.topk(scores, min(k, scores.shape[1]), dim=1)
    merged_scores = torch.cat([best_scores, top_scores], dim=1)
    merged_items = torch.cat([best_items, top_cols + start], dim=1)
    best_scores, pos = torch.topk(merged_scores, k, dim=1)
    return best_scores, torch.gather(merged_items, 1, pos)


def _count_against(scores: torch.Tensor, target_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, how many scores are above and equal to the row's target score (float64).

    On the CPU the comparisons run in numpy and are summed as bytes: torch sums a boolean
    matrix at about 5.5 ns per element on one core, numpy compares and sums at about 0.5
    (benchmarks/catalogue_costs.py), which made the count, not the product, most of a full ranking.
    """
    if not _host(scores):
        t = target_scores[:, None]
        return (scores > t).sum(dim=1).to(torch.float64), (scores == t).sum(dim=1).to(torch.float64)
    s, t = scores.numpy(), target_scores.detach().numpy()[:, None]
    above = (s > t).view(np.uint8).sum(axis=1, dtype=np.int64)
    tied = (s == t).view(np.uint8).sum(axis=1, dtype=np.int64)
    return torch.from_numpy(above.astype(np.float64)), torch.from_numpy(tied.astype(np.float64))


def full_ranks(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    targets: torch.Tensor,
    seen: torch.Tensor | None = None,
    excluded: torch.Tensor | None = None,
    k: int = 10,
    item_chunk: int = 8192,
    with_top: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based rank of each user's target among the whole catalogue minus ``seen``, and the top-``k``.

    Ties with the target count half (as :func:`longtail.ranking.metrics.target_ranks`). The target is
    never excluded, even when it also appears in ``seen``.

    Args:
        user_vectors: ``[B, D]``; item_vectors: ``[N, D]``; targets: ``[B]`` item idxs.
        seen, excluded, item_chunk: as :func:`chunked_topk`.
        k: length of the returned top lists.
        with_top: False skips the top-``k`` merge (training validation needs the ranks only:
            the merge is about a tenth of the pass) and returns ``[B, 0]`` top lists.

    Returns:
        ``(ranks [B] float64, top_items [B, k])`` on the vectors' device; a NaN target score
        ranks ``N`` (a miss).
    """
    b, device = user_vectors.shape[0], user_vectors.device
    target_np = targets.cpu().numpy()
    targets = targets.to(device)
    target_scores = (user_vectors * item_vectors[targets]).sum(dim=1)
    greater = torch.zeros(b, dtype=torch.float64, device=device)
    equal = torch.zeros(b, dtype=torch.float64, device=device)
    best_scores = torch.full((b, k), NEG_INF, dtype=user_vectors.dtype, device=device)
    best_items = torch.zeros((b, k), dtype=torch.long, device=device)
    seen_at = _seen_coordinates(seen)
    n = item_vectors.shape[0]
    for start in range(0, n, item_chunk):
        block = item_vectors[start : start + item_chunk]
        scores = user_vectors @ block.T
        _mask_chunk(scores, start, seen_at, excluded)
        # The target competes through its separately computed score (one rounding path for
        # all comparisons); its own column is removed here and merged back into the top-k below.
        width = scores.shape[1]
        inside = np.nonzero((target_np >= start) & (target_np < start + width))[0]
        own = inside * width + (target_np[inside] - start)
        if _host(scores):
            scores.numpy().reshape(-1)[own] = NEG_INF
        else:
            scores.view(-1)[torch.from_numpy(own).to(device)] = NEG_INF
        above, tied = _count_against(scores, target_scores)
        greater += above
        equal += tied
        if with_top:
            best_scores, best_items = _merge_top(best_scores, best_items, scores, start, k)
    if not with_top:
        ranks = torch.where(torch.isnan(target_scores), torch.full_like(greater, float(n)), greater + equal / 2.0)
        return ranks, best_items[:, :0]
    merged_scores = torch.cat([best_scores, target_scores[:, None]], dim=1)
    merged_items = torch.cat([best_items, targets[:, None]], dim=1)
    best_scores, pos = torch.topk(merged_scores, k, dim=1)
    best_items = torch.gather(merged_items, 1, pos)
    best_items = torch.where(torch.isneginf(best_scores), torch.zeros_like(best_items), best_items)
    # A NaN target score (a diverged model) compares false with everything: a miss, not rank 0.
    ranks = torch.where(torch.isnan(target_scores), torch.full_like(greater, float(n)), greater + equal / 2.0)
    return ranks, best_items


def log_popularity(counts: np.ndarray) -> np.ndarray:
    """``ln(1 + count)`` per item, float32: what the serving popularity penalty multiplies.

    One definition for the penalty's choice at training and its use at serving, which must agree.
    """
    return np.log1p(np.asarray(counts, dtype=np.float64)).astype(np.float32)


def item_hubness(user_vectors: torch.Tensor, item_vectors: torch.Tensor, m: int = 10, item_chunk: int = 4096) -> np.ndarray:
    """How strongly each item pulls towards the top of every list: the mean of its ``m`` highest
    scores over ``user_vectors`` (CSLS's neighbourhood term, Conneau et al., ICLR 2018), float32.

    Subtracting a multiple of it from the scores (the ``hubness`` exposure adjustment) lowers
    items that score high for very many users (hubs) against items that are no user's best
    match: it spreads the lists over more distinct items without a popularity count.

    Args:
        user_vectors: ``[U, D]``; item_vectors: ``[N, D]`` (row 0 is padding; its value is 0).
        m: top scores averaged per item (fewer when there are fewer users).
        item_chunk: items per matrix product (memory ``U * item_chunk`` scores).

    Returns:
        ``[N]`` float32; zeros when there are no users.
    """
    n = item_vectors.shape[0]
    out = np.zeros(n, dtype=np.float32)
    take = min(int(m), user_vectors.shape[0])
    if take < 1:
        return out
    with torch.no_grad():
        for start in range(0, n, item_chunk):
            scores = user_vectors @ item_vectors[start : start + item_chunk].T
            out[start : start + scores.shape[1]] = torch.topk(scores, take, dim=0).values.mean(0).float().numpy()
    out[0] = 0.0
    return out


def candidate_scores(user_vectors: torch.Tensor, item_vectors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Scores of given candidates per user: ``[B, D] x [N, D] x [B, C] idxs -> [B, C]``."""
    # F.embedding (index_select) gathers rows 2-6x faster than advanced indexing on CPUs
    # (docs/scaling.md, the 1.2M-item point): a third of an ann user's re-scoring.
    rows = F.embedding(candidates, item_vectors)  # [B, C, D]
    return torch.bmm(rows, user_vectors.unsqueeze(-1)).squeeze(-1)


# --------------------------------------------------------------------------- MMR


def minmax_rows(scores: torch.Tensor) -> torch.Tensor:
    """Per-row min-max scaling to ``[0, 1]`` over the finite entries (``-inf`` stays ``-inf``).

    A row whose finite entries are all equal maps them to 1.
    """
    finite = torch.isfinite(scores)
    lo = torch.where(finite, scores, torch.full_like(scores, float("inf"))).min(dim=1, keepdim=True).values
    hi = torch.where(finite, scores, torch.full_like(scores, NEG_INF)).max(dim=1, keepdim=True).values
    span = hi - lo
    scaled = torch.where(span > 0, (scores - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.ones_like(scores))
    return torch.where(finite, scaled, torch.full_like(scores, NEG_INF))


def mmr_rerank(
    candidates: torch.Tensor,
    scores: torch.Tensor,
    item_embeddings: torch.Tensor,
    k: int,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximal marginal relevance: greedily pick ``k`` of each row's candidates.

    Each step takes the candidate maximising ``lam * rel - (1 - lam) * max_sim``, where
    ``rel`` is the candidate's score min-max scaled to ``[0, 1]`` within the row (so it is on the
    scale of a cosine) and ``max_sim`` its largest cosine similarity to the items picked so far.
    ``lam = 1`` is the plain ranking (ties keep candidate order).

    Args:
        candidates: ``[B, C]`` item idxs; scores: ``[B, C]`` (``-inf`` marks an invalid candidate).
        item_embeddings: ``[N, E]`` L2-normalised rows (zero rows: similarity 0).
        k: how many to pick (``<= C``); lam: in ``[0, 1]``.

    Returns:
        ``(items [B, k], scores [B, k])`` in pick order; the scores are the original ones.
        Rows with fewer than ``k`` valid candidates end with item 0 and ``-inf``.
    """
    b, c = candidates.shape
    k = min(k, c)
    rel = minmax_rows(scores)
    valid = torch.isfinite(scores)
    emb = F.embedding(candidates, item_embeddings)  # [B, C, E]
    max_sim = torch.zeros((b, c), dtype=rel.dtype)
    taken = ~valid
    rows = torch.arange(b)
    picks, found = [], []
    for step in range(k):
        objective = lam * rel - (1.0 - lam) * max_sim if step else rel.clone()
        objective = objective.masked_fill(taken, NEG_INF)
        best, pick = torch.max(objective, dim=1)  # first maximum: ties keep candidate order
        picks.append(pick)
        found.append(~torch.isneginf(best))
        taken = taken.clone()
        taken[rows, pick] = True
        chosen = emb[rows, pick]  # [B, E]
        sim = torch.einsum("bce,be->bc", emb, chosen).to(rel.dtype)
        max_sim = torch.maximum(max_sim, sim)
    order = torch.stack(picks, dim=1)
    ok = torch.stack(found, dim=1)
    items = torch.where(ok, torch.gather(candidates, 1, order), torch.zeros_like(order))
    picked_scores = torch.where(ok, torch.gather(scores, 1, order), torch.full_like(rel, NEG_INF)[:, :k].to(scores.dtype))
    return items, picked_scores


# --------------------------------------------------------------------------- hybrid blend


def catalogue_moments(item_vectors: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[D]`` and covariance ``[D, D]`` (float64) of the allowed item rows.

    For a dot-product scorer the mean of a user's scores over those items is ``u @ mean`` and
    their variance ``u @ cov @ u``: the per-user z-score needs no pass over the catalogue.
    """
    v = item_vectors[allowed].to(torch.float64)
    mean = v.mean(dim=0)
    centred = v - mean
    cov = centred.T @ centred / max(v.shape[0], 1)
    return mean, cov


def zscore_blend_users(
    parts: Sequence[tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]],
    eps: float = 1e-12,
) -> torch.Tensor:
    """User side of a blend of per-user z-scored dot-product scores, as one vector.

    ``blend(u, j) = sum_m w_m * (u_m @ v_mj - u_m @ mean_m) / std_m(u_m)`` equals
    ``[w_m u_m / std_m ..., c] @ [v_mj ..., 1]`` with ``c = -sum_m w_m u_m @ mean_m / std_m``:
    the blend is again a dot product (item side: :func:`zscore_blend_items`). ``std_m`` is the
    spread of the user's scores over the catalogue; a part with zero spread contributes 0.

    Args:
        parts: per part ``(weight, user_vectors [B, D_m], mean [D_m], cov [D_m, D_m])``.

    Returns:
        ``[B, sum D_m + 1]`` float32.
    """
    columns = []
    offset = None
    for weight, users, mean, cov in parts:
        u = users.to(torch.float64)
        var = torch.einsum("bd,de,be->b", u, cov, u).clamp_min(0.0)
        std = var.sqrt()
        scale = torch.where(std > eps, weight / torch.where(std > eps, std, torch.ones_like(std)), torch.zeros_like(std))
        columns.append(u * scale[:, None])
        part_offset = -(u @ mean) * scale
        offset = part_offset if offset is None else offset + part_offset
    assert offset is not None, "a blend needs at least one part"
    columns.append(offset[:, None])
    return torch.cat(columns, dim=1).to(torch.float32)


def zscore_blend_items(item_parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Item side matching :func:`zscore_blend_users`: ``[v_m ..., 1]`` per item, float32."""
    n = item_parts[0].shape[0]
    return torch.cat([p.to(torch.float32) for p in item_parts] + [torch.ones((n, 1))], dim=1)
