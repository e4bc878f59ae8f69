"""Scorers without Spark: the exposure-adjusted scorer (popularity or hubness bias) as one dot product."""
from __future__ import annotations

import numpy as np
import torch
from longtail.inference.scorers import ExposureAdjusted, catalogue_hubness, served_adjustment

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
    adjusted = ExposureAdjusted(TableScorer(), 0.5, np.log1p(COUNTS), name="t+hybrid", version="1+pop0.5")
    want = _scores(TableScorer(), histories) - 0.5 * torch.log1p(torch.tensor(COUNTS, dtype=torch.float32))
    torch.testing.assert_close(_scores(adjusted, histories), want)
    assert adjusted.scorable().tolist() == [False, True, True, True]


def test_a_larger_penalty_moves_the_unpopular_item_ahead():
    user = torch.tensor([[0, 1]])  # prefers item 1 (100 interactions) over item 2 (3)
    plain = _scores(TableScorer(), user)[0]
    assert plain[1] > plain[2]
    adjusted = _scores(ExposureAdjusted(TableScorer(), 1.0, np.log1p(COUNTS), name="t", version="1"), user)[0]
    assert adjusted[2] > adjusted[1]


def test_served_adjustment_reads_the_model_config_and_a_number_is_a_popularity_penalty():
    hub = {"exposure_adjustment": {"kind": "hubness", "penalty": 0.3}, "popularity_penalty": 0.0}
    assert served_adjustment("model", hub) == ("hubness", 0.3)
    assert served_adjustment("model", {"popularity_penalty": 0.2}) == ("popularity", 0.2)  # older models
    assert served_adjustment("model", None) == ("popularity", 0.0)
    assert served_adjustment(0.5, hub) == ("popularity", 0.5)


def test_catalogue_hubness_maps_model_items_and_gives_unknown_items_the_median(tmp_path):
    from longtail.core.files import npy_bytes
    from longtail.inference.store import HUBNESS_FILE

    (tmp_path / HUBNESS_FILE).write_bytes(npy_bytes(np.array([0.0, 1.0, 2.0, 4.0], dtype=np.float32)))

    class Trained:
        name, version, path = "m", "v", str(tmp_path)

    # Catalogue idx 1 -> model idx 3, 2 -> 1, 3 -> unknown (a new item), 4 -> 2.
    got = catalogue_hubness(Trained(), torch.tensor([0, 3, 1, 0, 2]))
    assert got.tolist() == [0.0, 4.0, 1.0, 2.0, 2.0]
