"""Planning and checking sources: missing files and columns, unknown kinds, unreadable gzip,
empty input and bad options are clear errors."""
from __future__ import annotations

import pytest
from ingest_helpers import STRICT, write_file
from longtail.core.config import IngestConfig
from longtail.core.errors import ConfigError, InputError, SchemaError
from longtail.stages.ingest import run_ingest


@pytest.mark.spark
def test_missing_required_column_is_a_schema_error_naming_it(spark, warehouse, tmp_path):
    csv_path = write_file(tmp_path / "events.csv", "user_id,item_id,time\nu,i,1\n")
    with pytest.raises(SchemaError, match=r"interactions file .*events\.csv: missing column 'timestamp'"):
        run_ingest(spark, warehouse, "files", csv_path, None, None, STRICT)
    pq = str(tmp_path / "items.parquet")
    spark.createDataFrame([("i", "x")], "item_id string, name string").toPandas().to_parquet(pq)
    ok = write_file(tmp_path / "ok.csv", "user_id,item_id,timestamp\nu,i,1\n")
    with pytest.raises(SchemaError, match=r"items file .*items\.parquet: missing column 'title'"):
        run_ingest(spark, warehouse, "files", ok, pq, None, STRICT)


@pytest.mark.spark
def test_missing_file_unknown_kind_and_bad_gzip_are_clear_errors(spark, warehouse, tmp_path):
    missing = str(tmp_path / "nope.csv")
    with pytest.raises(InputError, match=f"interactions file {missing}: not found"):
        run_ingest(spark, warehouse, "files", missing, None, None, STRICT)
    ok = write_file(tmp_path / "ok.csv", "user_id,item_id,timestamp\nu,i,1\n")
    with pytest.raises(InputError, match=r"items file .*nope\.jsonl: not found"):
        run_ingest(spark, warehouse, "files", ok, str(tmp_path / "nope.jsonl"), None, STRICT)
    xlsx = write_file(tmp_path / "events.xlsx", "x")
    with pytest.raises(InputError, match="unknown file kind"):
        run_ingest(spark, warehouse, "files", xlsx, None, None, STRICT)
    fake_gz = tmp_path / "events.csv.gz"
    fake_gz.write_text("user_id,item_id,timestamp\nu,i,1\n")  # not gzip at all
    with pytest.raises(InputError, match=r"events\.csv\.gz"):
        run_ingest(spark, warehouse, "files", str(fake_gz), None, None, STRICT)
    header_only = write_file(tmp_path / "empty.csv", "user_id,item_id,timestamp\n")
    with pytest.raises(InputError, match=r"empty\.csv: no usable rows"):
        run_ingest(spark, warehouse, "files", header_only, None, None, STRICT)
    with pytest.raises(ConfigError):
        run_ingest(spark, warehouse, "files", ok, None, None, IngestConfig(max_bad_rows=-1))
