"""Sizes of the tiny models the model tests build, and their shared checks (importable by name)."""
from __future__ import annotations

import numpy as np
import torch

N_ITEMS = 40
HIDDEN = 8
LLM_DIM = 12


def assert_all_parameters_get_gradients(model: torch.nn.Module) -> None:
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"


def planted_walks(n_users: int = 300, n_items: int = N_ITEMS, length: int = 8, seed: int = 0) -> torch.Tensor:
    """Each user walks item i -> i+1 (mod n): the next item is determined by the last one."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, n_items, size=n_users)
    seqs = (start[:, None] + np.arange(length)[None, :]) % n_items + 1
    return torch.from_numpy(seqs.astype(np.int64))


def full_hr5(model, data: torch.Tensor) -> float:
    """HR@5 of each walk's second-last item against the whole catalogue, from the walk before it
    (a history one shorter than the training walks: a cloze model's mask token stays at a position
    it was trained at)."""
    from longtail.ranking.topk import full_ranks

    model.eval()
    with torch.no_grad():
        users = model.user_vectors(data[:, :-2])
        ranks, _ = full_ranks(users, model.item_vectors(), data[:, -2], seen=None)
    return float((ranks < 5).double().mean())


def next_item(rng: np.random.Generator, walks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of a next-item model: every position predicts the item after it."""
    return walks[:, :-1], walks[:, 1:]


def fit(model, data: torch.Tensor, steps: int, lr: float = 0.01, seed: int = 1, batch=next_item,
        optimizer=None) -> None:
    """Adam steps of the model's own loss on batches of 64 walks, 16 shared sampled negatives and
    one BCE negative per position; ``batch(rng, walks)`` makes inputs and targets (:func:`next_item`,
    or a cloze mask); ``optimizer``: another one over the model (``lr`` then unused)."""
    opt = optimizer or torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        seqs, pos = batch(rng, data[torch.from_numpy(rng.choice(data.shape[0], 64, replace=False))])
        batch_arrays = {
            "seqs": seqs, "pos": pos,
            "neg": torch.from_numpy(rng.integers(1, N_ITEMS + 1, size=tuple(pos.shape))) * (pos > 0),
            "negatives": torch.from_numpy(rng.integers(1, N_ITEMS + 1, size=16)),
        }
        opt.zero_grad()
        model.loss(batch_arrays).backward()
        opt.step()
