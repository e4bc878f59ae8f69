"""The ingest stage as a whole: duplicates removed and counted, a failed ingest leaves the
tables as they were, a rerun replaces them."""
from __future__ import annotations

from pathlib import Path

import pytest
from ingest_helpers import STRICT, bad_jsonl, table_rows, write_file
from longtail.core import schemas
from longtail.core.errors import InputError
from longtail.stages.ingest import run_ingest


@pytest.mark.spark
def test_exact_duplicate_events_are_removed_and_counted(spark, warehouse, tmp_path):
    inter = write_file(
        tmp_path / "events.csv",
        "user_id,item_id,timestamp,rating\n"
        "u1,i1,1400000000,5\n"
        "u1,i1,1400000000,5\n"  # exact duplicate
        "u1,i1,2014-05-13T16:53:20Z,5\n"  # the same instant written as ISO: also a duplicate
        "u1,i1,1400000000,4\n"  # another rating: a different event
        "u1,i1,1400000000,\n"
        "u1,i1,1400000000,\n",  # duplicate with no rating
    )
    items = write_file(
        tmp_path / "items.jsonl",
        '{"item_id": "i1", "title": "first"}\n{"item_id": "i1", "title": "second"}\n',
    )

    report = run_ingest(spark, warehouse, "files", inter, items, None, STRICT)

    assert table_rows(warehouse, "interactions", "rating") == [(4.0,), (5.0,), (None,)]
    assert report.rows["interactions"] == 3
    assert report.duplicates == {"interactions": 3, "items": 1}
    assert table_rows(warehouse, "items", "item_id", "title") == [("i1", "first")]  # the first occurrence


def _good_files(tmp_path: Path) -> tuple[str, str]:
    inter = write_file(tmp_path / "events.csv", "user_id,item_id,timestamp\nu1,i1,1400000000\nu2,i1,1400000001\n")
    items = write_file(tmp_path / "items.csv", "item_id,title\ni1,Lamp\n")
    return inter, items


def _snapshot(wh) -> dict:
    return {t: (wh.version(t), table_rows(wh, t, *schemas.SCHEMAS[t].fieldNames()[:2]))
            for t in ("interactions", "items", "users")}


@pytest.mark.spark
def test_failed_ingest_leaves_existing_tables_as_they_were(spark, warehouse, tmp_path, monkeypatch):
    inter, items = _good_files(tmp_path)
    run_ingest(spark, warehouse, "files", inter, items, None, STRICT)
    before = _snapshot(warehouse)

    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    with pytest.raises(InputError):
        run_ingest(spark, warehouse, "files", bad_jsonl(bad_dir), items, None, STRICT)
    assert _snapshot(warehouse) == before

    # A failure while writing (after interactions and items were replaced) puts them back.
    original = warehouse.write

    def write_then_fail_on_users(df, table, **kwargs):
        if table == "users":
            raise RuntimeError("disk full")
        return original(df, table, **kwargs)

    monkeypatch.setattr(warehouse, "write", write_then_fail_on_users)
    other = write_file(bad_dir / "other.csv", "user_id,item_id,timestamp\nz9,i1,1400000000\n")
    with pytest.raises(RuntimeError, match="disk full"):
        run_ingest(spark, warehouse, "files", other, items, None, STRICT)
    monkeypatch.undo()
    after = _snapshot(warehouse)
    assert {t: rows for t, (_, rows) in after.items()} == {t: rows for t, (_, rows) in before.items()}


@pytest.mark.spark
def test_rerun_replaces_instead_of_appending(spark, warehouse, tmp_path):
    inter, items = _good_files(tmp_path)
    first = run_ingest(spark, warehouse, "files", inter, items, None, STRICT)
    tables = {t: table_rows(warehouse, t) for t in ("interactions", "items", "users")}

    second = run_ingest(spark, warehouse, "files", inter, items, None, STRICT)

    assert {t: table_rows(warehouse, t) for t in tables} == tables
    assert first.rows == second.rows == {"interactions": 2, "items": 1, "users": 2}
