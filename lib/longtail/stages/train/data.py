"""What one training process reads: its own shards, the user table, and the batches it builds.

Runs inside the torch processes (no Spark): rank r reads only shards r, r + world, ... of
the run folder with pyarrow; negatives and cloze masks are drawn from the generator the
loop seeds per (seed, rank, epoch).
"""
from __future__ import annotations

import numpy as np

from longtail.core.files import filesystem, parquet_files, read_parquet_dir
from longtail.models.histories import pad_left, ragged_from_arrow, ragged_from_lists


def shard_dir(shards_dir: str, shard: int) -> str:
    """The folder of one training shard."""
    return f"{shards_dir}/shard={shard}"


def sample_training_negatives(
    rng: np.random.Generator, targets: np.ndarray, seen: np.ndarray, n_items: int, tries: int = 50
) -> np.ndarray:
    """One negative per position with a target (``targets > 0``), not among the row's ``seen`` items."""
    neg = rng.integers(1, n_items + 1, size=targets.shape)
    need = targets > 0
    bad = need & (neg[:, :, None] == seen[:, None, :]).any(-1)
    for _ in range(tries):  # tiny catalogues may never clear; give up after a few rounds
        if not bad.any():
            break
        r, c = np.nonzero(bad)
        neg[r, c] = rng.integers(1, n_items + 1, size=r.size)
        bad[r, c] = (neg[r, c][:, None] == seen[r]).any(-1)
    return np.where(need, neg, 0)


class UserTable:
    """Every user's training items (last ``max_len + 1``), validation item and history."""

    def __init__(self, user_idx, train, valid, history) -> None:
        self.user_idx = user_idx
        self.train_values, self.train_offsets = train
        self.valid = valid
        self.hist_values, self.hist_offsets = history
        self.row_of = np.full(int(user_idx.max()) + 1 if user_idx.size else 1, -1, dtype=np.int64)
        self.row_of[user_idx] = np.arange(user_idx.size)

    @classmethod
    def load(cls, path: str) -> "UserTable":
        """The run folder's ``users/`` table."""
        import pyarrow as pa

        tables = list(read_parquet_dir(path, ["user_idx", "train_item_idxs", "valid_item_idx", "item_idxs"]))
        table = pa.concat_tables(tables)
        valid = table.column("valid_item_idx").to_numpy(zero_copy_only=False)
        valid = np.nan_to_num(valid.astype(np.float64), nan=0).astype(np.int64)
        return cls(
            table.column("user_idx").to_numpy(zero_copy_only=False).astype(np.int64),
            ragged_from_arrow(table.column("train_item_idxs")),
            valid,
            ragged_from_arrow(table.column("item_idxs")),
        )


class RankData:
    """This process's training rows, read from its own shards only (every world-th shard)."""

    def __init__(self, train, neighbors: np.ndarray | None, lookup: UserTable | None) -> None:
        self.values, self.offsets = train
        self.n = len(self.offsets) - 1
        self.neighbors = neighbors  # [n, K] rows of `lookup`, -1 = none
        self.lookup = lookup

    @classmethod
    def load(cls, shards_dir: str, rank: int, world: int, n_shards: int, lookup: UserTable | None) -> "RankData":
        """Rank ``rank``'s rows; with ``lookup``, their similar users as rows of that table."""
        seqs, neighbors = _read_shards(shards_dir, range(rank, n_shards, world), with_neighbors=lookup is not None)
        train = ragged_from_lists(seqs)
        return cls(train, _neighbor_rows(neighbors, lookup) if lookup is not None else None, lookup)

    def batch(
        self, ids: np.ndarray, rng: np.random.Generator, n_items: int, max_len: int, cloze: bool, mask_prob: float
    ) -> dict[str, np.ndarray]:
        """Numpy arrays of one training batch (see ``SequentialRecommender.loss``)."""
        rows = ids % self.n
        seqs = pad_left(self.values, self.offsets, rows, max_len + 1)
        if cloze:
            from longtail.models.bert4rec import cloze_mask

            tokens = seqs[:, -max_len:]
            inputs, targets = cloze_mask(rng, tokens, n_items, mask_prob, last_only=ids >= self.n)
        else:
            inputs, targets = seqs[:, :-1], seqs[:, 1:] * (seqs[:, :-1] != 0)
        first = int(np.argmax((inputs != 0).any(axis=0))) if (inputs != 0).any() else inputs.shape[1] - 1
        inputs, targets = inputs[:, first:], targets[:, first:]
        out = {"seqs": inputs, "pos": targets, "neg": sample_training_negatives(rng, targets, seqs, n_items)}
        if self.neighbors is not None and self.lookup is not None:
            out["neighbor_seqs"], out["neighbor_index"] = self._teachers(rows, max_len, cloze)
        return out

    def _teachers(self, rows: np.ndarray, max_len: int, cloze: bool) -> tuple[np.ndarray, np.ndarray]:
        """The distinct similar users' inputs of a batch, and per row which of them are its teachers."""
        nb = self.neighbors[rows]
        valid = nb >= 0
        unique, inverse = np.unique(nb[valid], return_inverse=True)
        index = np.full(nb.shape, -1, dtype=np.int64)
        index[valid] = inverse
        if not unique.size:
            return np.zeros((0, 1), dtype=np.int64), index
        lookup = self.lookup
        teacher = pad_left(lookup.train_values, lookup.train_offsets, unique, max_len, drop_last=not cloze)
        return teacher, index


def _read_shards(shards_dir: str, shards, with_neighbors: bool) -> tuple[list[np.ndarray], list[list[int]]]:
    """Training sequences (and similar users' user_idx) of the given shards, streamed with pyarrow."""
    import pyarrow.parquet as pq

    fs, _ = filesystem(shards_dir)
    seqs: list[np.ndarray] = []
    neighbors: list[list[int]] = []
    for shard in shards:
        for path in parquet_files(shard_dir(shards_dir, shard)):
            with fs.open_input_file(path) as handle:
                for batch in pq.ParquetFile(handle).iter_batches(
                    batch_size=8192, columns=["train_item_idxs", "neighbor_idxs"]
                ):
                    values, offsets = ragged_from_arrow(batch.column(0))
                    seqs.extend(np.split(values, offsets[1:-1]) if len(offsets) > 1 else [])
                    if with_neighbors:
                        neighbors.extend(x or [] for x in batch.column(1).to_pylist())
    return seqs, neighbors


def _neighbor_rows(neighbors: list[list[int]], lookup: UserTable) -> np.ndarray:
    """``[n, K]`` rows of ``lookup`` for each row's similar users' user_idx (-1 = none)."""
    k = max((len(x) for x in neighbors), default=0)
    nb = np.full((len(neighbors), max(k, 1)), -1, dtype=np.int64)
    for i, row in enumerate(neighbors):
        if row:
            idx = np.asarray(row, dtype=np.int64)
            idx = idx[(idx >= 0) & (idx < lookup.row_of.size)]
            nb[i, : idx.size] = lookup.row_of[idx]
    return nb
