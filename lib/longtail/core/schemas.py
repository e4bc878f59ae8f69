"""Table names, column names and schemas of the contract (``docs/contracts.md``), in one place.

Schemas are checked at the edges: when a table is read as a stage's input and before a
stage writes its output. Checks look at columns and types only, never at the data.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longtail.core.errors import SchemaError

# Table names (directories under the warehouse).
INTERACTIONS = "interactions"
ITEMS = "items"
USERS = "users"
USER_SEQUENCES = "user_sequences"
ITEM_STATS = "item_stats"
USER_STATS = "user_stats"
ITEM_EMBEDDINGS = "item_embeddings"
ITEM_EMBEDDINGS_PCA = "item_embeddings_pca"
USER_EMBEDDINGS = "user_embeddings"
SIMILAR_USERS = "similar_users"
RECOMMENDATIONS = "recommendations"
EVALUATION = "evaluation"
MODELS = "models"
RECOMMENDATION_RUNS = "recommendation_runs"
SIMILAR_ITEMS = "similar_items"
# Append-only id maps that keep user_idx / item_idx stable across reruns.
USER_IDS = "_user_ids"
ITEM_IDS = "_item_ids"

HEAD = "head"
TAIL = "tail"


def _s(*fields: tuple[str, T.DataType]) -> T.StructType:
    # Every field nullable: Spark hands writers nullable fields, and appends to a table
    # created with non-nullable fields would fail.
    return T.StructType([T.StructField(n, t, True) for n, t in fields])


INTERACTIONS_SCHEMA = _s(
    ("user_id", T.StringType()),
    ("item_id", T.StringType()),
    ("ts", T.TimestampType()),
    ("rating", T.DoubleType()),
)

ITEMS_SCHEMA = _s(
    ("item_id", T.StringType()),
    ("title", T.StringType()),
    ("description", T.StringType()),
    ("categories", T.ArrayType(T.StringType(), True)),
    ("brand", T.StringType()),
    # Further columns of the raw item file, kept as strings.
    ("attributes", T.MapType(T.StringType(), T.StringType(), True)),
)

USERS_SCHEMA = _s(
    ("user_id", T.StringType()),
    # Further columns of the raw user file (e.g. MovieLens gender, age), kept as strings.
    ("attributes", T.MapType(T.StringType(), T.StringType(), True)),
)

USER_SEQUENCES_SCHEMA = _s(
    ("user_id", T.StringType()),
    ("user_idx", T.IntegerType()),
    # The whole (filtered, truncated) history, oldest first.
    ("item_idxs", T.ArrayType(T.IntegerType(), True)),
    # Leave-one-out split of item_idxs: all but the last two / second-last / last.
    ("train_item_idxs", T.ArrayType(T.IntegerType(), True)),
    ("valid_item_idx", T.IntegerType()),
    ("test_item_idx", T.IntegerType()),
)

ITEM_STATS_SCHEMA = _s(
    ("item_id", T.StringType()),
    ("item_idx", T.IntegerType()),
    # Interactions in the training part of the sequences only.
    ("popularity", T.LongType()),
    ("segment", T.StringType()),
)

USER_STATS_SCHEMA = _s(
    ("user_id", T.StringType()),
    ("user_idx", T.IntegerType()),
    ("length", T.IntegerType()),
    ("segment", T.StringType()),
)

ID_MAP_USERS_SCHEMA = _s(("user_id", T.StringType()), ("user_idx", T.IntegerType()))
ID_MAP_ITEMS_SCHEMA = _s(("item_id", T.StringType()), ("item_idx", T.IntegerType()))

ITEM_EMBEDDINGS_SCHEMA = _s(
    ("item_id", T.StringType()),
    ("embedding", T.ArrayType(T.FloatType(), True)),
    ("model", T.StringType()),
    ("text_hash", T.StringType()),
)

ITEM_EMBEDDINGS_PCA_SCHEMA = _s(
    ("item_id", T.StringType()),
    ("embedding", T.ArrayType(T.FloatType(), True)),
    ("model", T.StringType()),
)

USER_EMBEDDINGS_SCHEMA = _s(
    ("user_id", T.StringType()),
    ("embedding", T.ArrayType(T.FloatType(), True)),
    ("model", T.StringType()),
    ("text_hash", T.StringType()),
)

SIMILAR_USERS_SCHEMA = _s(
    ("user_id", T.StringType()),
    ("neighbors", T.ArrayType(T.StringType(), True)),
    ("similarities", T.ArrayType(T.FloatType(), True)),
)

RECOMMENDATIONS_SCHEMA = _s(
    ("user_id", T.StringType()),
    ("rank", T.IntegerType()),
    ("item_id", T.StringType()),
    ("score", T.FloatType()),
    ("model", T.StringType()),
    ("model_version", T.StringType()),
    # True where the user had no usable history and got the popularity fallback.
    ("fallback", T.BooleanType()),
    ("run_date", T.DateType()),
    ("generated_at", T.TimestampType()),
)

RECOMMENDATION_RUNS_SCHEMA = _s(
    ("run_date", T.DateType()),
    ("model", T.StringType()),
    ("model_version", T.StringType()),
    ("users", T.LongType()),
    ("coverage", T.DoubleType()),
    ("tail_share", T.DoubleType()),
    ("diversity", T.DoubleType()),
    ("started_at", T.TimestampType()),
    ("finished_at", T.TimestampType()),
    # Catalogue items the availability table (availability.table) kept out of the run's lists
    # (added with the availability rules; null in rows written before).
    ("unavailable_items", T.LongType()),
)

SIMILAR_ITEMS_SCHEMA = _s(
    ("item_id", T.StringType()),
    ("rank", T.IntegerType()),
    ("similar_item_id", T.StringType()),
    ("score", T.FloatType()),
    # collaborative, semantic or blend (SIMILAR_SOURCES).
    ("source", T.StringType()),
    ("model", T.StringType()),
    ("model_version", T.StringType()),
    ("run_date", T.DateType()),
    ("generated_at", T.TimestampType()),
)

#: The ``source`` values of ``similar_items``, in the order they are written.
SIMILAR_SOURCES = ("collaborative", "semantic", "blend")

MODELS_SCHEMA = _s(
    ("model", T.StringType()),
    ("model_version", T.StringType()),
    ("path", T.StringType()),
    ("trained_at", T.TimestampType()),
    ("best_epoch", T.IntegerType()),
    ("valid_ndcg10", T.DoubleType()),
    ("valid_hr10", T.DoubleType()),
    ("seconds_per_epoch", T.DoubleType()),
    ("processes", T.IntegerType()),
    ("seed", T.LongType()),
)

EVALUATION_SCHEMA = _s(
    ("model", T.StringType()),
    ("model_version", T.StringType()),
    ("protocol", T.StringType()),
    ("segment", T.StringType()),
    ("metric", T.StringType()),
    ("value", T.DoubleType()),
    ("evaluated_at", T.TimestampType()),
)

#: Contract schema of each table.
SCHEMAS: dict[str, T.StructType] = {
    INTERACTIONS: INTERACTIONS_SCHEMA,
    ITEMS: ITEMS_SCHEMA,
    USERS: USERS_SCHEMA,
    USER_SEQUENCES: USER_SEQUENCES_SCHEMA,
    ITEM_STATS: ITEM_STATS_SCHEMA,
    USER_STATS: USER_STATS_SCHEMA,
    USER_IDS: ID_MAP_USERS_SCHEMA,
    ITEM_IDS: ID_MAP_ITEMS_SCHEMA,
    ITEM_EMBEDDINGS: ITEM_EMBEDDINGS_SCHEMA,
    ITEM_EMBEDDINGS_PCA: ITEM_EMBEDDINGS_PCA_SCHEMA,
    USER_EMBEDDINGS: USER_EMBEDDINGS_SCHEMA,
    SIMILAR_USERS: SIMILAR_USERS_SCHEMA,
    RECOMMENDATIONS: RECOMMENDATIONS_SCHEMA,
    RECOMMENDATION_RUNS: RECOMMENDATION_RUNS_SCHEMA,
    SIMILAR_ITEMS: SIMILAR_ITEMS_SCHEMA,
    MODELS: MODELS_SCHEMA,
    EVALUATION: EVALUATION_SCHEMA,
}


def require_columns(df: DataFrame, schema: T.StructType, table: str) -> None:
    """Check that ``df`` has every column of ``schema`` with the same type.

    Extra columns are allowed (tables may carry more than the contract). Nullability is
    not compared. Only the schema is looked at; no Spark job runs.

    Raises:
        SchemaError: naming the table, the column and the expected and actual types.
    """
    actual = {f.name: f.dataType for f in df.schema.fields}
    for f in schema.fields:
        if f.name not in actual:
            raise SchemaError(
                f"table {table}: missing column {f.name!r} ({f.dataType.simpleString()}); "
                f"has {', '.join(actual) or 'no columns'}"
            )
        if _strip_nullability(actual[f.name]) != _strip_nullability(f.dataType):
            raise SchemaError(
                f"table {table}: column {f.name!r} is {actual[f.name].simpleString()}, "
                f"expected {f.dataType.simpleString()}"
            )


def conform(df: DataFrame, table: str) -> DataFrame:
    """Check ``df`` against the contract schema of ``table`` and select its columns in order.

    Raises:
        SchemaError: as :func:`require_columns`.
    """
    schema = SCHEMAS[table]
    require_columns(df, schema, table)
    return df.select(*[f.name for f in schema.fields])


def stamped(df: DataFrame, table: str, *, model: str, version: str, run_date, at) -> DataFrame:
    """``df`` as rows of a dated model output (``recommendations``, ``similar_items``): the model, its
    version, the ``run_date`` partition and ``generated_at`` added, then :func:`conform` to ``table``."""
    return conform(
        df.withColumn("model", F.lit(model))
        .withColumn("model_version", F.lit(version))
        .withColumn("run_date", F.lit(run_date).cast("date"))
        .withColumn("generated_at", F.lit(at).cast("timestamp")),
        table,
    )


def _strip_nullability(dt: T.DataType) -> T.DataType:
    if isinstance(dt, T.ArrayType):
        return T.ArrayType(_strip_nullability(dt.elementType), True)
    if isinstance(dt, T.MapType):
        return T.MapType(_strip_nullability(dt.keyType), _strip_nullability(dt.valueType), True)
    if isinstance(dt, T.StructType):
        return T.StructType([T.StructField(f.name, _strip_nullability(f.dataType), True) for f in dt.fields])
    return dt


def subset(schema: T.StructType, *names: str) -> T.StructType:
    """The fields of ``schema`` named in ``names`` (for checking only the columns a stage reads)."""
    return T.StructType([f for f in schema.fields if f.name in names])
