"""Model selection during training: the validation item of every user, scored by rank 0 under the
sampled protocol, the full-catalogue one (what the nightly table serves), or both."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from longtail.core.errors import ConfigError
from longtail.models.histories import encode_histories, pad_histories
from longtail.ranking.metrics import hit_rate, ndcg, sample_negatives, target_ranks
from longtail.ranking.topk import full_ranks, item_hubness
from longtail.stages.train.data import UserTable

#: Popularity penalties tried after training (``train.exposure_tolerance``); a fixed grid, so
#: that every model is calibrated by the same rule.
EXPOSURE_PENALTIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5)


#: Users x items per block of a full-protocol pass: a block's scores (4 MiB) stay in the core's cache
#: while they are masked and counted; 1,024 x 8,192 (32 MiB) cost 1.5x per pair (benchmarks/catalogue_costs.py).
VALIDATION_USER_CHUNK = 256
VALIDATION_ITEM_CHUNK = 4096


#: Item biases the exposure adjustment can subtract (``train.exposure_adjustment``).
EXPOSURE_ADJUSTMENTS = ("hubness", "popularity")


@dataclass(frozen=True)
class ExposureCalibration:
    """The exposure adjustment chosen on validation: ``kind`` of item bias, its multiplier
    ``penalty``, every penalty's figures (``grid``: ``penalty``, ``ndcg10``, ``hr10``,
    ``avg_log_popularity10`` of the full top-10 lists) and the bias per item idx (``[n_items + 1]``)."""

    penalty: float
    tolerance: float
    grid: list[dict]
    kind: str = "popularity"
    bias: np.ndarray | None = None

    def as_dict(self) -> dict:
        return {"kind": self.kind, "penalty": self.penalty, "tolerance": self.tolerance, "grid": self.grid}


def means(totals: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """``{protocol: (NDCG, HR)}`` from :meth:`ValidationSet.totals` (summed over ranks or not)."""
    return {p: ((float(t[0] / t[2]), float(t[1] / t[2])) if t[2] > 0 else (0.0, 0.0)) for p, t in totals.items()}


class ValidationSet:
    """Validation users: input = training items, target = validation item, fixed sampled negatives."""

    def __init__(self, users: UserTable, rows: np.ndarray, targets: np.ndarray, negatives: np.ndarray, max_len: int):
        self.users, self.rows, self.targets, self.negatives, self.max_len = users, rows, targets, negatives, max_len
        self.n = len(rows)

    @classmethod
    def build(cls, users: UserTable, n_items: int, max_len: int, seed: int, negatives: int,
              limit: int | None = None) -> ValidationSet:
        """Users with a validation item (a seeded sample of ``limit`` of them when there are more);
        ``negatives`` unseen items each (fewer in a tiny catalogue)."""
        train_len = users.train_offsets[1:] - users.train_offsets[:-1]
        rows = np.nonzero((users.valid > 0) & (train_len > 0))[0]
        if limit is not None and rows.size > limit:
            # Its own generator: the sample does not shift the negatives drawn below.
            rows = np.sort(np.random.default_rng([seed, 1]).choice(rows, size=int(limit), replace=False))
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

    def part(self, rank: int, world: int) -> ValidationSet:
        """This rank's share of the validation users (every ``world``-th one from ``rank``), with
        their targets and negatives: the ranks of a distributed run validate disjoint shares and
        add up :meth:`totals`, so each ranks ``1 / world`` of the users against the catalogue."""
        take = slice(rank, None, world)
        return ValidationSet(self.users, self.rows[take], self.targets[take], self.negatives[take], self.max_len)

    def evaluate(
        self, module, device=None, k: int = 10, protocols: Sequence[str] = ("sampled",),
        user_chunk: int = VALIDATION_USER_CHUNK, item_chunk: int = VALIDATION_ITEM_CHUNK,
    ) -> dict[str, tuple[float, float]]:
        """``{protocol: (NDCG@k, HR@k)}`` of the validation item for ``sampled`` and/or ``full``.

        ``sampled``: against the fixed sampled negatives (the paper's protocol). ``full``: against
        the whole catalogue minus the user's training items, as the nightly table ranks
        (:func:`longtail.ranking.topk.full_ranks`, in user chunks x item chunks).
        """
        return means(self.totals(module, device, k, protocols, user_chunk, item_chunk))

    def totals(
        self, module, device=None, k: int = 10, protocols: Sequence[str] = ("sampled",),
        user_chunk: int = VALIDATION_USER_CHUNK, item_chunk: int = VALIDATION_ITEM_CHUNK,
    ) -> dict[str, np.ndarray]:
        """``{protocol: [sum of NDCG@k, sum of HR@k, users]}`` (float64): what ranks add up."""
        import torch

        if self.n == 0:
            return {p: np.zeros(3) for p in protocols}
        users, items = self._vectors(module, device)
        with torch.no_grad():
            ranks = {}
            if "sampled" in protocols:
                ranks["sampled"] = self._sampled_ranks(users, items)
            if "full" in protocols:
                ranks["full"] = self._full_ranks(users.cpu(), items.cpu(), k, user_chunk, item_chunk)
        return {p: np.array([ndcg(r, k) * r.size, hit_rate(r, k) * r.size, r.size], dtype=np.float64)
                for p, r in ranks.items()}

    def _vectors(self, module, device):
        """``(user vectors of the validation users, item vectors)`` in eval mode, float32."""
        import torch

        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                items = module.item_vectors().float()
                users = encode_histories(
                    module, self.users.train_values, self.users.train_offsets, self.rows, self.max_len, device=device
                ).float()
        finally:
            module.train(was_training)
        return users, items

    def _sampled_ranks(self, users, items) -> np.ndarray:
        import torch

        cands = torch.from_numpy(np.concatenate([self.targets[:, None], self.negatives], axis=1)).to(items.device)
        # Blocks of 256 users: their gathered candidate rows (256 x 101 x D) stay in cache for the
        # batched product; the broadcast product over 4,096 users cost 3x as much on Beauty.
        step = VALIDATION_USER_CHUNK
        scores = torch.cat([
            torch.bmm(torch.nn.functional.embedding(cands[s : s + step], items), users[s : s + step, :, None])[:, :, 0]
            for s in range(0, self.n, step)
        ])
        return target_ranks(scores.cpu().numpy(), 0)

    def calibrate_exposure(
        self, module, log_counts: np.ndarray, tolerance: float, device=None, k: int = 10,
        penalties: Sequence[float] = EXPOSURE_PENALTIES, user_chunk: int = VALIDATION_USER_CHUNK,
        item_chunk: int = VALIDATION_ITEM_CHUNK,
        kind: str = "popularity",
    ) -> ExposureCalibration:
        """The largest penalty whose full-protocol validation NDCG@k is at least ``(1 - tolerance)``
        times the unadjusted one, for scores ``s - penalty * bias``: ``bias`` is ``log_counts``
        (``kind="popularity"``) or the model's :func:`~longtail.ranking.topk.item_hubness` over the
        validation users (``kind="hubness"``).

        The grid is scanned upwards and the scan stops at the first penalty below the floor: NDCG
        falls with the penalty beyond the tolerance (monotone on all six Beauty models of
        ``benchmarks/results/exposure_calibration.jsonl``), so the penalties above it are not
        ranked, which saves 4-6 of the 9 full-catalogue passes.

        Args:
            module: the trained model (its best weights); log_counts: ``[n_items + 1]``
                :func:`~longtail.ranking.topk.log_popularity` of the training counts per item idx;
                tolerance: relative NDCG@k given up at most.

        Returns:
            :class:`ExposureCalibration` (penalty 0 when no penalty keeps the tolerance, or no users).

        Raises:
            ConfigError: an unknown ``kind``.
        """
        import torch

        if kind not in EXPOSURE_ADJUSTMENTS:
            raise ConfigError(f"config key train.exposure_adjustment: {kind!r} is not one of {', '.join(EXPOSURE_ADJUSTMENTS)}")
        if self.n == 0:
            return ExposureCalibration(0.0, tolerance, [], kind)
        users, items = (v.cpu() for v in self._vectors(module, device))
        pop = torch.as_tensor(np.asarray(log_counts, dtype=np.float32))[: items.shape[0], None]
        bias = item_hubness(users, items) if kind == "hubness" else pop[:, 0].numpy().copy()
        items = torch.cat([items, -torch.from_numpy(bias)[:, None]], dim=1)
        grid, chosen = [], 0.0
        for penalty in sorted({0.0, *map(float, penalties)}):
            adjusted = torch.cat([users, torch.full((users.shape[0], 1), penalty)], dim=1)
            ranks, top = self._full_ranks(adjusted, items, k, user_chunk, item_chunk, with_top=True)
            slots = pop[top.ravel(), 0]
            grid.append({"penalty": penalty, "ndcg10": ndcg(ranks, k), "hr10": hit_rate(ranks, k),
                         "avg_log_popularity10": float(slots.mean()) if slots.numel() else 0.0})
            if grid[-1]["ndcg10"] < (1.0 - tolerance) * grid[0]["ndcg10"]:
                break
            chosen = penalty
        return ExposureCalibration(chosen, tolerance, grid, kind, bias)

    def _full_ranks(self, users, items, k: int, user_chunk: int, item_chunk: int, with_top: bool = False):
        import torch

        ranks = np.zeros(self.n, dtype=np.float64)
        tops = []
        for s in range(0, self.n, user_chunk):
            e = min(self.n, s + user_chunk)
            seen = pad_histories([self.training_items(i) for i in range(s, e)])
            r, top = full_ranks(users[s:e], items, torch.from_numpy(self.targets[s:e]), seen=seen, k=k,
                                item_chunk=item_chunk, with_top=with_top)
            ranks[s:e] = r.numpy()
            tops.append(top)
        return (ranks, torch.cat(tops)) if with_top else ranks

    def training_items(self, i: int) -> np.ndarray:
        """Training items of validation user ``i``: its history but the validation and test items."""
        r = self.rows[i]
        h = self.users.hist_values[self.users.hist_offsets[r] : self.users.hist_offsets[r + 1]]
        return h[:-2] if h.size >= 3 else h
