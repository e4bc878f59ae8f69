"""Lists on the driver through the inference interface equal the nightly table's."""
from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from longtail.core import schemas
from longtail.inference import recommend_users

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def test_driver_lists_equal_the_nightly_table(demo_warehouse):
    wh, cfg, _, _ = demo_warehouse
    recs = wh.read(schemas.RECOMMENDATIONS)
    latest = recs.agg(F.max("run_date")).first()[0]
    nightly = recs.where((F.col("run_date") == latest) & ~F.col("fallback")).toPandas()
    users = sorted(nightly["user_id"].unique())[:25]
    got = recommend_users(wh, cfg.train.model, users, k=cfg.score.top_k)
    want = nightly[nightly["user_id"].isin(users)].sort_values(["user_id", "rank"])
    got = got.sort_values(["user_id", "rank"])
    assert list(zip(got["user_id"], got["rank"], got["item_id"])) == list(
        zip(want["user_id"], want["rank"], want["item_id"])
    )
    assert got["score"].to_numpy() == pytest.approx(want["score"].to_numpy(), abs=1e-5)
    assert recommend_users(wh, cfg.train.model, ["nobody"], k=3).empty
