"""Training objectives of the sequential models, as pure torch functions.

Every function takes the encoder outputs ``h`` ``[N, D]`` at the N positions that have a
target, the item table ``items`` ``[R, D]`` (row = item idx, row 0 padding) and the target
idxs ``[N]``, and returns the mean loss over the N positions.

- :func:`bce`: the reference's binary cross-entropy of the target against ONE sampled
  negative per position (LLM-ESR, SASRec papers). Cheap, but it only learns to rank the
  target above a random item, which under a uniform draw is nearly always a tail item.
- :func:`full_softmax_ce`: softmax cross-entropy over the WHOLE catalogue (items ``1..n``),
  the objective whose optimum is the full-ranking one. The log-partition is computed in
  item chunks by :class:`ChunkedLogSumExp`, which keeps only ``[N]`` numbers between forward
  and backward and recomputes each chunk's logits in backward: memory ``N * chunk``.
- :func:`sampled_softmax`: softmax over the target and ``M`` negatives shared by the batch,
  with the optional logQ correction (Bengio & Senecal 2008; Yi et al. 2019): every
  candidate's logit ``s`` becomes ``s - log Q(item)``, ``Q`` the probability that the
  sampler draws the item. Under a uniform draw ``log Q`` is a constant and changes nothing;
  under a popularity draw it removes the sampler's bias, so the sampled loss estimates the
  full softmax. A negative equal to the row's target is masked (the positive never counts
  as its own negative).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = ("bce", "ce", "sampled_softmax")


def bce(h: Tensor, items: Tensor, targets: Tensor, negatives: Tensor) -> Tensor:
    """``BCE(s_target, 1) + BCE(s_negative, 0)``, each averaged over positions.

    Args:
        negatives: ``[N]`` one negative item idx per position.
    """
    pos_logits = (h * items[targets]).sum(-1)
    neg_logits = (h * items[negatives]).sum(-1)
    return F.binary_cross_entropy_with_logits(
        pos_logits, torch.ones_like(pos_logits)
    ) + F.binary_cross_entropy_with_logits(neg_logits, torch.zeros_like(neg_logits))


class ChunkedLogSumExp(torch.autograd.Function):
    """``logsumexp(h @ items.T + bias, dim=1)`` computed over item chunks.

    Forward keeps a running maximum and sum per row; backward recomputes each chunk's
    logits and adds ``softmax @ items`` to the gradient of ``h`` and ``softmax.T @ h`` to the
    gradient of the chunk's items (and ``softmax.sum(0)`` to the bias). Peak memory is one
    ``[N, chunk]`` block, at the price of one extra matrix product per chunk.
    """

    @staticmethod
    def forward(ctx, h: Tensor, items: Tensor, bias: Tensor | None, chunk: int) -> Tensor:  # type: ignore[override]
        n = h.shape[0]
        running_max = torch.full((n,), float("-inf"), dtype=h.dtype, device=h.device)
        running_sum = torch.zeros((n,), dtype=h.dtype, device=h.device)
        for start in range(0, items.shape[0], chunk):
            z = h @ items[start : start + chunk].T
            if bias is not None:
                z = z + bias[start : start + chunk]
            new_max = torch.maximum(running_max, z.max(dim=1).values)
            running_sum = running_sum * torch.exp(running_max - new_max) + torch.exp(
                z - new_max[:, None]
            ).sum(dim=1)
            running_max = new_max
        lse = running_max + torch.log(running_sum)
        ctx.save_for_backward(h, items, bias, lse)
        ctx.chunk = chunk
        return lse

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        h, items, bias, lse = ctx.saved_tensors
        chunk = ctx.chunk
        grad_h = torch.zeros_like(h) if ctx.needs_input_grad[0] else None
        grad_items = torch.zeros_like(items) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros_like(bias) if bias is not None and ctx.needs_input_grad[2] else None
        for start in range(0, items.shape[0], chunk):
            block = items[start : start + chunk]
            z = h @ block.T
            if bias is not None:
                z = z + bias[start : start + chunk]
            p = torch.exp(z - lse[:, None]) * grad[:, None]
            if grad_h is not None:
                grad_h += p @ block
            if grad_items is not None:
                grad_items[start : start + chunk] = p.T @ h
            if grad_bias is not None:
                grad_bias[start : start + chunk] = p.sum(dim=0)
        return grad_h, grad_items, grad_bias, None


def logsumexp_items(h: Tensor, items: Tensor, bias: Tensor | None = None, chunk: int = 0) -> Tensor:
    """``[N]`` log-partition over the rows of ``items``; ``chunk`` < 1 or >= rows: one plain pass."""
    if chunk < 1 or chunk >= items.shape[0]:
        z = h @ items.T
        if bias is not None:
            z = z + bias
        return torch.logsumexp(z, dim=1)
    return ChunkedLogSumExp.apply(h, items, bias, int(chunk))


def full_softmax_ce(
    h: Tensor, items: Tensor, targets: Tensor, chunk: int = 0, bias: Tensor | None = None
) -> Tensor:
    """Cross-entropy of each target against every item ``1..R-1`` (row 0, padding, excluded).

    Args:
        h: ``[N, D]``; items: ``[R, D]`` with row 0 padding; targets: ``[N]`` in ``1..R-1``.
        chunk: items per block of the log-partition (``0``: one unchunked pass).
        bias: optional ``[R]`` additive per-item logit term.

    Returns:
        ``mean(logsumexp_j s_j - s_target)``.
    """
    catalogue = items[1:]
    b = bias[1:] if bias is not None else None
    lse = logsumexp_items(h, catalogue, b, chunk)
    pos = (h * items[targets]).sum(-1)
    if bias is not None:
        pos = pos + bias[targets]
    return (lse - pos).mean()


def sampled_softmax(
    h: Tensor, items: Tensor, targets: Tensor, negatives: Tensor, logq: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """Cross-entropy of each target against itself and ``M`` shared negatives.

    Args:
        h: ``[N, D]``; items: ``[R, D]``; targets: ``[N]``.
        negatives: ``[M]`` item idxs shared by all positions (drawn with replacement).
        logq: optional ``[R]`` log sampling probability of each item; subtracted from every
            candidate's logit (target and negatives alike).
        bias: optional ``[R]`` additive per-item logit term (before the correction).

    Returns:
        ``mean(-log softmax([s_t, s_n1, ..., s_nM])[0])`` with negatives equal to the target masked.

    A negative drawn ``c`` times is scored once with ``log c`` added (``c e^s = e^(s + log c)``):
    the same loss and gradients, and popularity draws repeat the head often (4,096 draws on
    Beauty are about 2,900 distinct items), so fewer columns to score.
    """
    negatives, counts = torch.unique(negatives, return_counts=True)  # sorted
    pos = (h * items[targets]).sum(-1)
    # Every per-column term is added to an [M] vector and enters the product once (addmm):
    # elementwise passes over the [N, M] logits cost as much as the product on a CPU.
    column = torch.log(counts.to(h.dtype))
    if bias is not None:
        pos = pos + bias[targets]
        column = column + bias[negatives]
    if logq is not None:
        pos = pos - logq[targets]
        column = column - logq[negatives]
    neg = torch.addmm(column[None, :], h, items[negatives].T)
    # A row's target among the (sorted) negatives is found by bisection, not by an [N, M] compare.
    at = torch.searchsorted(negatives, targets).clamp_(max=negatives.numel() - 1)
    rows = torch.nonzero(negatives[at] == targets).squeeze(1)
    neg[rows, at[rows]] = float("-inf")
    logits = torch.cat([pos[:, None], neg], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(targets))
