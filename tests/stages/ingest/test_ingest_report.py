"""The summary text of :class:`IngestReport`."""
from __future__ import annotations

from longtail.stages.ingest import IngestReport


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
