"""Tests of ``longtail ingest``: every format on tiny files written here, bad input, duplicates,
failed and repeated ingests. Pure parsing helpers are tested without Spark."""
from __future__ import annotations

import datetime as dt
import gzip
import json
from decimal import Decimal
from pathlib import Path

import pytest
from chispa import assert_df_equality

from longtail.core import schemas
from longtail.core.config import IngestConfig
from longtail.core.errors import ConfigError, InputError, SchemaError
from longtail.stages.ingest import (
    IngestReport,
    _Bad,
    _parse_object,
    normalize_categories,
    normalize_id,
    normalize_rating,
    run_ingest,
    timestamp_micros,
)

UTC = dt.timezone.utc
STRICT = IngestConfig(max_bad_rows=0)


def _ts(*args: int) -> dt.datetime:
    # Spark returns naive datetimes in the session time zone, UTC in the tests' session.
    return dt.datetime(*args)


def _write(path: Path, text: str, encoding: str = "utf-8") -> str:
    data = text.encode(encoding)
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return str(path)


def _rows(wh, table: str, *cols: str) -> list[tuple]:
    df = wh.read(table)
    rows = [tuple(r) for r in df.select(*(cols or df.columns)).collect()]
    return sorted(rows, key=lambda r: [(v is None, "" if v is None else v) for v in r])


INTER = schemas.INTERACTIONS_SCHEMA


# --------------------------------------------------------------------------- pure helpers


def test_timestamp_micros_accepts_unix_seconds_and_iso_8601():
    second = 1_000_000
    assert timestamp_micros(1318896000) == 1318896000 * second
    assert timestamp_micros("1318896000") == 1318896000 * second
    assert timestamp_micros(" 1318896000.5 ") == 1318896000 * second + 500_000
    assert timestamp_micros(1318896000.25) == 1318896000 * second + 250_000
    assert timestamp_micros(Decimal("12.5")) == 12_500_000
    # Naive ISO strings and datetimes are UTC; offsets are honoured.
    assert timestamp_micros("1970-01-02") == 86_400 * second
    assert timestamp_micros("1970-01-01T01:00:00") == 3600 * second
    assert timestamp_micros("1970-01-01T01:00:00Z") == 3600 * second
    assert timestamp_micros("1970-01-01T03:00:00+02:00") == 3600 * second
    assert timestamp_micros(dt.datetime(1970, 1, 1, 0, 0, 1)) == second
    assert timestamp_micros(dt.date(1970, 1, 2)) == 86_400 * second


@pytest.mark.parametrize("value", ["yesterday", "2014-13-01", "", True, float("nan"), 10**17, [1]])
def test_timestamp_micros_rejects_garbage_and_out_of_range(value):
    # 10**17 seconds is far past year 9999: milliseconds passed as seconds land here.
    with pytest.raises((ValueError, TypeError)):
        timestamp_micros(value)


def test_normalize_id_casts_numbers_and_blanks():
    assert normalize_id(42) == "42"
    assert normalize_id(42.0) == "42"  # pandas turns int ids with gaps into floats
    assert normalize_id(" B00X ") == "B00X"
    assert normalize_id(Decimal("7")) == "7"
    assert normalize_id("") is None
    assert normalize_id(float("nan")) is None
    assert normalize_id(None) is None


def test_normalize_rating():
    assert normalize_rating("4") == 4.0
    assert normalize_rating(5) == 5.0
    assert normalize_rating("") is None
    assert normalize_rating(float("nan")) is None
    with pytest.raises(ValueError):
        normalize_rating("five")


def test_normalize_categories_flattens_dedupes_and_splits_pipes():
    nested = [["Beauty", "Makeup", "Face"], ["Beauty", "Makeup", "Lips"]]
    assert normalize_categories(nested) == ["Beauty", "Makeup", "Face", "Lips"]
    assert normalize_categories("Action|Comedy| |Action") == ["Action", "Comedy"]
    assert normalize_categories('["a", "b"]') == ["a", "b"]
    assert normalize_categories(None) == []


def test_parse_object_reads_json_and_python_literals_but_never_evaluates_code():
    assert _parse_object('{"asin": "A1", "x": [1, 2]}', literal=True) == {"asin": "A1", "x": [1, 2]}
    assert _parse_object("{'asin': 'A1', 'price': 3.5, 'ok': True}", literal=True) == {
        "asin": "A1", "price": 3.5, "ok": True,
    }
    with pytest.raises(_Bad, match="malformed line"):
        _parse_object("{'asin': __import__('os').getcwd()}", literal=True)
    with pytest.raises(_Bad, match="malformed line"):
        _parse_object("{'asin': 'A1'}", literal=False)  # JSON only in the files format
    with pytest.raises(_Bad) as info:
        _parse_object('[{"user_id": 1}]', literal=False)
    assert "one JSON object per line" in info.value.detail


def test_report_summary_names_tables_duplicates_and_skips():
    report = IngestReport(
        format="files",
        rows={"interactions": 1200, "items": 30, "users": 7},
        skipped={"interactions: null user_id": 2},
        first_skipped={"interactions: null user_id": "interactions file /d/e.csv line 9"},
        duplicates={"interactions": 3, "items": 0},
        derived=["users"],
    )
    text = str(report)
    assert "interactions 1,200" in text and "users 7 (derived)" in text
    assert "duplicates removed: interactions 3" in text
    assert "skipped 2 bad rows:\n    interactions: null user_id: 2 (first: interactions file /d/e.csv line 9)" in text
    assert "skipped" not in str(IngestReport(format="files", rows={"interactions": 1}))


# --------------------------------------------------------------------------- formats

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
    reviews = _write(tmp_path / "reviews_Beauty_5.json.gz", AMAZON_2014_REVIEWS)
    meta = _write(tmp_path / "meta_Beauty.json.gz", AMAZON_2014_META)

    report = run_ingest(spark, warehouse, "amazon", reviews, meta, None, STRICT)

    expected = spark.createDataFrame(
        [
            ("U1", "I1", _ts(2014, 1, 30), 5.0),
            ("U1", "I2", _ts(2014, 4, 18), 3.0),
            ("U2", "I1", _ts(2014, 4, 18), 4.0),
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
    assert _rows(warehouse, "users", "user_id") == [("U1",), ("U2",)]
    assert [r.attributes for r in warehouse.read("users").orderBy("user_id").collect()] == [{}, {}]
    assert report.rows == {"interactions": 3, "items": 2, "users": 2}
    assert report.derived == ["users"] and report.skipped == {}


@pytest.mark.spark
def test_amazon_2018_json_reviews_and_metadata(spark, warehouse, tmp_path):
    reviews = _write(
        tmp_path / "Beauty.json",
        "\n".join(json.dumps(r) for r in [
            {"overall": 5.0, "verified": True, "reviewerID": "U1", "asin": "B1",
             "unixReviewTime": 1520294400, "style": {"Size:": " 4 oz"}},
            # No unixReviewTime: the human date is used.
            {"overall": 2.0, "reviewerID": "U2", "asin": "B1", "reviewTime": "03 6, 2018"},
        ]) + "\n",
    )
    meta = _write(
        tmp_path / "meta_Beauty.json",
        json.dumps({"asin": "B1", "title": "Shampoo", "description": ["Clean hair.", "", "Smells nice."],
                    "category": ["Beauty", "Hair Care"], "brand": "Suds", "also_buy": ["B2"],
                    "main_cat": "All Beauty", "rank": ["1 in Beauty"]}) + "\n",
    )

    report = run_ingest(spark, warehouse, "amazon", reviews, meta, None, STRICT)

    assert _rows(warehouse, "interactions") == [
        ("U1", "B1", _ts(2018, 3, 6), 5.0),
        ("U2", "B1", _ts(2018, 3, 6), 2.0),
    ]
    (item,) = warehouse.read("items").collect()
    assert item.description == "Clean hair. Smells nice."
    assert item.categories == ["Beauty", "Hair Care"]
    assert item.attributes == {"main_cat": "All Beauty", "rank": '["1 in Beauty"]'}
    assert report.rows["users"] == 2


@pytest.mark.spark
def test_movielens_latin1_dat_files(spark, warehouse, tmp_path):
    ratings = _write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n",
                     "latin-1")
    movies = _write(
        tmp_path / "movies.dat",
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::Misérables, Les (1995)::Drama|Musical\n",
        "latin-1",
    )
    users = _write(tmp_path / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n",
                   "latin-1")

    report = run_ingest(spark, warehouse, "movielens", ratings, movies, users, STRICT)

    assert _rows(warehouse, "interactions") == [
        ("1", "1193", _ts(2000, 12, 31, 22, 12, 40), 5.0),
        ("1", "661", _ts(2000, 12, 31, 22, 35, 9), 3.0),
        ("2", "1193", _ts(2000, 12, 31, 21, 33, 33), 4.0),
    ]
    items = {r.item_id: r for r in warehouse.read("items").collect()}
    assert items["661"].title == "Misérables, Les (1995)"
    assert items["661"].categories == ["Drama", "Musical"]
    assert items["661"].attributes == {"year": "1995"}
    # The users file, not the interactions, decides the users (user 3 has no ratings).
    assert _rows(warehouse, "users", "user_id") == [("1",), ("2",), ("3",)]
    first = warehouse.read("users").where("user_id = '1'").first()
    assert first.attributes["gender"] == "F" and first.attributes["zip_code"] == "48067"
    assert report.derived == []


@pytest.mark.spark
def test_files_csv_with_iso_and_unix_timestamps_and_item_attributes(spark, warehouse, tmp_path):
    inter = _write(
        tmp_path / "interactions.csv",
        "user_id,item_id,timestamp,rating\n"
        "u1,i1,1400000000,4\n"
        "u1,i2,2014-05-14T00:00:00Z,\n"
        "\n"  # a blank line is not a row
        "u2,i1,2014-05-14 02:00:00+02:00,5\n"
        "u2,i2,2014-05-15,1.5\n",
    )
    items = _write(
        tmp_path / "items.csv",
        "item_id,title,categories,brand,price,color\n"
        'i1,"Soap, lavender",Bath|Soap|Bath,Acme,3.5,purple\n'
        "i2,Towel,,,,\n",
    )

    report = run_ingest(spark, warehouse, "files", inter, items, None, STRICT)

    assert _rows(warehouse, "interactions") == [
        ("u1", "i1", _ts(2014, 5, 13, 16, 53, 20), 4.0),
        ("u1", "i2", _ts(2014, 5, 14), None),
        ("u2", "i1", _ts(2014, 5, 14), 5.0),
        ("u2", "i2", _ts(2014, 5, 15), 1.5),
    ]
    items = {r.item_id: r for r in warehouse.read("items").collect()}
    assert items["i1"].title == "Soap, lavender"
    assert items["i1"].categories == ["Bath", "Soap"]
    assert items["i1"].attributes == {"price": "3.5", "color": "purple"}
    assert items["i2"].brand is None and items["i2"].categories == [] and items["i2"].attributes == {}
    assert report.rows == {"interactions": 4, "items": 2, "users": 2}


@pytest.mark.spark
def test_files_csv_gz_and_json_lines_items_with_lists_and_extra_keys(spark, warehouse, tmp_path):
    inter = _write(tmp_path / "interactions.csv.gz", "user_id,item_id,timestamp\n7,100,1400000000\n8,101,1400000001\n")
    items = _write(
        tmp_path / "items.jsonl",
        json.dumps({"item_id": 100, "title": "Mug", "categories": ["Kitchen", "Cups"], "price": 9.99,
                    "dims": {"h": 10}, "in_stock": True}) + "\n"
        + json.dumps({"item_id": "101", "title": None, "categories": "Kitchen|Pans"}) + "\n",
    )

    run_ingest(spark, warehouse, "files", inter, items, None, STRICT)

    assert _rows(warehouse, "interactions", "user_id", "item_id") == [("7", "100"), ("8", "101")]
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
    users = _write(tmp_path / "users.csv", "user_id,country\n1,NL\n2,FR\n")

    run_ingest(spark, warehouse, "files", inter, items, users, STRICT)

    assert _rows(warehouse, "interactions") == [
        ("1", "10", _ts(2014, 5, 13, 16, 53, 20), 4.0),
        ("1", "11", _ts(2014, 5, 13, 16, 55), None),
        ("2", "10", _ts(2014, 5, 13, 16, 56, 40), 2.0),
    ]
    items = {r.item_id: r for r in warehouse.read("items").collect()}
    assert items["10"].attributes == {"price": "1.25"}
    assert items["11"].categories == ["Office", "Refills"] and items["11"].attributes == {}
    assert _rows(warehouse, "users", "user_id") == [("1",), ("2",)]


@pytest.mark.spark
def test_parquet_timestamp_column_is_kept_as_an_instant(spark, warehouse, tmp_path):
    inter = str(tmp_path / "events")
    spark.createDataFrame(
        [("u", "i", dt.datetime(2020, 1, 2, 3, 4, 5))], "user_id string, item_id string, timestamp timestamp"
    ).write.parquet(inter)

    run_ingest(spark, warehouse, "files", inter, None, None, STRICT)

    assert _rows(warehouse, "interactions") == [("u", "i", _ts(2020, 1, 2, 3, 4, 5), None)]
    assert _rows(warehouse, "items", "item_id", "title") == [("i", None)]  # derived: ids only


# --------------------------------------------------------------------------- bad input


def _bad_jsonl(tmp_path: Path) -> str:
    return _write(
        tmp_path / "events.jsonl",
        '{"user_id": "u1", "item_id": "i1", "timestamp": 1400000000}\n'
        '{"user_id": "u1", "item_id": "i2", "timestamp": 1400000001}\n'
        '{"user_id": "u2", "item_id": "i1", "timestamp": 14000\n',
    )


@pytest.mark.spark
def test_malformed_line_error_names_file_and_line(spark, warehouse, tmp_path):
    path = _bad_jsonl(tmp_path)
    with pytest.raises(InputError) as info:
        run_ingest(spark, warehouse, "files", path, None, None, STRICT)
    msg = str(info.value)
    assert f"interactions file {path} line 3: malformed line" in msg
    assert "\n" not in msg
    assert not warehouse.exists("interactions")


@pytest.mark.spark
def test_line_numbers_are_exact_across_splits_of_a_large_file(spark, warehouse, tmp_path):
    lines = [json.dumps({"user_id": f"u{i}", "item_id": "i", "timestamp": 1400000000 + i}) for i in range(300)]
    lines[240] = "{oops"
    path = _write(tmp_path / "events.json", "\n".join(lines) + "\n")
    old = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "2048")
    try:
        assert spark.read.text(path).rdd.getNumPartitions() > 3  # really split
        with pytest.raises(InputError, match=r"events\.json line 241: malformed line"):
            run_ingest(spark, warehouse, "files", path, None, None, STRICT)
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", old)


@pytest.mark.spark
def test_missing_required_column_is_a_schema_error_naming_it(spark, warehouse, tmp_path):
    csv_path = _write(tmp_path / "events.csv", "user_id,item_id,time\nu,i,1\n")
    with pytest.raises(SchemaError, match=r"interactions file .*events\.csv: missing column 'timestamp'"):
        run_ingest(spark, warehouse, "files", csv_path, None, None, STRICT)
    pq = str(tmp_path / "items.parquet")
    spark.createDataFrame([("i", "x")], "item_id string, name string").toPandas().to_parquet(pq)
    ok = _write(tmp_path / "ok.csv", "user_id,item_id,timestamp\nu,i,1\n")
    with pytest.raises(SchemaError, match=r"items file .*items\.parquet: missing column 'title'"):
        run_ingest(spark, warehouse, "files", ok, pq, None, STRICT)


@pytest.mark.spark
def test_null_id_and_unparseable_timestamp_name_line_and_column(spark, warehouse, tmp_path):
    path = _write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu1,i1,1400000000\n,i2,1400000000\n")
    with pytest.raises(InputError, match=r"events\.csv line 3: null user_id"):
        run_ingest(spark, warehouse, "files", path, None, None, STRICT)
    path = _write(tmp_path / "events2.csv", "user_id,item_id,timestamp\nu1,i1,last tuesday\n")
    with pytest.raises(InputError, match=r"events2\.csv line 2: unparseable timestamp \('last tuesday'"):
        run_ingest(spark, warehouse, "files", path, None, None, STRICT)
    pq = str(tmp_path / "events.parquet")
    spark.createDataFrame([("u", None, 1)], "user_id string, item_id string, timestamp long").toPandas().to_parquet(pq)
    with pytest.raises(InputError, match=r"events\.parquet row 1: null item_id"):
        run_ingest(spark, warehouse, "files", pq, None, None, STRICT)


MIXED_BAD = (
    "user_id,item_id,timestamp,rating\n"
    "u1,i1,1400000000,5\n"
    "u1,i2,1400000001,4,extra\n"  # malformed: 5 fields
    "u2,,1400000002,3\n"  # null item_id
    "u2,i3,soon,1\n"  # unparseable timestamp
    "u3,i1,1400000003,\n"
)


@pytest.mark.spark
def test_bad_rows_up_to_max_are_skipped_and_reported_per_reason(spark, warehouse, tmp_path):
    path = _write(tmp_path / "events.csv", MIXED_BAD)

    report = run_ingest(spark, warehouse, "files", path, None, None, IngestConfig(max_bad_rows=3))

    assert report.skipped == {
        "interactions: malformed line": 1,
        "interactions: null item_id": 1,
        "interactions: unparseable timestamp": 1,
    }
    assert report.first_skipped["interactions: null item_id"] == f"interactions file {path} line 4"
    assert _rows(warehouse, "interactions", "user_id", "item_id") == [("u1", "i1"), ("u3", "i1")]
    assert report.rows["interactions"] == 2
    assert "skipped 3 bad rows" in str(report)


@pytest.mark.spark
def test_more_bad_rows_than_allowed_fails_naming_the_first(spark, warehouse, tmp_path):
    path = _write(tmp_path / "events.csv", MIXED_BAD)
    with pytest.raises(InputError) as info:
        run_ingest(spark, warehouse, "files", path, None, None, IngestConfig(max_bad_rows=2))
    msg = str(info.value)
    assert "events.csv line 3: malformed line (5 CSV fields, header has 4)" in msg
    assert "3 bad rows in all" in msg and "more than ingest.max_bad_rows=2" in msg
    assert not warehouse.exists("interactions")


@pytest.mark.spark
def test_missing_file_unknown_kind_and_bad_gzip_are_clear_errors(spark, warehouse, tmp_path):
    missing = str(tmp_path / "nope.csv")
    with pytest.raises(InputError, match=f"interactions file {missing}: not found"):
        run_ingest(spark, warehouse, "files", missing, None, None, STRICT)
    ok = _write(tmp_path / "ok.csv", "user_id,item_id,timestamp\nu,i,1\n")
    with pytest.raises(InputError, match=r"items file .*nope\.jsonl: not found"):
        run_ingest(spark, warehouse, "files", ok, str(tmp_path / "nope.jsonl"), None, STRICT)
    xlsx = _write(tmp_path / "events.xlsx", "x")
    with pytest.raises(InputError, match="unknown file kind"):
        run_ingest(spark, warehouse, "files", xlsx, None, None, STRICT)
    fake_gz = tmp_path / "events.csv.gz"
    fake_gz.write_text("user_id,item_id,timestamp\nu,i,1\n")  # not gzip at all
    with pytest.raises(InputError, match=r"events\.csv\.gz"):
        run_ingest(spark, warehouse, "files", str(fake_gz), None, None, STRICT)
    header_only = _write(tmp_path / "empty.csv", "user_id,item_id,timestamp\n")
    with pytest.raises(InputError, match=r"empty\.csv: no usable rows"):
        run_ingest(spark, warehouse, "files", header_only, None, None, STRICT)
    with pytest.raises(ConfigError):
        run_ingest(spark, warehouse, "files", ok, None, None, IngestConfig(max_bad_rows=-1))


# --------------------------------------------------------------------------- duplicates, failure, rerun


@pytest.mark.spark
def test_exact_duplicate_events_are_removed_and_counted(spark, warehouse, tmp_path):
    inter = _write(
        tmp_path / "events.csv",
        "user_id,item_id,timestamp,rating\n"
        "u1,i1,1400000000,5\n"
        "u1,i1,1400000000,5\n"  # exact duplicate
        "u1,i1,2014-05-13T16:53:20Z,5\n"  # the same instant written as ISO: also a duplicate
        "u1,i1,1400000000,4\n"  # another rating: a different event
        "u1,i1,1400000000,\n"
        "u1,i1,1400000000,\n",  # duplicate with no rating
    )
    items = _write(
        tmp_path / "items.jsonl",
        '{"item_id": "i1", "title": "first"}\n{"item_id": "i1", "title": "second"}\n',
    )

    report = run_ingest(spark, warehouse, "files", inter, items, None, STRICT)

    assert _rows(warehouse, "interactions", "rating") == [(4.0,), (5.0,), (None,)]
    assert report.rows["interactions"] == 3
    assert report.duplicates == {"interactions": 3, "items": 1}
    assert _rows(warehouse, "items", "item_id", "title") == [("i1", "first")]  # the first occurrence


def _good_files(tmp_path: Path) -> tuple[str, str]:
    inter = _write(tmp_path / "events.csv", "user_id,item_id,timestamp\nu1,i1,1400000000\nu2,i1,1400000001\n")
    items = _write(tmp_path / "items.csv", "item_id,title\ni1,Lamp\n")
    return inter, items


def _snapshot(wh) -> dict:
    return {t: (wh.version(t), _rows(wh, t, *schemas.SCHEMAS[t].fieldNames()[:2]))
            for t in ("interactions", "items", "users")}


@pytest.mark.spark
def test_failed_ingest_leaves_existing_tables_as_they_were(spark, warehouse, tmp_path, monkeypatch):
    inter, items = _good_files(tmp_path)
    run_ingest(spark, warehouse, "files", inter, items, None, STRICT)
    before = _snapshot(warehouse)

    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    with pytest.raises(InputError):
        run_ingest(spark, warehouse, "files", _bad_jsonl(bad_dir), items, None, STRICT)
    assert _snapshot(warehouse) == before

    # A failure while writing (after interactions and items were replaced) puts them back.
    original = warehouse.write

    def write_then_fail_on_users(df, table, **kwargs):
        if table == "users":
            raise RuntimeError("disk full")
        return original(df, table, **kwargs)

    monkeypatch.setattr(warehouse, "write", write_then_fail_on_users)
    other = _write(bad_dir / "other.csv", "user_id,item_id,timestamp\nz9,i1,1400000000\n")
    with pytest.raises(RuntimeError, match="disk full"):
        run_ingest(spark, warehouse, "files", other, items, None, STRICT)
    monkeypatch.undo()
    after = _snapshot(warehouse)
    assert {t: rows for t, (_, rows) in after.items()} == {t: rows for t, (_, rows) in before.items()}


@pytest.mark.spark
def test_rerun_replaces_instead_of_appending(spark, warehouse, tmp_path):
    inter, items = _good_files(tmp_path)
    first = run_ingest(spark, warehouse, "files", inter, items, None, STRICT)
    tables = {t: _rows(warehouse, t) for t in ("interactions", "items", "users")}

    second = run_ingest(spark, warehouse, "files", inter, items, None, STRICT)

    assert {t: _rows(warehouse, t) for t in tables} == tables
    assert first.rows == second.rows == {"interactions": 2, "items": 1, "users": 2}
