"""``longtail similar-items`` on the demo warehouse (the demo runs it), and availability rules on a copy of it."""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from longtail.core import schemas

pytestmark = pytest.mark.spark

D1 = dt.date(2030, 1, 1)


def test_the_demo_writes_k_similar_items_per_item_and_source_and_evaluate_reports_them(demo_warehouse):
    wh, cfg, _, progress = demo_warehouse
    assert "similar-items: similar items" in progress
    table = wh.read(schemas.SIMILAR_ITEMS).toPandas()
    assert list(table.columns) == [f.name for f in schemas.SIMILAR_ITEMS_SCHEMA.fields]
    assert set(table["source"]) == set(schemas.SIMILAR_SOURCES) and table["run_date"].nunique() == 1
    k = cfg.similar_items.top_k
    for (source, item), rows in table.groupby(["source", "item_id"]):
        rows = rows.sort_values("rank")
        assert list(rows["rank"]) == list(range(1, k + 1)), (source, item)
        assert item not in set(rows["similar_item_id"]) and rows["similar_item_id"].nunique() == k
        assert (np.diff(rows["score"].to_numpy()) <= 1e-5).all()
    # Items known from their text only get semantic lists, and blend lists unless the blend chose the
    # collaborative source alone (semantic weight 0, then the blend is that source); never collaborative ones.
    own = json.loads((Path(wh.root) / "_reports" / f"similar-items-{cfg.train.model}.json").read_text())
    blend = own["blend"]
    known = set(wh.read(schemas.ITEM_STATS).toPandas()["item_id"])
    text_only = set(wh.read(schemas.ITEM_EMBEDDINGS).toPandas()["item_id"]) - known
    lists = {s: set(g["item_id"]) for s, g in table.groupby("source")}
    assert text_only and text_only <= lists["semantic"]
    assert (text_only <= lists["blend"]) == (blend["semantic_weight"] > 0)
    assert not text_only & (lists["collaborative"] | set(table[table["source"] == "collaborative"]["similar_item_id"]))

    # The stage's own report records the blend's weights and the validation figures they were chosen on.
    assert blend["chosen"] == "validation" and blend["validation"]["pairs"] > 0
    shares = blend["validation"]["shares"]
    assert {"0", "1"} <= set(shares)  # both sources are candidates
    chosen = shares[f"{blend['semantic_weight']:g}"]
    assert chosen["hr"] >= max(shares["0"]["hr"], shares["1"]["hr"])
    assert blend["collaborative_weight"] + blend["semantic_weight"] == pytest.approx(1.0)

    report = json.loads((Path(wh.root) / "_reports" / f"evaluation-{cfg.train.model}.json").read_text())
    block = report["similar_items"]
    assert block["k"] == cfg.evaluate.k and set(block["sources"]) == set(schemas.SIMILAR_SOURCES)
    for figures in block["sources"].values():
        assert 0 <= figures["tail_item"]["hr@10"] <= 1 and 0 < figures["overall"]["hr@10"] <= 1
        assert 0 < figures["coverage"] <= 1 and 0 <= figures["tail_share"] <= 1
    rows = wh.read(schemas.EVALUATION).where("protocol = 'similar_items'").toPandas()
    assert {"blend_hr@10", "semantic_coverage", "collaborative_tail_share"} <= set(rows["metric"])


def test_availability_on_the_demo_keeps_the_most_popular_items_out_of_every_list(demo_warehouse, tmp_path):
    from longtail.core.tables import Warehouse
    from longtail.stages.score import run_score
    from longtail.stages.similar_items import run_similar_items

    demo, cfg, _, _ = demo_warehouse
    shutil.copytree(demo.root, tmp_path / "warehouse")
    wh = Warehouse(demo.spark, str(tmp_path / "warehouse"))
    stats = wh.read(schemas.ITEM_STATS).toPandas()
    top = list(stats.nlargest(10, "popularity")["item_id"])
    rules = [(i, False, None) for i in top] + [(top[0], True, dt.date(2020, 1, 1))]  # unavailable wins
    wh.write(wh.spark.createDataFrame(rules, "item_id string, available boolean, valid_from date"), "availability")
    model, k = cfg.train.model, cfg.score.top_k
    users = wh.read(schemas.USER_SEQUENCES).count()

    # The exact lists here; the candidate-retrieval path with the same rules: tests/stages/test_score.py.
    report = run_score(wh, model, cfg.score, run_date=D1, availability="availability")
    recs = wh.read(schemas.RECOMMENDATIONS).toPandas()
    day = recs[recs["run_date"] == D1]
    assert not set(top) & set(day["item_id"])
    assert day["user_id"].nunique() == users and (day.groupby("user_id").size() == k).all()
    assert report.unavailable_items == 10
    runs = wh.read(schemas.RECOMMENDATION_RUNS).toPandas()
    assert list(runs[runs["run_date"] == D1]["unavailable_items"]) == [10]

    similar = run_similar_items(wh, model, cfg.similar_items, run_date=D1, availability="availability")
    table = wh.read(schemas.SIMILAR_ITEMS).toPandas()
    table = table[table["run_date"] == D1]
    assert not set(top) & set(table["similar_item_id"])
    assert set(top) <= set(table["item_id"])  # unavailable items keep their own lists
    assert (table.groupby(["source", "item_id"]).size() == cfg.similar_items.top_k).all()
    assert similar.unavailable_items == 10
