"""Sizes of the tiny models the model tests build, and their shared checks (importable by name)."""
from __future__ import annotations

import torch

N_ITEMS = 40
HIDDEN = 8
LLM_DIM = 12


def assert_all_parameters_get_gradients(model: torch.nn.Module) -> None:
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"
