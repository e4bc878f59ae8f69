"""Validation shared between ranks: each rank ranks its share of the users, the sums make the figures."""

import dataclasses

import numpy as np
import pytest
import torch

from longtail.core.config import TrainConfig
from longtail.models import build_model
from longtail.stages.train.data import UserTable
from longtail.stages.train.validation import ValidationSet, means

N_ITEMS, N_USERS = 60, 37


def _users(seed: int = 0) -> UserTable:
    """Random histories of 4-9 items; the last two are the validation and test items."""
    rng = np.random.default_rng(seed)
    histories = [rng.choice(np.arange(1, N_ITEMS + 1), size=rng.integers(4, 10), replace=False) for _ in range(N_USERS)]
    train = [h[:-2] for h in histories]
    offsets = lambda parts: np.concatenate([[0], np.cumsum([len(p) for p in parts])])  # noqa: E731
    return UserTable(np.arange(1, N_USERS + 1), (np.concatenate(train), offsets(train)),
                     np.array([h[-2] for h in histories]), (np.concatenate(histories), offsets(histories)))


@pytest.mark.parametrize("world", [2, 3])
def test_the_ranks_shares_cover_every_user_once_and_their_sums_make_the_whole_figures(world):
    torch.manual_seed(0)
    hp = dataclasses.asdict(TrainConfig(hidden=8, max_len=12, layers=1, dropout=0.0))
    model = build_model("sasrec", N_ITEMS, hp)
    whole = ValidationSet.build(_users(), N_ITEMS, max_len=12, seed=3, negatives=20)
    parts = [whole.part(rank, world) for rank in range(world)]
    assert sorted(np.concatenate([p.rows for p in parts]).tolist()) == sorted(whole.rows.tolist())
    for part in parts:  # each user keeps its own target and negatives
        where = np.searchsorted(whole.rows, part.rows)
        assert (whole.targets[where] == part.targets).all() and (whole.negatives[where] == part.negatives).all()
    protocols = ("sampled", "full")
    summed = {p: sum(part.totals(model, protocols=protocols)[p] for part in parts) for p in protocols}
    expected = whole.evaluate(model, protocols=protocols)
    assert summed["full"][2] == whole.n
    for protocol in protocols:
        assert means(summed)[protocol] == pytest.approx(expected[protocol], abs=1e-12)
    assert expected["full"][1] > 0 or expected["sampled"][1] > 0  # a figure that could differ


def test_a_share_without_users_adds_nothing():
    whole = ValidationSet.build(_users(), N_ITEMS, max_len=12, seed=3, negatives=20)
    empty = whole.part(N_USERS + 5, N_USERS + 6)
    assert empty.n == 0
    assert empty.totals(None, protocols=("full",))["full"].tolist() == [0.0, 0.0, 0.0]
    assert means({"full": np.zeros(3)}) == {"full": (0.0, 0.0)}
