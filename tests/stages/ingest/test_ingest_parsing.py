"""Line parsing of ingest (``longtail.stages.ingest.parsing``), without Spark."""
from __future__ import annotations

import pytest
from longtail.stages.ingest.parsing import parse_object
from longtail.stages.ingest.values import Bad


def test_parse_object_reads_json_and_python_literals_but_never_evaluates_code():
    assert parse_object('{"asin": "A1", "x": [1, 2]}', literal=True) == {"asin": "A1", "x": [1, 2]}
    assert parse_object("{'asin': 'A1', 'price': 3.5, 'ok': True}", literal=True) == {
        "asin": "A1", "price": 3.5, "ok": True,
    }
    with pytest.raises(Bad, match="malformed line"):
        parse_object("{'asin': __import__('os').getcwd()}", literal=True)
    with pytest.raises(Bad, match="malformed line"):
        parse_object("{'asin': 'A1'}", literal=False)  # JSON only in the files format
    with pytest.raises(Bad) as info:
        parse_object('[{"user_id": 1}]', literal=False)
    assert "one JSON object per line" in info.value.detail
