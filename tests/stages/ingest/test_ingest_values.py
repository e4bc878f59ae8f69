"""The pure normalisers of ingest (``longtail.stages.ingest.values``): no Spark."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from longtail.stages.ingest import (
    normalize_categories,
    normalize_id,
    normalize_rating,
    timestamp_micros,
)


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
