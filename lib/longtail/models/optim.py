"""The training optimiser: Adam, with lazy (row-wise) updates of the item tables on large catalogues.

A training step touches a few thousand item rows (its histories, targets and negatives), yet dense
Adam reads and writes every row of every item table each step: the gradient buffer, the norm clip,
both moments and the weights, a pass that grows with the catalogue (at 1M items it is most of a CPU
step, ``benchmarks/catalogue_costs.py``). With sparse item updates the item tables emit sparse
gradients (the rows the step touched) and :class:`torch.optim.SparseAdam` updates only those rows'
moments and weights (a lazy Adam, as TensorFlow's ``LazyAdam``): the step's cost no longer grows
with the items. Rows a step did not touch do not move, where dense Adam would still move them by
their decaying first moment; the other parameters keep dense (fused) Adam.

Used by the training loop (:mod:`longtail.stages.train.worker`); pure torch.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

#: ``train.item_updates: auto`` chooses sparse updates on CPU from this many item rows up. Below it
#: a pass over the table costs little (Beauty's 12,101 x 128 rows: about 1 ms of a 70 ms step) and
#: dense Adam keeps the results every earlier run produced; at 200,000 items the pass is most of the
#: step (benchmarks/catalogue_costs.py: docs/scaling.md).
SPARSE_ITEMS_FROM = 100_000

ITEM_UPDATES = ("auto", "dense", "sparse")


def sparse_item_updates(setting: str, n_items: int, device_type: str, distributed: bool) -> bool:
    """Whether a run updates its item tables sparsely (``train.item_updates``).

    Args:
        setting: ``auto``, ``dense`` or ``sparse``.
        n_items: catalogue size.
        device_type: ``cpu`` or ``cuda``.
        distributed: several DDP ranks.

    ``auto`` is sparse on CPU from :data:`SPARSE_ITEMS_FROM` items. GPUs stay dense: a GPU sweeps a
    table at its memory bandwidth, and NCCL (DDP across GPUs) cannot all-reduce sparse gradients;
    ``sparse`` on several GPUs falls back to dense for that reason.

    Raises:
        ValueError: ``setting`` is none of :data:`ITEM_UPDATES`.
    """
    if setting not in ITEM_UPDATES:
        raise ValueError(f"train.item_updates {setting!r}: not one of {', '.join(ITEM_UPDATES)}")
    if setting == "dense" or (device_type == "cuda" and distributed):
        return False
    if setting == "sparse":
        return True
    return device_type == "cpu" and n_items >= SPARSE_ITEMS_FROM


class _States:
    """``optimizer.state`` across both optimisers: read as one mapping, written to the owner."""

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.Optimizer | None) -> None:
        self._parts = [p for p in (dense, sparse) if p is not None]

    def _owner(self, param: Tensor) -> torch.optim.Optimizer:
        for part in self._parts:
            if any(param is p for group in part.param_groups for p in group["params"]):
                return part
        raise KeyError("parameter is not optimised here")

    def __getitem__(self, param: Tensor) -> dict:
        return self._owner(param).state[param]

    def __setitem__(self, param: Tensor, state: dict) -> None:
        owner = self._owner(param)
        if isinstance(owner, torch.optim.SparseAdam) and "step" in state:
            # SparseAdam counts its steps in a Python int; a saved state holds a tensor.
            state = {**state, "step": int(state["step"])}
        owner.state[param] = state

    def items(self) -> Iterator[tuple[Tensor, dict]]:
        for part in self._parts:
            yield from part.state.items()


class ItemRowsAdam:
    """Adam over a model's parameters, the item tables among them updated row-wise when sparse.

    Args:
        params: the model's parameters (those without ``requires_grad`` are left out).
        item_tables: those of them whose gradients are sparse (rows touched by the step:
            :meth:`~longtail.models.layers.SequentialRecommender.sparse_item_tables`); empty: plain Adam.
        lr, betas, weight_decay, eps: as :class:`torch.optim.Adam` (``weight_decay`` applies to the dense
            ones; SparseAdam adds ``eps`` before the bias correction, Adam after, so a row's first
            steps differ slightly unless ``eps`` is negligible against its gradients).
        fused: fused dense Adam (one pass per tensor).

    Exposes what the loop uses of an optimiser: ``param_groups`` (the schedule sets ``lr`` on each),
    ``state`` (by parameter: saved and carried by :mod:`.warm_start`), ``zero_grad``, ``step``.
    """

    def __init__(self, params: Iterable[nn.Parameter], item_tables: Iterable[nn.Parameter] = (), *, lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0, eps: float = 1e-8,
                 fused: bool = True) -> None:
        sparse = list(item_tables)
        rowwise = {id(p) for p in sparse}
        dense = [p for p in params if p.requires_grad and id(p) not in rowwise]
        self.dense = torch.optim.Adam(dense, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps, fused=fused)
        self.sparse = torch.optim.SparseAdam(sparse, lr=lr, betas=betas, eps=eps) if sparse else None
        self.state = _States(self.dense, self.sparse)

    @property
    def param_groups(self) -> list[dict]:
        return self.dense.param_groups + (self.sparse.param_groups if self.sparse is not None else [])

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        if self.sparse is not None:
            self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()
        if self.sparse is not None:
            self.sparse.step()


class WeightAverage:
    """An exponential moving average of a module's trainable weights (Polyak-Ruppert averaging).

    After every optimiser step :meth:`update` moves each average towards the trained weight by
    ``1 - decay``; :meth:`applied` puts the averages into the module for a block (validation, keeping
    the best weights) and the trained weights back after it. The average of the last
    ``1 / (1 - decay)`` steps sits nearer the optimum than the last iterate, which a constant rate
    keeps jittering around it: what a rate decay does, without the extra epochs.

    Args:
        module: the model; its parameters with ``requires_grad`` are averaged (the frozen LLM table
            is left out, so the copy is the trainable weights' size, not the module's as with
            :class:`torch.optim.swa_utils.AveragedModel`, which deep-copies everything).
        decay: in (0, 1): the share of the average kept at each step.

    Costs one copy of the trainable weights and a pass over them per step (with row-wise item
    updates that pass is what the sparse step avoids: docs/scaling.md).
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"weight average decay {decay}: must be in (0, 1)")
        self.decay = float(decay)
        self._params = [p for p in module.parameters() if p.requires_grad]
        self._average = [p.detach().clone() for p in self._params]

    @torch.no_grad()
    def update(self) -> None:
        """Move every average ``1 - decay`` of the way to its trained weight."""
        torch._foreach_lerp_(self._average, [p.detach() for p in self._params], 1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the module inside the block, the trained ones again after it."""
        with torch.no_grad():
            trained = [p.detach().clone() for p in self._params]
            torch._foreach_copy_([p.data for p in self._params], self._average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in self._params], trained)


def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> Tensor:
    """:func:`torch.nn.utils.clip_grad_norm_` for dense and sparse gradients alike.

    A sparse gradient is coalesced (each touched row once) and its values count towards the global
    L2 norm and are scaled with the others. ``max_norm`` inf only measures. Returns the norm before
    clipping (non-finite when a gradient is).
    """
    params = [p for p in params if p.grad is not None]
    sparse = [p for p in params if p.grad.is_sparse]
    if not sparse:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    for p in sparse:
        p.grad = p.grad.coalesce()
    dense = [p.grad for p in params if not p.grad.is_sparse]
    values = [p.grad._values() for p in sparse]
    squares = [torch.linalg.vector_norm(g).square() for g in dense + values]
    norm = torch.stack(squares).sum().sqrt()
    if max_norm != float("inf"):
        scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for g in dense + values:
            g.mul_(scale.to(g.dtype))
    return norm


__all__ = ["ITEM_UPDATES", "SPARSE_ITEMS_FROM", "ItemRowsAdam", "clip_grad_norm", "sparse_item_updates"]
