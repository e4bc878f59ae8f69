"""Schema checks at the edges: columns and types, named in the error."""
from __future__ import annotations

import pytest
from longtail.core import schemas
from longtail.core.errors import SchemaError
from pyspark.sql import types as T

pytestmark = pytest.mark.spark


def test_conform_selects_contract_columns_in_order(spark):
    df = spark.createDataFrame(
        [("i1", "u1", None, 4.0, "extra")],
        "item_id string, user_id string, ts timestamp, rating double, note string",
    )
    out = schemas.conform(df, schemas.INTERACTIONS)
    assert out.columns == ["user_id", "item_id", "ts", "rating"]


def test_missing_column_is_named(spark):
    df = spark.createDataFrame([("u1", "i1")], "user_id string, item_id string")
    with pytest.raises(SchemaError, match=r"table interactions: missing column 'ts'"):
        schemas.conform(df, schemas.INTERACTIONS)


def test_wrong_type_is_named(spark):
    df = spark.createDataFrame([("u1", "i1", 5, 1.0)], "user_id string, item_id string, ts long, rating double")
    with pytest.raises(SchemaError, match=r"column 'ts' is bigint, expected timestamp"):
        schemas.require_columns(df, schemas.INTERACTIONS_SCHEMA, "interactions")


def test_nullability_is_not_compared(spark):
    schema = T.StructType([T.StructField("user_id", T.StringType(), False),
                           T.StructField("neighbors", T.ArrayType(T.StringType(), False), False),
                           T.StructField("similarities", T.ArrayType(T.FloatType(), False), True)])
    df = spark.createDataFrame([("u", ["a"], [1.0])], schema)
    schemas.require_columns(df, schemas.SIMILAR_USERS_SCHEMA, "similar_users")


def test_every_table_schema_is_all_nullable():
    for name, schema in schemas.SCHEMAS.items():
        assert all(f.nullable for f in schema.fields), name
