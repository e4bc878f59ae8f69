"""The evaluation report's long-tail figures from hand-made counts and ranks (no Spark)."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from longtail.ranking.report import build_report, catalog_metrics, exposure, popularity_deciles, report_rows

KNOWN = np.array([False] + [True] * 10)  # idx 0 is padding
TAIL = np.array([False, False, False] + [True] * 8)  # items 1-2 head, 3-10 tail
POPULARITY = np.array([0, 40, 30, 8, 6, 5, 4, 3, 2, 1, 1])
LISTS = pd.DataFrame({"diversity": [0.2, 0.4]})


def test_catalog_metrics_hand_computed():
    counts = np.array([0, 2, 1, 1, 0, 0, 0, 0, 0, 0, 0])  # two lists of two: {1, 2}, {1, 3}
    got = catalog_metrics(counts, LISTS, KNOWN, TAIL, POPULARITY, 2, has_embeddings=True)
    assert got["coverage@2"] == pytest.approx(3 / 10)
    assert got["tail_coverage@2"] == pytest.approx(1 / 8)
    assert got["tail_share@2"] == pytest.approx(1 / 4)
    assert got["avg_popularity@2"] == pytest.approx((2 * 40 + 30 + 8) / 4)
    assert got["diversity@2"] == pytest.approx(0.3)
    assert 0.7 < got["gini@2"] < 1.0  # three of ten items take every slot
    even = catalog_metrics(np.r_[0, np.ones(10)], LISTS, KNOWN, TAIL, POPULARITY, 2, has_embeddings=False)
    assert even["gini@2"] == pytest.approx(0.0) and even["diversity@2"] is None and even["tail_share@2"] == 0.8


def test_popularity_deciles_and_exposure():
    deciles = popularity_deciles(KNOWN, POPULARITY)
    assert deciles[0] == -1 and deciles[1] == 0 and deciles[2] == 1  # most popular first, one item a decile here
    assert deciles[10] == 9 and deciles[9] == 8  # tie (1, 1) broken by idx
    shares = exposure(np.array([0, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0]), KNOWN, POPULARITY)
    assert shares["slots"][:2] == pytest.approx([0.75, 0.25]) and sum(shares["slots"]) == pytest.approx(1.0)
    assert shares["interactions"][0] == pytest.approx(40 / 100) and sum(shares["interactions"]) == pytest.approx(1.0)


def test_report_segments_and_rows():
    ranks = pd.DataFrame({
        "tail_user": [True, False], "tail_item": [True, False], "sampled_rank": [0.0, 3.0],
        "full_rank": [1.0, 30.0], "diversity": [0.2, 0.4],
    })
    counts = {"tail_user": np.array([0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0]), "head_user": np.array([0, 1, 1] + [0] * 8)}
    settings = {"protocols": ["sampled", "full"], "negatives": 100, "k": 2, "recall_at": 20}
    catalogue = {"known": KNOWN, "tail": TAIL, "popularity": POPULARITY}
    rep = build_report("m", "v", {"users": 2}, ranks, counts, catalogue, settings, has_embeddings=True)
    assert rep["k"] == 2
    assert rep["protocols"]["full"]["overall"] == pytest.approx({"hr@2": 0.5, "ndcg@2": 0.5 / np.log2(3),
                                                               "mrr@2": 0.25, "recall@20": 0.5})
    assert rep["protocols"]["sampled"]["tail_user"]["mrr@2"] == 1.0
    assert rep["catalog"]["coverage@2"] == pytest.approx(3 / 10)
    assert rep["catalog_by_segment"]["tail_user"]["tail_share@2"] == pytest.approx(0.5)
    assert rep["catalog_by_segment"]["head_user"]["tail_share@2"] == 0.0
    assert rep["catalog_by_segment"]["tail_user"]["diversity@2"] == pytest.approx(0.2)
    rows = report_rows(rep, dt.datetime(2026, 1, 1))
    table = pd.DataFrame(rows, columns=["model", "version", "protocol", "segment", "metric", "value", "at"])
    assert set(table["protocol"]) == {"sampled", "full", "catalog", "exposure"}
    assert set(table[table["protocol"] == "catalog"]["segment"]) == {"overall", "tail_user", "head_user"}
    exposure_rows = table[table["protocol"] == "exposure"]
    assert len(exposure_rows) == 20 and "slots_decile_01@2" in set(exposure_rows["metric"])
    assert not table.duplicated(["protocol", "segment", "metric"]).any()


def test_similar_items_figures_become_rows_of_their_own_protocol():
    at = dt.datetime(2024, 1, 1)
    block = {"run_date": "2024-01-01", "k": 10, "sources": {
        "blend": {"overall": {"hr@10": 0.25}, "tail_item": {"hr@10": 0.5}, "items": 4, "coverage": 0.75, "tail_share": 0.6},
    }}
    report = {"model": "m", "model_version": "v", "k": 10, "protocols": {}, "catalog": {}, "similar_items": block}
    rows = {(r[2], r[3], r[4]): r[5] for r in report_rows(report, at)}
    assert rows == {
        ("similar_items", "overall", "blend_hr@10"): 0.25, ("similar_items", "tail_item", "blend_hr@10"): 0.5,
        ("similar_items", "overall", "blend_coverage"): 0.75, ("similar_items", "overall", "blend_tail_share"): 0.6,
    }
    assert report_rows({**report, "similar_items": None}, at) == []
