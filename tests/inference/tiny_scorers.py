"""A tiny dot-product scorer the bundle tests share (importable by name)."""
from __future__ import annotations

import numpy as np
import torch


class MeanOfHistory:
    """A dot-product scorer: a user is the mean of their history's item vectors."""

    name, version = "mean", "1"

    def __init__(self, items: torch.Tensor) -> None:
        self.items = items

    def user_vectors(self, histories: torch.Tensor) -> torch.Tensor:
        mask = (histories > 0).float()[..., None]
        return (self.items[histories] * mask).sum(1) / mask.sum(1).clamp_min(1)

    def item_vectors(self) -> torch.Tensor:
        return self.items

    def scorable(self) -> np.ndarray:
        return np.ones(self.items.shape[0], dtype=bool)
