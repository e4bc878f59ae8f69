"""Driver side of ingest's reading: each source as a Spark DataFrame of parsed rows.

Text files are read by Spark as raw lines (bytes, so any encoding survives) with their file
and split (``_metadata``); CSV files are listed here, their headers checked one by one, and
each is read whole by one task (a CSV record may span lines, so a file cannot be split at line
ends); Parquet is read by Spark with its file and row index. Either way one ``mapInArrow``
function (:mod:`.parsing`) turns them into the table's columns plus ``_reason``/``_detail``
and the row's location. Spark's read errors become one-line
:class:`InputError` messages naming the file.
"""
from __future__ import annotations

import csv
import re
from typing import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from longtail.core import schemas
from longtail.core.errors import InputError, SchemaError
from longtail.stages.ingest.parsing import PQ_FILE, PQ_ROW, csv_header, csv_parser, line_parser, parquet_parser
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
    if src.reader == "csv":
        files = csv_files(src)
        # One task per file (up to the shuffle partitions): each reads its files whole.
        listing = spark.createDataFrame([(f,) for f in files], "file string")
        listing = listing.repartition(max(1, min(len(files), int(spark.conf.get("spark.sql.shuffle.partitions")))))
        return listing.mapInArrow(csv_parser(src.table, tz), out_schema)
    if src.reader == "parquet":
        raw = _read_parquet(spark, src)
        fn = parquet_parser(src.table, tz)
    else:
        raw = _read_lines(spark, src)
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


def csv_files(src: Source) -> list[str]:
    """The CSV files of ``src`` (a file, a folder of ``.csv``/``.csv.gz`` files, or a glob) as
    URIs, each with a header naming every required column.

    Raises:
        InputError: no CSV file there, or one is empty or unreadable (naming it).
        SchemaError: a file's header lacks a required column or names one twice (naming the file).
    """
    files = _list_csv(src.path)
    if not files:
        raise InputError(f"{src.table} file {src.path}: no .csv or .csv.gz files there")
    for uri in files:
        try:
            header = csv_header(uri, src.encoding)
        except (OSError, EOFError, ValueError, csv.Error) as exc:
            raise InputError(f"{src.table} file {display(uri)}: unreadable CSV ({_short(str(exc))})") from None
        if not header:
            raise InputError(f"{src.table} file {display(uri)}: empty, expected a CSV header line")
        twice = next((c for c in header if header.count(c) > 1), None)
        if twice is not None:  # a record would keep only the last of them, silently
            raise SchemaError(f"{src.table} file {display(uri)}: column {twice!r} appears twice in the header")
        require_columns(Source(src.table, display(uri), "csv", "csv", "files"), header)
    return files


def _list_csv(path: str) -> list[str]:
    """URIs of the CSV files a path names (the file itself, the files in a folder, a glob's matches)."""
    import fnmatch

    from pyarrow import fs as pafs

    from longtail.core.files import filesystem

    local = local_path(path)
    pattern = None
    if any(c in path for c in "*?["):
        path, pattern = path.rsplit("/", 1)
    fs, base = filesystem(local if local is not None else path)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.File and pattern is None:
        found = [base]
    elif info.type == pafs.FileType.Directory:
        entries = fs.get_file_info(pafs.FileSelector(base, recursive=pattern is None))
        found = sorted(
            e.path for e in entries
            if e.type == pafs.FileType.File and not e.base_name.startswith(("_", "."))
            and (fnmatch.fnmatch(e.base_name, pattern) if pattern else e.base_name.lower().endswith((".csv", ".csv.gz")))
        )
    else:
        found = []
    return [f"file:{p}" if local is not None else _uri(path, p) for p in found]


def _uri(original: str, fs_path: str) -> str:
    scheme = original.split("://", 1)[0]
    return f"{scheme}://{fs_path}"


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
