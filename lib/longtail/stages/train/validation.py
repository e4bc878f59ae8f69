"""Model selection during training: the validation item of every user, scored by rank 0."""
from __future__ import annotations

import numpy as np

from longtail.models.histories import encode_histories
from longtail.ranking.metrics import hit_rate, ndcg, sample_negatives, target_ranks
from longtail.stages.train.data import UserTable


class ValidationSet:
    """Validation users: input = training items, target = validation item, fixed sampled negatives."""

    def __init__(self, users: UserTable, rows: np.ndarray, targets: np.ndarray, negatives: np.ndarray, max_len: int):
        self.users, self.rows, self.targets, self.negatives, self.max_len = users, rows, targets, negatives, max_len
        self.n = len(rows)

    @classmethod
    def build(cls, users: UserTable, n_items: int, max_len: int, seed: int, negatives: int) -> "ValidationSet":
        """Users with a validation item; ``negatives`` unseen items each (fewer in a tiny catalogue)."""
        train_len = users.train_offsets[1:] - users.train_offsets[:-1]
        rows = np.nonzero((users.valid > 0) & (train_len > 0))[0]
        hist_len = users.hist_offsets[1:] - users.hist_offsets[:-1]
        longest = int(hist_len[rows].max()) if rows.size else 0
        # Enough unseen items for every user even in a tiny test catalogue.
        n_neg = max(1, min(negatives, n_items - longest - 1))
        rng = np.random.default_rng(seed)
        negs = np.zeros((rows.size, n_neg), dtype=np.int64)
        for i, r in enumerate(rows):
            seen = np.concatenate(
                [users.hist_values[users.hist_offsets[r] : users.hist_offsets[r + 1]], [users.valid[r]]]
            )
            negs[i] = sample_negatives(rng, n_items, seen, n_neg)
        return cls(users, rows, users.valid[rows], negs, max_len)

    def evaluate(self, module, device=None, k: int = 10) -> tuple[float, float]:
        """``(NDCG@k, HR@k)`` of the validation item against the sampled negatives."""
        import torch

        if self.n == 0:
            return 0.0, 0.0
        was_training = module.training
        module.eval()
        with torch.no_grad():
            items = module.item_vectors()
            users = encode_histories(
                module, self.users.train_values, self.users.train_offsets, self.rows, self.max_len, device=device
            )
            cands = torch.from_numpy(np.concatenate([self.targets[:, None], self.negatives], axis=1)).to(items.device)
            scores = torch.cat(
                [
                    (users[s : s + 4096, None, :] * items[cands[s : s + 4096]]).sum(-1)
                    for s in range(0, self.n, 4096)
                ]
            )
        module.train(was_training)
        ranks = target_ranks(scores.cpu().numpy(), 0)
        return ndcg(ranks, k), hit_rate(ranks, k)
