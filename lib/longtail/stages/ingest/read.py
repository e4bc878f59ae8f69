"""Driver side of ingest's reading: each source as a Spark DataFrame of parsed rows.

Text files are read by Spark as raw lines (bytes, so any encoding survives) with their file
and split (``_metadata``); Parquet is read by Spark with its file and row index. Either way
one ``mapInArrow`` function (:mod:`.parsing`) turns them into the table's columns plus
``_reason``/``_detail`` and the row's location. Spark's read errors become one-line
:class:`InputError` messages naming the file.
"""
from __future__ import annotations

import csv
import os
import re
from typing import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from longtail.core import schemas
from longtail.core.errors import InputError
from longtail.stages.ingest.parsing import PQ_FILE, PQ_ROW, line_parser, parquet_parser
from longtail.stages.ingest.sources import Source, display, local_path, require_columns

# Columns the parse step adds: why a row is unusable (null when it is fine), a detail for the
# message, and where the row came from (file URI, split start, row within split or file).
_META_SPARK = "_reason string, _detail string, _file string, _split long, _row long"
_DATA_SPARK = {
    schemas.INTERACTIONS: "user_id string, item_id string, ts timestamp, rating double",
    schemas.ITEMS: (
        "item_id string, title string, description string, categories array<string>, "
        "brand string, attributes map<string,string>"
    ),
    schemas.USERS: "user_id string, attributes map<string,string>",
}


def parse(spark: SparkSession, src: Source, tz: str) -> DataFrame:
    """The parsed rows of one source: table columns plus ``_reason``/``_detail``/location.

    Raises:
        InputError: the file is missing, or is not Parquet where Parquet is expected.
        SchemaError: the CSV header or Parquet schema lacks a required column.
    """
    out_schema = f"{_DATA_SPARK[src.table]}, {_META_SPARK}"
    if src.reader == "parquet":
        raw = _read_parquet(spark, src)
        fn = parquet_parser(src.table, tz)
    else:
        raw = _read_lines(spark, src)
        if src.syntax == "csv":
            src = _with_csv_header(spark, src, raw)
        fn = line_parser(src, tz)
    return raw.mapInArrow(fn, out_schema)


def _spark_read(src: Source, read: Callable[[], DataFrame]) -> DataFrame:
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - Spark raises several kinds; keep ours precise
        text = str(exc)
        if "PATH_NOT_FOUND" in text:
            raise InputError(f"{src.table} file {src.path}: not found") from None
        if src.reader == "parquet" and ("Parquet" in text or "parquet" in text or "UNABLE_TO_INFER" in text):
            raise InputError(f"{src.table} file {src.path}: cannot read as Parquet ({_short(text)})") from None
        raise


def _read_lines(spark: SparkSession, src: Source) -> DataFrame:
    # Lines as bytes: Spark's text source keeps the raw bytes, so latin-1 (and any
    # malformed UTF-8) reaches the parser intact and is decoded there.
    df = _spark_read(src, lambda: spark.read.text(src.path))
    return df.select(
        F.col("value").cast("binary").alias("line"),
        F.col("_metadata.file_path").alias("file"),
        F.col("_metadata.file_block_start").alias("split"),
    )


def _read_parquet(spark: SparkSession, src: Source) -> DataFrame:
    df = _spark_read(src, lambda: spark.read.parquet(src.path))
    require_columns(src, df.columns)
    cols = df.columns
    if src.table == schemas.INTERACTIONS:
        cols = [c for c in ("user_id", "item_id", "timestamp", "rating") if c in df.columns]
    return df.select(
        *[F.col(f"`{c}`") for c in cols],
        F.col("_metadata.file_path").alias(PQ_FILE),
        F.col("_metadata.row_index").alias(PQ_ROW),
    )


def _with_csv_header(spark: SparkSession, src: Source, lines: DataFrame) -> Source:
    """Read the header (first non-blank line) once on the driver and check its columns.

    Executors use each file's own header for its first split and this one for later splits.
    """
    local = local_path(src.path)
    if local is not None and os.path.isfile(local):
        # A local file: read its first line here rather than start a Spark job for it.
        first = _first_line_local(local)
    else:
        first = None
    if first is None:
        first = _first_line_spark(src, lines)
    if not first:
        raise InputError(f"{src.table} file {src.path}: empty, expected a CSV header line")
    try:
        text = bytes(first[0]["line"]).decode(src.encoding).lstrip("\ufeff")
        header = tuple(h.strip() for h in next(csv.reader([text], strict=True)))
    except (UnicodeDecodeError, csv.Error, StopIteration) as exc:
        raise InputError(
            f"{src.table} file {display(first[0]['file'])} line 1: unreadable CSV header ({exc})"
        ) from None
    require_columns(src, header)
    return Source(src.table, src.path, src.reader, src.syntax, src.dialect, src.encoding, header)


def _first_line_local(path: str) -> list[dict] | None:
    """``[{"line": bytes, "file": path}]`` of a local file's first non-blank line, ``[]`` if none.

    None when the file cannot be read here (Spark then reads it and reports the problem).
    """
    import gzip
    import zlib

    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as fh:
            for line in fh:
                if line.strip():
                    return [{"line": line.rstrip(b"\r\n"), "file": path}]
        return []
    except (OSError, EOFError, zlib.error):
        return None


def _first_line_spark(src: Source, lines: DataFrame) -> list:
    try:
        return (
            lines.where((F.col("split") == 0) & (F.length(F.trim(F.col("line").cast("string"))) > 0))
            .select("line", "file")
            .limit(1)
            .collect()
        )
    except Exception as exc:  # noqa: BLE001
        raise translate_read_error(exc, {src.table: src}) from None


def translate_read_error(exc: Exception, sources: dict[str, Source]) -> Exception:
    """An :class:`InputError` naming the unreadable file for a Spark job's read failure;
    ``exc`` itself for any other failure."""
    # Unreadable files (a .gz that is not gzip, a truncated archive) fail inside a Spark
    # task; give them a one-line message naming the file. Anything else is a bug: re-raise.
    text = str(exc)
    markers = ("not a gzip file", "Not in GZIP format", "ZLIB input stream", "FAILED_READ_FILE", "CANNOT_READ_FILE")
    if not any(m in text for m in markers):
        return exc
    match = re.search(r"file:[^\s,;'\"]+", text)
    where = display(match.group(0).rstrip(".")) if match else ", ".join(s.path for s in sources.values())
    return InputError(f"file {where}: unreadable ({_short(text)})")


def _short(text: str) -> str:
    """The first telling line of a (Java) error message, at most 200 characters."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("An error occurred", ":", "at ")):
            return line[:200]
    return text.strip().splitlines()[0][:200] if text.strip() else "unknown error"
