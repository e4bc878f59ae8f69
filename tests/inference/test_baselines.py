"""Popularity, content and ALS baselines on tiny data."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from longtail.core import schemas
from longtail.inference.baselines import (
    ALSScorer,
    ContentScorer,
    PopularityScorer,
    fit_als,
    history_pairs,
    item_counts,
)
from longtail.inference.scorers import Scorer
from longtail.models.histories import pad_histories
from longtail.ranking.topk import chunked_topk


def test_popularity_ranks_by_count_for_everyone():
    pop = PopularityScorer(np.array([0, 5, 9, 1, 7]), known=np.array([False, True, True, True, True]))
    assert isinstance(pop, Scorer)
    h = pad_histories([[2], [1, 3]])
    _, top = chunked_topk(pop.user_vectors(h), pop.item_vectors(), 2, seen=h)
    assert top.tolist() == [[4, 1], [2, 4]]


def test_content_user_is_the_normalised_mean_of_the_history():
    emb = np.array([[0, 0], [2, 0], [0, 1], [1, 1]], dtype=np.float32)
    content = ContentScorer(emb, has_embedding=np.array([False, True, True, True]))
    u = content.user_vectors(pad_histories([[1, 2], []]))
    torch.testing.assert_close(u[0], torch.tensor([1.0, 1.0]) / np.sqrt(2))
    assert torch.count_nonzero(u[1]) == 0
    scores = u[0] @ content.item_vectors().T  # cosines
    assert scores[3].item() == pytest.approx(1.0)


def test_als_fold_in_counts_duplicates_as_confidence():
    y = np.array([[0, 0], [1.0, 0.2], [0.1, 1.0], [0.5, 0.5]], dtype=np.float32)
    als = ALSScorer(y, np.ones(4, bool), reg=0.1, alpha=2.0)
    got = als.user_vectors(pad_histories([[1, 3, 1]]))[0].double()
    y64 = torch.tensor(y, dtype=torch.float64)
    # r_1 = 2, r_3 = 1; two distinct items
    a = y64.T @ y64 + 2.0 * (2 * torch.outer(y64[1], y64[1]) + torch.outer(y64[3], y64[3])) + 0.1 * 2 * torch.eye(2)
    b = (1 + 2.0 * 2) * y64[1] + (1 + 2.0) * y64[3]
    torch.testing.assert_close(got, torch.linalg.solve(a, b), rtol=1e-5, atol=1e-6)


@pytest.mark.spark
@pytest.mark.slow
def test_als_item_factors_and_fold_in_reproduce_spark_user_factors(spark):
    rng = np.random.default_rng(0)
    rows = []
    for u in range(1, 41):
        group = u % 2
        items = rng.choice(np.arange(1, 16) if group else np.arange(16, 31), size=6, replace=False).tolist()
        rows.append((f"u{u}", u, items + [1], items[:-1], items[-1], 1))
    seqs = spark.createDataFrame(rows, schemas.USER_SEQUENCES_SCHEMA)
    pairs = history_pairs(seqs, "all")
    assert pairs.where("count > 1").count() > 0  # item 1 repeats for odd users: counts as confidence
    known = np.ones(31, dtype=bool)
    known[0] = False
    als = fit_als(pairs, 31, known, rank=4, max_iter=4, reg=0.05, seed=3)
    assert als.item_vectors().shape == (31, 4)
    # Spark's own user factors are the ALS step given the final item factors: fold-in must match.
    from pyspark.ml.recommendation import ALS

    model = ALS(rank=4, maxIter=4, regParam=0.05, alpha=1.0, implicitPrefs=True, seed=3, userCol="user_idx",
                itemCol="item_idx", ratingCol="count").fit(pairs.withColumn("count", pairs["count"].cast("float")))
    spark_users = {r["id"]: np.asarray(r["features"]) for r in model.userFactors.collect()}
    histories = pad_histories([r[2] for r in rows])
    folded = als.user_vectors(histories).numpy()
    for r, vec in zip(rows, folded):
        np.testing.assert_allclose(vec, spark_users[r[1]], rtol=2e-3, atol=2e-4)
    # And it recommends within the user's group.
    _, top = chunked_topk(als.user_vectors(histories), als.item_vectors(), 3, seen=histories)
    same_group = [(t >= 16) == (rows[i][1] % 2 == 0) for i, row in enumerate(top.tolist()) for t in row]
    assert np.mean(same_group) > 0.9
    counts = item_counts(seqs, "train", 31)
    assert counts.sum() == sum(len(r[3]) for r in rows)
