"""Model selection during training: the validation item of every user, scored by rank 0 under the
sampled protocol, the full-catalogue one (what the nightly table serves), or both."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from longtail.models.histories import encode_histories, pad_histories
from longtail.ranking.metrics import hit_rate, ndcg, sample_negatives, target_ranks
from longtail.ranking.topk import full_ranks
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

    def evaluate(
        self, module, device=None, k: int = 10, protocols: Sequence[str] = ("sampled",),
        user_chunk: int = 1024, item_chunk: int = 8192,
    ) -> dict[str, tuple[float, float]]:
        """``{protocol: (NDCG@k, HR@k)}`` of the validation item for ``sampled`` and/or ``full``.

        ``sampled``: against the fixed sampled negatives (the paper's protocol). ``full``: against
        the whole catalogue minus the user's training items, as the nightly table ranks
        (:func:`longtail.ranking.topk.full_ranks`, in user chunks x item chunks).
        """
        import torch

        if self.n == 0:
            return {p: (0.0, 0.0) for p in protocols}
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                items = module.item_vectors().float()
                users = encode_histories(
                    module, self.users.train_values, self.users.train_offsets, self.rows, self.max_len, device=device
                ).float()
                ranks = {}
                if "sampled" in protocols:
                    ranks["sampled"] = self._sampled_ranks(users, items)
                if "full" in protocols:
                    ranks["full"] = self._full_ranks(users.cpu(), items.cpu(), k, user_chunk, item_chunk)
        finally:
            module.train(was_training)
        return {p: (ndcg(r, k), hit_rate(r, k)) for p, r in ranks.items()}

    def _sampled_ranks(self, users, items) -> np.ndarray:
        import torch

        cands = torch.from_numpy(np.concatenate([self.targets[:, None], self.negatives], axis=1)).to(items.device)
        scores = torch.cat(
            [(users[s : s + 4096, None, :] * items[cands[s : s + 4096]]).sum(-1) for s in range(0, self.n, 4096)]
        )
        return target_ranks(scores.cpu().numpy(), 0)

    def _full_ranks(self, users, items, k: int, user_chunk: int, item_chunk: int) -> np.ndarray:
        import torch

        ranks = np.zeros(self.n, dtype=np.float64)
        for s in range(0, self.n, user_chunk):
            e = min(self.n, s + user_chunk)
            seen = pad_histories([self.training_items(i) for i in range(s, e)])
            r, _ = full_ranks(users[s:e], items, torch.from_numpy(self.targets[s:e]), seen=seen, k=k,
                              item_chunk=item_chunk)
            ranks[s:e] = r.numpy()
        return ranks

    def training_items(self, i: int) -> np.ndarray:
        """Training items of validation user ``i``: its history but the validation and test items."""
        r = self.rows[i]
        h = self.users.hist_values[self.users.hist_offsets[r] : self.users.hist_offsets[r + 1]]
        return h[:-2] if h.size >= 3 else h
