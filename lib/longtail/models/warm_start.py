"""Carrying a trained model's weights (and Adam state) into a model of a grown catalogue.

A warm start (``train.warm_start``) builds the new model as a from-scratch run would (its
item tables sized for today's ``item_stats``), then takes from the previous version:

- every parameter that is not indexed by item (encoder, adapter, cross-attention, gate
  weights, positions) as it is;
- the rows of the learned item tables (``views.<v>.embedding.weight``) **by item_id**: the
  caller passes ``old_rows[i]``, the previous model's idx of the item at new idx ``i`` (0 for an
  item the previous model never saw); the cloze mask-token row goes to the new mask row;
- for items the previous model never saw, the collaborative row placed from the item's LLM
  embedding through the previous model's own PCA map (``pca_mean``/``pca_components``/
  ``pca_offset``, the map its table was initialised through, the same placement serving gives
  text-only items); without a PCA map (plain backbones) the fresh initialisation a
  from-scratch run would give them;
- the PCA map buffers themselves (the space the carried table lives in).

What is derived from today's data is kept as the new model built it: the frozen LLM table
(``views.<v>.llm``, with its standardisation ``llm_mean``/``llm_scale``) and the popularity
buckets of the view gate (``item_gate.bucket``).

Pure torch: no Spark, no files.
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

#: Learned item tables: rows follow the item idx (row 0 padding, a mask row for cloze models).
_ITEM_TABLE = re.compile(r"^views\.\d+\.embedding\.weight$")
#: State derived from today's data: kept as the new model built it.
_FROM_DATA = re.compile(r"^(views\.\d+\.(llm|llm_mean|llm_scale)|item_gate\.bucket)$")
#: The collaborative view's PCA map buffers (carried: the carried table lives in its space).
_PCA = ("pca_mean", "pca_components", "pca_offset")


def carry_state(module, old_state: Mapping[str, Tensor], old_rows: np.ndarray,
                llm: Tensor | None = None) -> dict[str, Tensor]:
    """The state dict for ``module`` (freshly built for the new catalogue) that continues ``old_state``.

    Args:
        module: the new :class:`~longtail.models.layers.SequentialRecommender` (n_items new).
        old_state: the previous version's state dict (same architecture).
        old_rows: ``[n_items_new + 1]`` int: the previous model's idx of each new idx's item,
            0 where the previous model did not know the item (and at the padding idx 0).
        llm: ``[n_items_new + 1, E]`` raw LLM item embeddings by new idx (LLM-ESR models), to
            place unseen items through the previous PCA map; None: unseen items keep ``module``'s init.

    Returns:
        A state dict ``module.load_state_dict`` accepts.

    Raises:
        ValueError: the two models differ in architecture (a missing key, or a shape that
            differs beyond the item rows).
    """
    new_state = module.state_dict()
    old_rows = np.asarray(old_rows, dtype=np.int64)
    n_new = int(module.n_items)
    if old_rows.shape != (n_new + 1,):
        raise ValueError(f"old_rows has shape {old_rows.shape}, expected ({n_new + 1},)")
    missing = sorted(set(new_state) - set(old_state))
    extra = sorted(set(old_state) - set(new_state))
    if missing or extra:
        raise ValueError(f"architecture differs: missing {missing[:5]}, unexpected {extra[:5]}")
    out: dict[str, Tensor] = {}
    for name, fresh in new_state.items():
        old = old_state[name]
        if _FROM_DATA.match(name):
            out[name] = fresh
        elif _ITEM_TABLE.match(name):
            out[name] = _carry_table(name, fresh, old, old_rows, _placed(name, old_state, llm, old_rows))
        elif tuple(old.shape) != tuple(fresh.shape):
            raise ValueError(f"architecture differs: {name} is {tuple(old.shape)}, expected {tuple(fresh.shape)}")
        else:
            out[name] = old.to(fresh.dtype).clone()
    return out


def _placed(name: str, old_state: Mapping[str, Tensor], llm: Tensor | None,
            old_rows: np.ndarray) -> tuple[np.ndarray, Tensor] | None:
    """``(idxs, rows)``: the items the previous model never saw that have an LLM embedding, placed
    through the previous model's PCA map (None: no map or no LLM table). Unused idxs (all-zero
    LLM rows: ids the k-core dropped) keep the fresh init, as in a from-scratch run."""
    prefix = name[: -len("embedding.weight")]
    if llm is None or any(f"{prefix}{b}" not in old_state for b in _PCA):
        return None
    mean, components, offset = (old_state[f"{prefix}{b}"].float() for b in _PCA)
    llm = llm.float()
    has_text = (llm[: len(old_rows)].abs().sum(dim=1) > 0).numpy()
    idxs = np.flatnonzero((old_rows == 0) & has_text)
    idxs = idxs[idxs > 0]
    return idxs, (llm[torch.from_numpy(idxs)] - mean) @ components.T + offset


def _carry_table(name: str, fresh: Tensor, old: Tensor, old_rows: np.ndarray,
                 placed: tuple[np.ndarray, Tensor] | None) -> Tensor:
    """One item table: known items' rows by item_id, unseen ones placed (or fresh), the mask row carried."""
    n_new, n_old = len(old_rows) - 1, _items_of(old, fresh, len(old_rows))
    if old.shape[1:] != fresh.shape[1:]:
        raise ValueError(f"architecture differs: {name} has width {tuple(old.shape[1:])}, expected {tuple(fresh.shape[1:])}")
    if old_rows.max(initial=0) > n_old:
        raise ValueError(f"{name}: an old idx ({old_rows.max()}) is beyond the previous table ({n_old} items)")
    table = fresh.clone()
    known = np.flatnonzero(old_rows > 0)
    table[torch.from_numpy(known)] = old[torch.from_numpy(old_rows[known])].to(table.dtype)
    if placed is not None:
        idxs, rows = placed
        table[torch.from_numpy(idxs)] = rows.to(table.dtype)
    if fresh.shape[0] == n_new + 2:  # cloze models: the mask token is the row after the last item
        table[n_new + 1] = old[n_old + 1].to(table.dtype)
    return table


def _items_of(old: Tensor, fresh: Tensor, new_rows: int) -> int:
    """Items of the previous table: its rows less padding, less the mask row when the new one has one."""
    return old.shape[0] - 1 - (fresh.shape[0] - new_rows)


# --------------------------------------------------------------------------- Adam state


def optimizer_state_by_name(optimizer, module) -> dict[str, dict[str, Tensor]]:
    """``{parameter name: {step, exp_avg, exp_avg_sq}}`` of an Adam optimizer over ``module``'s
    parameters, on the CPU: the form a later warm start reads (by name, not by position)."""
    names = {id(p): n for n, p in module.named_parameters()}
    out: dict[str, dict[str, Tensor]] = {}
    for param, state in optimizer.state.items():
        if id(param) in names and state:
            # A step count is kept as Adam's float32 tensor (SparseAdam counts in a Python int), so
            # that either optimiser can resume from it (train.item_updates may differ next time).
            out[names[id(param)]] = {k: (v.detach().to("cpu").clone() if torch.is_tensor(v)
                                         else torch.tensor(v, dtype=torch.float32 if k == "step" else None))
                                     for k, v in state.items()}
    return out


def carry_optimizer(optimizer, module, old: Mapping[str, Mapping[str, Tensor]], old_rows: np.ndarray) -> int:
    """Load a previous Adam state (:func:`optimizer_state_by_name`) into ``optimizer`` over ``module``.

    Item tables are remapped like :func:`carry_state`; rows of unseen items start with zero moments,
    as every row of a fresh Adam does. Why not a typical row's second moment: a new item gets a
    gradient only in the few steps that hold it, and Adam sizes each row's step by its own gradient
    history; the mean second moment of the carried rows is that of the frequently updated, popular
    rows, which shrank the new rows' steps about a hundredfold: on Beauty (5% of the interactions
    held out by time, 1,120 new items) the warm start then ranked the test items that were new
    items at full NDCG@10 .008 against .041 from scratch (benchmarks/README.md). With zero moments
    the first step of a row is up to ~3x ``lr`` (bias correction of the carried step count), then
    its own history sizes it. Parameters without a saved state start fresh.

    Returns:
        How many parameters got a carried state.
    """
    old_rows = np.asarray(old_rows, dtype=np.int64)
    n_new = len(old_rows) - 1
    carried = 0
    for name, param in module.named_parameters():
        saved = old.get(name)
        if not param.requires_grad or not saved:
            continue
        state = {}
        for key, value in saved.items():
            value = value.to(param.device)
            if key in ("exp_avg", "exp_avg_sq") and _ITEM_TABLE.match(name):
                value = _carry_moment(value, param, old_rows, n_new)
            elif key in ("exp_avg", "exp_avg_sq") and value.shape != param.shape:
                raise ValueError(f"optimizer state of {name} is {tuple(value.shape)}, expected {tuple(param.shape)}")
            state[key] = value.clone()
        optimizer.state[param] = state
        carried += 1
    return carried


def _carry_moment(value: Tensor, param: Tensor, old_rows: np.ndarray, n_new: int) -> Tensor:
    """One Adam moment of an item table: carried rows by item, unseen rows zero (a fresh row's)."""
    out = torch.zeros_like(param)
    n_old = _items_of(value, param, n_new + 1)
    known = np.flatnonzero(old_rows > 0)
    out[torch.from_numpy(known)] = value[torch.from_numpy(old_rows[known])]
    if param.shape[0] == n_new + 2:
        out[n_new + 1] = value[n_old + 1]
    return out


__all__ = ["carry_optimizer", "carry_state", "optimizer_state_by_name"]
