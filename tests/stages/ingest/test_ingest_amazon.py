"""The ``amazon`` format: 2014 (gzipped, Python-literal metadata) and 2018 (JSON) releases."""
from __future__ import annotations

import json

import pytest
from chispa import assert_df_equality
from ingest_helpers import STRICT, table_rows, ts, write_file
from longtail.core import schemas
from longtail.stages.ingest import run_ingest

INTER = schemas.INTERACTIONS_SCHEMA

AMAZON_2014_REVIEWS = "\n".join(
    json.dumps(r)
    for r in [
        {"reviewerID": "U1", "asin": "I1", "overall": 5.0, "unixReviewTime": 1391040000,
         "reviewText": "great", "reviewTime": "01 30, 2014"},
        {"reviewerID": "U1", "asin": "I2", "overall": 3.0, "unixReviewTime": 1397779200},
        {"reviewerID": "U2", "asin": "I1", "overall": 4.0, "unixReviewTime": 1397779200},
    ]
) + "\n"

AMAZON_2014_META = (
    "{'asin': 'I1', 'title': 'Rose Lip Balm', 'description': 'Soft lips.', 'brand': 'Acme', "
    "'price': 5.04, 'salesRank': {'Beauty': 10486}, 'related': {'also_bought': ['I2']}, "
    "'categories': [['Beauty', 'Skin Care', 'Lips'], ['Beauty', 'Makeup', 'Lips']]}\n"
    # 2014 metadata can lack a title; a JSON line in the same file is fine too.
    '{"asin": "I2", "categories": [["Beauty"]], "imUrl": "http://x/y.jpg"}\n'
)


@pytest.mark.spark
def test_amazon_2014_gzipped_reviews_and_python_literal_metadata(spark, warehouse, tmp_path):
    reviews = write_file(tmp_path / "reviews_Beauty_5.json.gz", AMAZON_2014_REVIEWS)
    meta = write_file(tmp_path / "meta_Beauty.json.gz", AMAZON_2014_META)

    report = run_ingest(spark, warehouse, "amazon", reviews, meta, None, STRICT)

    expected = spark.createDataFrame(
        [
            ("U1", "I1", ts(2014, 1, 30), 5.0),
            ("U1", "I2", ts(2014, 4, 18), 3.0),
            ("U2", "I1", ts(2014, 4, 18), 4.0),
        ],
        INTER,
    )
    assert_df_equality(warehouse.read("interactions"), expected, ignore_row_order=True, ignore_nullable=True)
    items = {r.item_id: r for r in warehouse.read("items").collect()}
    assert items["I1"].title == "Rose Lip Balm"
    assert items["I1"].description == "Soft lips."
    assert items["I1"].brand == "Acme"
    assert items["I1"].categories == ["Beauty", "Skin Care", "Lips", "Makeup"]
    assert items["I1"].attributes == {"price": "5.04", "salesRank": '{"Beauty": 10486}'}
    assert items["I2"].title is None and items["I2"].categories == ["Beauty"]
    assert items["I2"].attributes == {}  # image links and related products are not kept
    assert table_rows(warehouse, "users", "user_id") == [("U1",), ("U2",)]
    assert [r.attributes for r in warehouse.read("users").orderBy("user_id").collect()] == [{}, {}]
    assert report.rows == {"interactions": 3, "items": 2, "users": 2}
    assert report.derived == ["users"] and report.skipped == {}


@pytest.mark.spark
def test_amazon_2018_json_reviews_and_metadata(spark, warehouse, tmp_path):
    reviews = write_file(
        tmp_path / "Beauty.json",
        "\n".join(json.dumps(r) for r in [
            {"overall": 5.0, "verified": True, "reviewerID": "U1", "asin": "B1",
             "unixReviewTime": 1520294400, "style": {"Size:": " 4 oz"}},
            # No unixReviewTime: the human date is used.
            {"overall": 2.0, "reviewerID": "U2", "asin": "B1", "reviewTime": "03 6, 2018"},
        ]) + "\n",
    )
    meta = write_file(
        tmp_path / "meta_Beauty.json",
        json.dumps({"asin": "B1", "title": "Shampoo", "description": ["Clean hair.", "", "Smells nice."],
                    "category": ["Beauty", "Hair Care"], "brand": "Suds", "also_buy": ["B2"],
                    "main_cat": "All Beauty", "rank": ["1 in Beauty"]}) + "\n",
    )

    report = run_ingest(spark, warehouse, "amazon", reviews, meta, None, STRICT)

    assert table_rows(warehouse, "interactions") == [
        ("U1", "B1", ts(2018, 3, 6), 5.0),
        ("U2", "B1", ts(2018, 3, 6), 2.0),
    ]
    (item,) = warehouse.read("items").collect()
    assert item.description == "Clean hair. Smells nice."
    assert item.categories == ["Beauty", "Hair Care"]
    assert item.attributes == {"main_cat": "All Beauty", "rank": '["1 in Beauty"]'}
    assert report.rows["users"] == 2
