"""Which users a job reads figures from: a seeded hash sample where there are more than a bound."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

#: Hash buckets of the sample (the fraction kept is rounded up to one of them).
BUCKETS = 1 << 20


def sample_users(users: DataFrame, most: int, total: int, seed: int) -> DataFrame:
    """About ``most`` of the ``total`` rows of ``users`` (by their ``user_idx``), lazily.

    A hash of ``user_idx`` and ``seed``, not ``DataFrame.sample``: the same users on every run and
    every engine. All rows when ``total`` is at most ``most``.
    """
    if total <= most:
        return users
    keep = -(-most * BUCKETS // total)  # ceil: never fewer than asked for on average
    return users.where(F.pmod(F.xxhash64("user_idx", F.lit(seed)), F.lit(BUCKETS)) < F.lit(keep))


def first_by_hash(users: DataFrame, n: int, seed: int, columns: list[str]) -> list[dict]:
    """``columns`` of ``n`` rows of ``users`` chosen by a seeded hash of ``user_idx``, on the driver.

    Exactly ``n`` rows (all when fewer), the same on every run and engine, without counting the
    table first: each partition keeps its ``n`` lowest hashes and the driver merges them (Spark's
    top-N), so the driver holds ``n`` rows whatever the number of users.
    """
    ordered = users.orderBy(F.xxhash64("user_idx", F.lit(seed)), "user_idx").limit(int(n))
    return [row.asDict() for row in ordered.select(*columns).collect()]


#: Seed of the users ``score.ann_nprobe: auto`` measures the index on (fixed: the same users every night).
TUNE_SEED = 0


def tuning_histories(seqs: DataFrame, n: int, seed: int = TUNE_SEED) -> list[list[int]]:
    """The non-empty ``item_idxs`` of ``n`` users of ``user_sequences`` (:func:`first_by_hash`): the
    users ``score.ann_nprobe: auto`` tunes the candidate index on."""
    return [list(r["item_idxs"]) for r in first_by_hash(seqs, n, seed, ["item_idxs"]) if r["item_idxs"]]
