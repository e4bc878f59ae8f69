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


@pytest.mark.spark
def test_csv_quoted_fields_may_hold_commas_quotes_and_line_breaks(spark, warehouse, tmp_path):
    inter = write_file(tmp_path / "events.csv", "user_id,item_id,timestamp\nu1,i1,1400000000\nu1,i2,1400000001\n")
    items = write_file(
        tmp_path / "items.csv",
        "item_id,title,description\r\n"
        'i1,"Soap, ""lavender""","Line one\r\nline two\r\n"\r\n'
        'i2,Towel,"Soft,\nwarm"\r\n',
    )
    run_ingest(spark, warehouse, "files", inter, items, None, STRICT)
    rows = {r.item_id: r for r in warehouse.read("items").collect()}
    assert rows["i1"].title == 'Soap, "lavender"'
    assert rows["i1"].description == "Line one\r\nline two"
    assert rows["i2"].description == "Soft,\nwarm"


@pytest.mark.spark
def test_a_bad_row_after_a_multi_line_record_names_its_own_line(spark, warehouse, tmp_path):
    from longtail.core.errors import InputError

    inter = write_file(tmp_path / "events.csv", "user_id,item_id,timestamp\nu1,i1,1400000000\n")
    items = write_file(tmp_path / "items.csv", 'item_id,title\ni1,"two\nlines"\n,no id\n')
    with pytest.raises(InputError, match=r"items file .*items\.csv line 4: null item_id"):
        run_ingest(spark, warehouse, "files", inter, items, None, STRICT)


@pytest.mark.spark
def test_a_folder_of_csv_files_matches_columns_by_name_in_every_file(spark, warehouse, tmp_path):
    folder = tmp_path / "events"
    folder.mkdir()
    write_file(folder / "part-1.csv", "user_id,item_id,timestamp,rating\nu1,i1,1400000000,5\n")
    write_file(folder / "part-2.csv.gz", "rating,timestamp,item_id,user_id\n2,1400000001,i2,u2\n")
    write_file(folder / "part-3.csv", "timestamp,user_id,item_id\n1400000002,u3,i3\n")
    run_ingest(spark, warehouse, "files", str(folder), None, None, STRICT)
    assert table_rows(warehouse, "interactions") == [
        ("u1", "i1", ts(2014, 5, 13, 16, 53, 20), 5.0),
        ("u2", "i2", ts(2014, 5, 13, 16, 53, 21), 2.0),
        ("u3", "i3", ts(2014, 5, 13, 16, 53, 22), None),
    ]


@pytest.mark.spark
def test_every_csv_file_of_a_folder_needs_its_own_header(spark, warehouse, tmp_path):
    from longtail.core.errors import SchemaError

    folder = tmp_path / "events"
    folder.mkdir()
    write_file(folder / "a.csv", "user_id,item_id,timestamp\nu1,i1,1400000000\n")
    write_file(folder / "b.csv", "user_id,item,timestamp\nu2,i2,1400000001\n")
    with pytest.raises(SchemaError, match=r"interactions file .*b\.csv: missing column 'item_id'"):
        run_ingest(spark, warehouse, "files", str(folder), None, None, STRICT)
    assert not warehouse.exists("interactions")
