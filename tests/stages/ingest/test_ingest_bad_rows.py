"""Bad rows: the error names the file and line (or row), exact across a file's splits; up to
``max_bad_rows`` are skipped and reported per reason, more fail the job before anything is
written."""
from __future__ import annotations

import json

import pytest
from ingest_helpers import STRICT, bad_jsonl, table_rows, write_file
from longtail.core.config import IngestConfig
from longtail.core.errors import InputError
from longtail.stages.ingest import run_ingest


@pytest.mark.spark
def test_malformed_line_error_names_file_and_line(spark, warehouse, tmp_path):
    path = bad_jsonl(tmp_path)
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
    path = write_file(tmp_path / "events.json", "\n".join(lines) + "\n")
    old = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "2048")
    try:
        assert spark.read.text(path).rdd.getNumPartitions() > 3  # really split
        with pytest.raises(InputError, match=r"events\.json line 241: malformed line"):
            run_ingest(spark, warehouse, "files", path, None, None, STRICT)
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", old)


@pytest.mark.spark
def test_null_id_and_unparseable_timestamp_name_line_and_column(spark, warehouse, tmp_path):
    path = write_file(tmp_path / "events.csv", "user_id,item_id,timestamp\nu1,i1,1400000000\n,i2,1400000000\n")
    with pytest.raises(InputError, match=r"events\.csv line 3: null user_id"):
        run_ingest(spark, warehouse, "files", path, None, None, STRICT)
    path = write_file(tmp_path / "events2.csv", "user_id,item_id,timestamp\nu1,i1,last tuesday\n")
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
    path = write_file(tmp_path / "events.csv", MIXED_BAD)

    report = run_ingest(spark, warehouse, "files", path, None, None, IngestConfig(max_bad_rows=3))

    assert report.skipped == {
        "interactions: malformed line": 1,
        "interactions: null item_id": 1,
        "interactions: unparseable timestamp": 1,
    }
    assert report.first_skipped["interactions: null item_id"] == f"interactions file {path} line 4"
    assert table_rows(warehouse, "interactions", "user_id", "item_id") == [("u1", "i1"), ("u3", "i1")]
    assert report.rows["interactions"] == 2
    assert "skipped 3 bad rows" in str(report)


@pytest.mark.spark
def test_more_bad_rows_than_allowed_fails_naming_the_first(spark, warehouse, tmp_path):
    path = write_file(tmp_path / "events.csv", MIXED_BAD)
    with pytest.raises(InputError) as info:
        run_ingest(spark, warehouse, "files", path, None, None, IngestConfig(max_bad_rows=2))
    msg = str(info.value)
    assert "events.csv line 3: malformed line (5 CSV fields, header has 4)" in msg
    assert "3 bad rows in all" in msg and "more than ingest.max_bad_rows=2" in msg
    assert not warehouse.exists("interactions")
