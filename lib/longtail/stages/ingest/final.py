"""The tables ingest writes: good rows de-duplicated, ``items`` and ``users`` derived from
the interactions' ids when no file was given, and the rows of each.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from longtail.core import schemas
from longtail.stages.ingest.sources import TABLES


def final_tables(parsed: dict[str, DataFrame]) -> tuple[dict[str, DataFrame], list[str]]:
    """The rows to write per table (good rows, de-duplicated), and which tables were derived."""
    good = {t: df.where(F.col("_reason").isNull()) for t, df in parsed.items()}
    events = good[schemas.INTERACTIONS].select("user_id", "item_id", "ts", "rating")
    final = {schemas.INTERACTIONS: events.dropDuplicates(["user_id", "item_id", "ts", "rating"])}
    derived = []
    for table in (schemas.ITEMS, schemas.USERS):
        if table in good:
            final[table] = _first_per_id(good[table], _key(table))
        else:
            final[table] = _derive(final[schemas.INTERACTIONS], table)
            derived.append(table)
    return final, derived


def count_all(final: dict[str, DataFrame]) -> dict[str, int]:
    """Rows per table, counted in one job."""
    parts = [df.select(F.lit(t).alias("table")) for t, df in final.items()]
    union = parts[0]
    for p in parts[1:]:
        union = union.unionByName(p)
    counts = {r["table"]: int(r["n"]) for r in union.groupBy("table").agg(F.count(F.lit(1)).alias("n")).collect()}
    return {t: counts.get(t, 0) for t in TABLES}


def _key(table: str) -> str:
    return "item_id" if table == schemas.ITEMS else "user_id"


def _first_per_id(df: DataFrame, key: str) -> DataFrame:
    """One row per id: the first in file order (repeated ids count as duplicates)."""
    values = [c for c in df.columns if c != key and not c.startswith("_")]
    return (
        df.groupBy(key)
        .agg(F.min_by(F.struct(*values), F.struct("_file", "_split", "_row")).alias("v"))
        .select(key, *[F.col(f"v.{c}").alias(c) for c in values])
    )


def _derive(interactions: DataFrame, table: str) -> DataFrame:
    """Items (users) from the interactions' ids when no file was given: ids, no text."""
    key = _key(table)
    empty_map = F.create_map().cast("map<string,string>")
    ids = interactions.select(key).distinct()
    if table == schemas.USERS:
        return ids.select(key, empty_map.alias("attributes"))
    none = F.lit(None).cast("string")
    return ids.select(
        key,
        none.alias("title"),
        none.alias("description"),
        F.array().cast("array<string>").alias("categories"),
        none.alias("brand"),
        empty_map.alias("attributes"),
    )
