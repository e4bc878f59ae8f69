"""Vector helpers shared by scoring, metrics and similar-user search."""
from __future__ import annotations

import numpy as np


def unit_rows(x):
    """Rows scaled to unit L2 norm, in ``x``'s dtype; all-zero rows stay zero.

    Args:
        x: ``[N, D]`` numpy array or torch tensor (the result is of the same kind).
    """
    if isinstance(x, np.ndarray):
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(norms == 0, 1.0, norms)
    import torch

    norms = x.norm(dim=1, keepdim=True)
    return x / torch.where(norms > 0, norms, torch.ones_like(norms))
