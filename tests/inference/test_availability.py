"""Availability rules (``availability.table``): which items a run date excludes, and one-line errors."""
from __future__ import annotations

import datetime as dt

import pytest
from longtail.core.errors import SchemaError, TableNotFoundError
from longtail.inference.availability import Availability, read_availability
from pyspark.sql import types as T

pytestmark = pytest.mark.spark

D = dt.date(2024, 5, 10)
RULES = T.StructType([
    T.StructField("item_id", T.StringType()), T.StructField("available", T.BooleanType()),
    T.StructField("valid_from", T.DateType()), T.StructField("valid_to", T.TimestampType()),
    T.StructField("market", T.StringType()),  # further columns are allowed
])


def _ts(day: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(2024, 5, day, hour, tzinfo=dt.timezone.utc)


def test_rules_in_force_on_the_run_date_decide_and_unavailable_wins(warehouse):
    rows = [
        ("out", False, None, None, "de"),                       # always out
        ("later", False, dt.date(2024, 5, 11), None, "de"),     # not yet in force
        ("today", False, dt.date(2024, 5, 10), None, "de"),     # from the run date on (inclusive)
        ("ended", False, None, _ts(10), "de"),                  # ended at the start of the run date (exclusive)
        ("ending", False, None, _ts(10, 12), "de"),             # still in force at the start of the date
        ("both", True, None, None, "de"), ("both", False, None, None, "fr"),  # conflicting: the safe side
        ("null", None, None, None, "de"),                       # unknown: not available
        ("back", True, None, None, "de"),                       # available: nothing to exclude
        (None, False, None, None, "de"),                        # no item: ignored
    ]
    warehouse.write(warehouse.spark.createDataFrame(rows, RULES), "availability")
    rules = read_availability(warehouse, "availability", D)
    assert rules.unavailable == {"out", "today", "ending", "both", "null"}
    assert rules.mask(["", "out", "back", "today"]).tolist() == [False, True, False, True]
    # The same table by path (another folder than the warehouse), with only the required columns.
    other = warehouse.path("elsewhere")
    warehouse.write(warehouse.spark.createDataFrame([("x", False)], "item_id string, available boolean"), "elsewhere")
    assert read_availability(warehouse, other, D).unavailable == {"x"}
    assert read_availability(warehouse, None, D) == Availability()
    assert not Availability().mask(["", "a"]).any()


@pytest.mark.parametrize(
    "schema, error, message",
    [
        (None, TableNotFoundError, r"config key availability.table: no Delta table 'availability'"),
        ("item_id string, in_stock boolean", SchemaError, r"table 'availability' has no column 'available'"),
        ("item_id string, available string", SchemaError, r"column 'available' is string, expected boolean"),
        ("item_id string, available boolean, valid_to string", SchemaError,
         r"column 'valid_to' is string, expected date or timestamp"),
    ],
)
def test_a_missing_table_or_column_or_a_wrong_type_is_one_line(warehouse, schema, error, message):
    if schema is not None:
        warehouse.write(warehouse.spark.createDataFrame([], schema), "availability")
    with pytest.raises(error, match=message) as raised:
        read_availability(warehouse, "availability", D)
    assert "\n" not in str(raised.value)
