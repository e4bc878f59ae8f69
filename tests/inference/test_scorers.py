"""Scorers without Spark: the popularity-adjusted scorer is the logit adjustment, as one dot product."""
from __future__ import annotations

import numpy as np
import torch
from longtail.inference.scorers import PopularityAdjusted

ITEMS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.9, 0.1], [0.5, 0.5]])
COUNTS = np.array([0, 100, 3, 0])


class TableScorer:
    name, version = "table", "1"

    def user_vectors(self, histories):
        return ITEMS[histories[:, -1]]

    def item_vectors(self):
        return ITEMS

    def scorable(self):
        return np.array([False, True, True, True])


def _scores(scorer, histories):
    return scorer.user_vectors(histories) @ scorer.item_vectors().T


def test_adjusted_scores_are_score_minus_penalty_times_log_count():
    histories = torch.tensor([[0, 1], [2, 3]])
    adjusted = PopularityAdjusted(TableScorer(), 0.5, np.log1p(COUNTS), name="t+hybrid", version="1+pop0.5")
    want = _scores(TableScorer(), histories) - 0.5 * torch.log1p(torch.tensor(COUNTS, dtype=torch.float32))
    torch.testing.assert_close(_scores(adjusted, histories), want)
    assert adjusted.scorable().tolist() == [False, True, True, True]


def test_a_larger_penalty_moves_the_unpopular_item_ahead():
    user = torch.tensor([[0, 1]])  # prefers item 1 (100 interactions) over item 2 (3)
    plain = _scores(TableScorer(), user)[0]
    assert plain[1] > plain[2]
    adjusted = _scores(PopularityAdjusted(TableScorer(), 1.0, np.log1p(COUNTS), name="t", version="1"), user)[0]
    assert adjusted[2] > adjusted[1]
