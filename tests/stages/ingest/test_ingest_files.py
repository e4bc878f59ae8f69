"""The ``files`` format: CSV (plain and gzipped), JSON lines and Parquet (file and folder)."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from ingest_helpers import STRICT, table_rows, ts, write_file
from longtail.stages.ingest import run_ingest


@pytest.mark.spark
def test_files_csv_with_iso_and_unix_timestamps_and_item_attributes(spark, warehouse, tmp_path):
    inter = write_file(
        tmp_path / "interactions.csv",
        "user_id,item_id,timestamp,rating\n"
        "u1,i1,1400000000,4\n"
        "u1,i2,2014-05-14T00:00:00Z,\n"
        "\n"  # a blank line is not a row
        "u2,i1,2014-05-14 02:00:00+02:00,5\n"
        "u2,i2,2014-05-15,1.5\n",
    )
    items = write_file(
        tmp_path / "items.csv",
        "item_id,title,categories,brand,price,color\n"
        'i1,"Soap, lavender",Bath|Soap|Bath,Acme,3.5,purple\n'
        "i2,Towel,,,,\n",
    )

    report = run_ingest(spark, warehouse, "files", inter, items, None, STRICT)

    assert table_rows(warehouse, "interactions") == [
        ("u1", "i1", ts(2014, 5, 13, 16, 53, 20), 4.0),
        ("u1", "i2", ts(2014, 5, 14), None),
        ("u2", "i1", ts(2014, 5, 14), 5.0),
        ("u2", "i2", ts(2014, 5, 15), 1.5),
    ]
    items = {r.item_id: r for r in warehouse.read("items").collect()}
    assert items["i1"].title == "Soap, lavender"
    assert items["i1"].categories == ["Bath", "Soap"]
    assert items["i1"].attributes == {"price": "3.5", "color": "purple"}
    assert items["i2"].brand is None and items["i2"].categories == [] and items["i2"].attributes == {}
    assert report.rows == {"interactions": 4, "items": 2, "users": 2}


@pytest.mark.spark
def test_files_csv_gz_and_json_lines_items_with_lists_and_extra_keys(spark, warehouse, tmp_path):
    inter = write_file(tmp_path / "interactions.csv.gz", "user_id,item_id,timestamp\n7,100,1400000000\n8,101,1400000001\n")
    items = write_file(
        tmp_path / "items.jsonl",
        json.dumps({"item_id": 100, "title": "Mug", "categories": ["Kitchen", "Cups"], "price": 9.99,
                    "dims": {"h": 10}, "in_stock": True}) + "\n"
        + json.dumps({"item_id": "101", "title": None, "categories": "Kitchen|Pans"}) + "\n",
    )

    run_ingest(spark, warehouse, "files", inter, items, None, STRICT)

    assert table_rows(warehouse, "interactions", "user_id", "item_id") == [("7", "100"), ("8", "101")]
    items = {r.item_id: r for r in warehouse.read("items").collect()}
    assert items["100"].categories == ["Kitchen", "Cups"]
    assert items["100"].attributes == {"price": "9.99", "dims": '{"h": 10}', "in_stock": "true"}
    assert items["101"].title is None and items["101"].categories == ["Kitchen", "Pans"]


@pytest.mark.spark
def test_files_parquet_file_and_parquet_folder_with_numeric_ids(spark, warehouse, tmp_path):
    import pandas as pd

    inter = str(tmp_path / "interactions.parquet")
    pd.DataFrame(
        {"user_id": [1, 1, 2], "item_id": [10, 11, 10], "timestamp": [1400000000, 1400000100, 1400000200],
         "rating": [4.0, None, 2.0], "session": ["a", "b", "c"]}
    ).to_parquet(inter)
    items = str(tmp_path / "items")  # a folder of Parquet files, as Spark writes it
    spark.createDataFrame(
        [(10, "Pen", ["Office"], "Bic", 1.25), (11, "Ink", ["Office", "Refills"], None, None)],
        "item_id long, title string, categories array<string>, brand string, price double",
    ).repartition(2).write.parquet(items)
    users = write_file(tmp_path / "users.csv", "user_id,country\n1,NL\n2,FR\n")

    run_ingest(spark, warehouse, "files", inter, items, users, STRICT)

    assert table_rows(warehouse, "interactions") == [
        ("1", "10", ts(2014, 5, 13, 16, 53, 20), 4.0),
        ("1", "11", ts(2014, 5, 13, 16, 55), None),
        ("2", "10", ts(2014, 5, 13, 16, 56, 40), 2.0),
    ]
    items = {r.item_id: r for r in warehouse.read("items").collect()}
    assert items["10"].attributes == {"price": "1.25"}
    assert items["11"].categories == ["Office", "Refills"] and items["11"].attributes == {}
    assert table_rows(warehouse, "users", "user_id") == [("1",), ("2",)]


@pytest.mark.spark
def test_parquet_timestamp_column_is_kept_as_an_instant(spark, warehouse, tmp_path):
    inter = str(tmp_path / "events")
    spark.createDataFrame(
        [("u", "i", dt.datetime(2020, 1, 2, 3, 4, 5))], "user_id string, item_id string, timestamp timestamp"
    ).write.parquet(inter)

    run_ingest(spark, warehouse, "files", inter, None, None, STRICT)

    assert table_rows(warehouse, "interactions") == [("u", "i", ts(2020, 1, 2, 3, 4, 5), None)]
    assert table_rows(warehouse, "items", "item_id", "title") == [("i", None)]  # derived: ids only
