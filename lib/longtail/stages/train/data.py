"""What one training process reads: its own shards, the user table, and the batches it builds.

Runs inside the torch processes (no Spark): rank r reads only shards r, r + world, ... of
the run folder with pyarrow; negatives and cloze masks are drawn from the generator the
loop seeds per (seed, rank, epoch). What a batch holds depends on the objective
(``train.loss``): one negative per position (``bce``), shared negatives (``sampled_softmax``,
:class:`NegativeSampler`) or nothing more (``ce``).
"""
from __future__ import annotations


import numpy as np

from longtail.core.errors import ConfigError
from longtail.core.files import filesystem, parquet_files, read_npy, read_parquet_dir
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


class NegativeSampler:
    """Negatives shared by a ``sampled_softmax`` batch and their log sampling probabilities.

    Args:
        n_items: catalogue size (items ``1..n_items``).
        count: negatives per batch (drawn with replacement).
        how: ``uniform``, or ``popularity``: proportional to training popularity + 1 (every
            item can be drawn, so a tail item is still a negative now and then).
        popularity: ``[n_items + 1]`` training counts (``popularity`` draws only).
        logq: keep ``log Q`` (``[n_items + 1]`` float32, row 0 = 0) for the loss's correction.

    Raises:
        ConfigError: ``count`` below 1 or an unknown draw.
    """

    def __init__(
        self, n_items: int, count: int, how: str = "uniform", popularity: np.ndarray | None = None,
        logq: bool = False,
    ) -> None:
        if count < 1:
            raise ConfigError(f"config key train.negatives: must be at least 1, got {count}")
        if how not in ("uniform", "popularity"):
            raise ConfigError(f"config key train.negative_sampling: unknown draw {how!r}")
        self.n_items, self.count, self.how = n_items, count, how
        weights = np.ones(n_items + 1, dtype=np.float64)
        if how == "popularity":
            pop = np.zeros(n_items + 1) if popularity is None else np.asarray(popularity, dtype=np.float64)
            weights = np.clip(pop[: n_items + 1], 0, None) + 1.0
        weights[0] = 0.0
        self.probs = weights / weights.sum()
        self.cdf = np.cumsum(self.probs[1:])
        self.logq = None
        if logq:
            self.logq = np.zeros(n_items + 1, dtype=np.float32)
            self.logq[1:] = np.log(self.probs[1:])

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """``[count]`` item idxs in ``1..n_items``."""
        if self.how == "uniform":
            return rng.integers(1, self.n_items + 1, size=self.count)
        picks = np.searchsorted(self.cdf, rng.random(self.count) * self.cdf[-1], side="right")
        return np.minimum(picks, self.n_items - 1).astype(np.int64) + 1


def load_popularity(run_dir: str) -> np.ndarray:
    """Training popularity by item idx: the run folder's ``popularity.npy`` (``prepare`` writes it
    from ``item_stats`` for popularity-drawn negatives)."""
    return read_npy(f"{run_dir}/popularity.npy")


def bucketed_order(
    order: np.ndarray, lengths: np.ndarray, batch: int, window: int, rng: np.random.Generator
) -> np.ndarray:
    """Reorder a shuffled epoch so each batch holds rows of similar length.

    The shuffled ``order`` is cut into windows of ``window`` batches; each window is sorted by
    length (stable, so ties keep the shuffle) and cut into batches; the batches of the whole
    epoch are then shuffled. Same rows, same batch size; fewer padded positions, so one
    encoder pass per batch costs what the per-length groups of the loss cost.

    Args:
        order: shuffled row ids; lengths: their history lengths (same order).
        batch: rows per batch; window: batches sorted together.

    Returns:
        The same ids, reordered; slicing it every ``batch`` rows gives the batches.
    """
    span = batch * window
    chunks = []
    for start in range(0, len(order), span):
        part = order[start : start + span]
        part = part[np.argsort(lengths[start : start + span], kind="stable")]
        chunks.extend(part[i : i + batch] for i in range(0, len(part), batch))
    # Every window but the last is a whole number of batches; the one short batch (if any)
    # goes last, so that slicing every ``batch`` rows gives exactly these batches.
    full = [c for c in chunks if len(c) == batch]
    short = [c for c in chunks if len(c) != batch]
    perm = rng.permutation(len(full))
    return np.concatenate([full[i] for i in perm] + short) if chunks else order


class RankData:
    """This process's training rows, read from its own shards only (every world-th shard)."""

    def __init__(self, train, neighbors: np.ndarray | None, lookup: UserTable | None,
                 changed: np.ndarray | None = None) -> None:
        self.values, self.offsets = train
        self.n = len(self.offsets) - 1
        self.neighbors = neighbors  # [n, K] rows of `lookup`, -1 = none
        self.lookup = lookup
        #: [n] bool: the row's history changed since the version a warm start continues (all True
        #: without one).
        self.changed = np.ones(self.n, dtype=bool) if changed is None else np.asarray(changed, dtype=bool)

    @classmethod
    def load(cls, shards_dir: str, rank: int, world: int, n_shards: int, lookup: UserTable | None) -> "RankData":
        """Rank ``rank``'s rows; with ``lookup``, their similar users as rows of that table."""
        seqs, neighbors, changed = _read_shards(shards_dir, range(rank, n_shards, world),
                                                with_neighbors=lookup is not None)
        train = ragged_from_lists(seqs)
        return cls(train, _neighbor_rows(neighbors, lookup) if lookup is not None else None, lookup, changed)

    def lengths(self, ids: np.ndarray) -> np.ndarray:
        """Training-row lengths of batch ids (``ids % n``: cloze's second copy of each row)."""
        rows = np.asarray(ids) % self.n
        return self.offsets[rows + 1] - self.offsets[rows]

    def batch(
        self, ids: np.ndarray, rng: np.random.Generator, n_items: int, max_len: int, cloze: bool, mask_prob: float,
        sampler: NegativeSampler | None = None, loss: str = "bce", teachers: str = "step",
    ) -> dict[str, np.ndarray]:
        """Numpy arrays of one training batch (see ``SequentialRecommender.loss``).

        ``loss``: ``bce`` adds ``neg`` (one negative per position), ``sampled_softmax`` adds
        ``negatives`` (``sampler.count`` shared) and, with logQ, ``logq``; ``ce`` needs none.
        ``teachers``: ``step`` adds the similar users' inputs (``neighbor_seqs``) and which of
        them each row uses (``neighbor_index``); ``epoch`` only ``neighbor_index``, as rows of
        the user table (the loop's per-epoch cache of representations).
        """
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
        out = {"seqs": inputs, "pos": targets}
        if loss == "bce":
            out["neg"] = sample_training_negatives(rng, targets, seqs, n_items)
        elif loss == "sampled_softmax":
            if sampler is None:
                raise ValueError("sampled_softmax needs a NegativeSampler")
            out["negatives"] = sampler.draw(rng)
            if sampler.logq is not None:
                out["logq"] = sampler.logq
        if self.neighbors is not None and self.lookup is not None:
            if teachers == "epoch":
                out["neighbor_index"] = self.neighbors[rows]
            else:
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


class EpochRows:
    """Which of a rank's rows an epoch trains on: all of them, or (a warm start with
    ``train.warm_start_replay`` below 1) the changed rows and a fresh seeded sample of the others.

    Why: a warm start continues a model that has already learnt the unchanged histories; the new
    interactions (and new items) are in the changed ones. Training on those every epoch, with a
    replayed share of the others so that they are not forgotten, makes an epoch as cheap as the
    change is small and spends it where the model is behind.
    """

    def __init__(self, changed: np.ndarray, replay: float, cloze: bool) -> None:
        changed = np.asarray(changed, dtype=bool)
        self.n = len(changed)
        self.cloze = cloze
        self.changed = np.flatnonzero(changed)
        self.others = np.flatnonzero(~changed)
        everything = replay >= 1.0 or not len(self.others)
        self.replayed = len(self.others) if everything else min(len(self.others), max(1, round(replay * len(self.others))))
        self.subset = not everything

    @property
    def rows(self) -> int:
        """Rows an epoch trains on (cloze trains each twice: :meth:`ids`, ``_schedule``)."""
        return len(self.changed) + self.replayed if self.subset else self.n

    def ids(self, rng: np.random.Generator) -> np.ndarray:
        """This epoch's row ids, shuffled (cloze: ``id + n`` is a row's second, last-item copy)."""
        if not self.subset:
            return rng.permutation(self.n * (2 if self.cloze else 1))
        rows = np.concatenate([self.changed, rng.choice(self.others, self.replayed, replace=False)])
        if self.cloze:
            rows = np.concatenate([rows, rows + self.n])
        return rng.permutation(rows)


def _read_shards(shards_dir: str, shards, with_neighbors: bool) -> tuple[list[np.ndarray], list[list[int]], np.ndarray]:
    """Training sequences, similar users' user_idx and the ``changed`` flags of the given shards,
    streamed with pyarrow (shards written before the flag existed: every row changed)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fs, _ = filesystem(shards_dir)
    seqs: list[np.ndarray] = []
    neighbors: list[list[int]] = []
    changed: list[np.ndarray] = []
    for shard in shards:
        for path in parquet_files(shard_dir(shards_dir, shard)):
            with fs.open_input_file(path) as handle:
                file = pq.ParquetFile(handle)
                flagged = "changed" in file.schema_arrow.names
                columns = ["train_item_idxs", "neighbor_idxs"] + (["changed"] if flagged else [])
                for batch in file.iter_batches(batch_size=8192, columns=columns):
                    values, offsets = ragged_from_arrow(batch.column(0))
                    seqs.extend(np.split(values, offsets[1:-1]) if len(offsets) > 1 else [])
                    if with_neighbors:
                        neighbors.extend(x or [] for x in batch.column(1).to_pylist())
                    changed.append(pc.fill_null(batch.column(2), True).to_numpy(zero_copy_only=False).astype(bool)
                                   if flagged else np.ones(batch.num_rows, dtype=bool))
    return seqs, neighbors, (np.concatenate(changed) if changed else np.zeros(0, dtype=bool))


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
