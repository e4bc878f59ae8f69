"""Counting ingest's bad rows and saying where they are.

One aggregation over the (cached) parsed tables counts the rows per table and reason and
finds the first row of each; a row's location reads ``<table> file <path> line N`` (text)
or ``row N`` (Parquet); too many bad rows make one error message naming the first.
"""
from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from longtail.stages.ingest.read import translate_read_error
from longtail.stages.ingest.sources import TABLES, Source, display


def count_rows_by_reason(parsed: dict[str, DataFrame], sources: dict[str, Source]) -> list[tuple]:
    """One aggregation over every parsed table: ``(table, reason, rows, first location)``.

    ``reason`` None is the count of good rows; ``first`` is the earliest row (by file, split,
    row) with that reason, as a Row of ``_file, _split, _row, _detail``.

    Raises:
        InputError: a file is unreadable (not gzip, truncated).
    """
    parts = [
        df.groupBy("_reason")
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.min(F.struct("_file", "_split", "_row", "_detail")).alias("first"),
        )
        .select(F.lit(table).alias("table"), "_reason", "n", "first")
        for table, df in parsed.items()
    ]
    union = parts[0]
    for p in parts[1:]:
        union = union.unionByName(p)
    try:
        rows = union.collect()
    except Exception as exc:  # noqa: BLE001
        raise translate_read_error(exc, sources) from None
    order = {t: i for i, t in enumerate(TABLES)}
    rows.sort(key=lambda r: (order[r["table"]], r["_reason"] is not None, tuple(r["first"])[:3]))
    return [(r["table"], r["_reason"], int(r["n"]), r["first"]) for r in rows]


def too_many_bad_rows(spark: SparkSession, bad_only: list[tuple], sources: dict[str, Source], allowed: int) -> str:
    """The error message: the first bad row (file and line), then how many there are."""
    table, reason, _, first = min(bad_only, key=lambda b: (TABLES.index(b[0]), tuple(b[3])[:3]))
    total = sum(b[2] for b in bad_only)
    detail = f" ({first['_detail']})" if first["_detail"] else ""
    msg = f"{where(spark, sources[table], first)}: {reason}{detail}"
    if total > 1:
        counts = ", ".join(f"{t} {r}: {n}" for t, r, n, _ in bad_only)
        msg += f"; {total} bad rows in all ({counts})"
    if allowed:
        return msg + f", more than ingest.max_bad_rows={allowed}"
    return msg + "; set ingest.max_bad_rows to skip bad rows"


def where(spark: SparkSession, src: Source, first: Any) -> str:
    """``<table> file <path> line N`` (text) or ``row N`` (Parquet) for a parsed row's location."""
    file, split, row = first["_file"], int(first["_split"]), int(first["_row"])
    if src.reader == "parquet":
        return f"{src.table} file {display(file)} row {row + 1}"
    return f"{src.table} file {display(file)} line {_lines_before(spark, file, split) + row + 1}"


def _lines_before(spark: SparkSession, file: str, split: int) -> int:
    # Rows are numbered within their split; a later split of a large uncompressed file
    # starts after every line of the earlier splits. Only counted when a message needs it.
    if split == 0:
        return 0
    return (
        spark.read.text(file).where(F.col("_metadata.file_block_start") < split).count()
    )
