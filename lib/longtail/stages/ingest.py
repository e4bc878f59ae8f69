"""``longtail ingest``: raw interaction, item and user files -> the ``interactions``, ``items``
and ``users`` tables.

Formats (see ``docs/contracts.md``):

- ``amazon``: McAuley review files (2014 and 2018), JSON lines, gzipped or not; metadata as
  JSON lines (2018) or Python-literal lines (2014). Every line may be either.
- ``movielens``: MovieLens-1M ``ratings.dat``, ``movies.dat``, ``users.dat`` (``::``, latin-1).
- ``files``: ``.csv``, ``.parquet``, ``.jsonl``/``.json`` (JSON lines), each optionally ``.gz``,
  or a folder of Parquet files; columns as in the contract, further item/user columns kept
  as string attributes.

How it runs: text files are read by Spark as raw lines (bytes, so any encoding survives) with
their file and split (``_metadata``); one ``mapInArrow`` function per table parses and
normalises the lines on the executors, numbering them per split so that an error can name
the file and line. Parquet is read by Spark and normalised by the same function. Every row
that cannot be used carries a reason instead of values; one aggregation over the (cached)
parsed rows counts them per reason. Too many bad rows fail the job before anything is
written; otherwise good rows are de-duplicated and the three tables are replaced inside one
warehouse job.
"""
from __future__ import annotations

import ast
import csv
import datetime as dt
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterator
from urllib.parse import unquote, urlparse

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from longtail.core import schemas
from longtail.core.config import IngestConfig
from longtail.core.errors import ConfigError, InputError, SchemaError

FORMATS = ("amazon", "movielens", "files")

#: Columns a table's raw file must have (checked on the header or Parquet schema).
REQUIRED_COLUMNS = {
    schemas.INTERACTIONS: ("user_id", "item_id", "timestamp"),
    schemas.ITEMS: ("item_id", "title"),
    schemas.USERS: ("user_id",),
}

# MovieLens-1M field order per file.
_MOVIELENS_FIELDS = {
    schemas.INTERACTIONS: ("user_id", "item_id", "rating", "timestamp"),
    schemas.ITEMS: ("item_id", "title", "genres"),
    schemas.USERS: ("user_id", "gender", "age", "occupation", "zip_code"),
}

# Amazon metadata fields that are lists of other products or image links: large and not
# item text, so they are not kept as attributes.
_AMAZON_DROPPED = frozenset(
    {"related", "also_buy", "also_view", "also_viewed", "bought_together", "similar_item",
     "imUrl", "imageURL", "imageURLHighRes"}
)

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
_TABLES = (schemas.INTERACTIONS, schemas.ITEMS, schemas.USERS)
# Location columns appended to Parquet rows before parsing (unlikely to clash with data).
_PQ_FILE, _PQ_ROW = "__longtail_file", "__longtail_row"
_MAX_DETAIL = 160


# --------------------------------------------------------------------------- report


@dataclass
class IngestReport:
    """What one ingest loaded.

    Attributes:
        format: ``amazon`` | ``movielens`` | ``files``.
        rows: rows written per table.
        skipped: bad rows skipped, per ``"<table>: <reason>"``.
        first_skipped: where the first skipped row of each reason is (file and line or row).
        duplicates: rows removed as duplicates per table (interactions: exact duplicate
            events; items and users: repeated ids, the first occurrence is kept).
        derived: tables built from the interactions because no file was given.
        seconds: wall time of the ingest.
    """

    format: str
    rows: dict[str, int]
    skipped: dict[str, int] = field(default_factory=dict)
    first_skipped: dict[str, str] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    derived: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def __str__(self) -> str:
        tables = ", ".join(
            f"{t} {n:,}" + (" (derived)" if t in self.derived else "") for t, n in self.rows.items()
        )
        dups = ", ".join(f"{t} {n:,}" for t, n in self.duplicates.items() if n) or "none"
        lines = [f"ingest ({self.format}): {tables}; duplicates removed: {dups}"]
        if self.skipped:
            lines.append(f"  skipped {self.skipped_total:,} bad rows:")
            for reason, n in self.skipped.items():
                where = self.first_skipped.get(reason)
                lines.append(f"    {reason}: {n:,}" + (f" (first: {where})" if where else ""))
        return "\n".join(lines)


# --------------------------------------------------------------------------- entry point


def run_ingest(
    spark: SparkSession,
    wh: Any,
    fmt: str,
    interactions: str,
    items: str | None,
    users: str | None,
    cfg: IngestConfig,
) -> IngestReport:
    """Load raw files into the ``interactions``, ``items`` and ``users`` tables.

    Replaces what an earlier ingest loaded. Without an item (user) file, ``items``
    (``users``) is derived from the interactions' ids.

    Args:
        spark: the job's session.
        wh: the :class:`~longtail.core.tables.Warehouse` to write to.
        fmt: ``amazon`` | ``movielens`` | ``files``.
        interactions: reviews / ratings / interactions file (or Parquet folder).
        items: item metadata file, or None.
        users: user file, or None.
        cfg: the ``ingest`` section; ``max_bad_rows`` bad rows may be skipped (and reported).

    Returns:
        An :class:`IngestReport` with rows per table, skipped rows per reason and duplicates.

    Raises:
        InputError: a file is missing or unreadable, its kind is unknown, or there are more
            bad rows (malformed lines, null ids, unparseable timestamps or ratings) than
            ``cfg.max_bad_rows``; the message names the file and line (or row and column).
        SchemaError: a CSV header or Parquet schema lacks a required column.
        ConfigError: ``max_bad_rows`` is negative or ``fmt`` unknown.
    """
    started = time.perf_counter()
    if fmt not in FORMATS:
        raise ConfigError(f"ingest format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if cfg.max_bad_rows < 0:
        raise ConfigError(f"config key ingest.max_bad_rows: must be >= 0, got {cfg.max_bad_rows}")
    paths = {schemas.INTERACTIONS: interactions, schemas.ITEMS: items, schemas.USERS: users}
    sources = {t: _plan_source(t, fmt, p) for t, p in paths.items() if p is not None}
    tz = spark.conf.get("spark.sql.session.timeZone") or "UTC"
    parsed = {t: _parse(spark, src, tz) for t, src in sources.items()}
    cached: list[DataFrame] = []
    try:
        # Parsing runs once: the counting pass fills the cache that the writes then read.
        for df in parsed.values():
            cached.append(df.persist(StorageLevel.MEMORY_AND_DISK))
        counts = _bad_rows(parsed, sources)
        bad = [c for c in counts if c[1] is not None]
        if sum(n for (_, _, n, _) in bad) > cfg.max_bad_rows:
            raise InputError(_too_many_bad_rows(spark, bad, sources, cfg.max_bad_rows))
        good_rows = {t: n for (t, reason, n, _) in counts if reason is None}
        if not good_rows.get(schemas.INTERACTIONS):
            raise InputError(f"{schemas.INTERACTIONS} file {interactions}: no usable rows")

        final, derived = _final_tables(parsed)
        for df in final.values():
            cached.append(df.persist(StorageLevel.MEMORY_AND_DISK))
        with wh.job():
            for table in _TABLES:
                # Ingest replaces each table whole with the contract schema, so a table
                # from an older release (fewer columns) is replaced, not a mismatch.
                wh.write(schemas.conform(final[table], table), table, mode="overwrite", evolve_schema=True)

        rows = _count_all(final)
        report = IngestReport(format=fmt, rows=rows, derived=derived)
        report.duplicates = {t: good_rows[t] - rows[t] for t in _TABLES if t in good_rows}
        for table, reason, n, first in bad:
            report.skipped[f"{table}: {reason}"] = n
            report.first_skipped[f"{table}: {reason}"] = _where(spark, sources[table], first)
        report.seconds = time.perf_counter() - started
        return report
    finally:
        for df in cached:
            df.unpersist()


def _final_tables(parsed: dict[str, DataFrame]) -> tuple[dict[str, DataFrame], list[str]]:
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


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Source:
    """How one table's raw file is read (plain values: shipped to the executors)."""

    table: str
    path: str
    reader: str  # "lines" | "parquet"
    syntax: str  # lines: "json" | "json_or_literal" | "csv" | "dat"
    dialect: str  # "files" | "amazon" | "movielens"
    encoding: str = "utf-8"
    columns: tuple[str, ...] = ()  # csv: the header; dat: the field names


def _plan_source(table: str, fmt: str, path: str) -> _Source:
    _check_exists(table, path)
    if fmt == "amazon" and table != schemas.USERS:
        return _Source(table, path, "lines", "json_or_literal", "amazon")
    if fmt == "movielens":
        return _Source(table, path, "lines", "dat", "movielens", "latin-1", _MOVIELENS_FIELDS[table])
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    gz = name.endswith(".gz")
    stem = name[:-3] if gz else name
    ext = stem.rsplit(".", 1)[-1] if "." in stem else ""
    if ext == "csv":
        return _Source(table, path, "lines", "csv", "files")
    if ext in ("jsonl", "json", "ndjson"):
        return _Source(table, path, "lines", "json", "files")
    if ext == "parquet" and gz:
        raise InputError(f"{table} file {path}: gzip-compressed Parquet is not supported; gunzip it first")
    if ext == "parquet" or (not gz and _is_dir_or_remote(path)):
        return _Source(table, path, "parquet", "", "files")
    raise InputError(
        f"{table} file {path}: unknown file kind; expected .csv, .parquet, .jsonl or .json "
        "(optionally .gz) or a folder of Parquet files"
    )


def _local(path: str) -> str | None:
    """The local path for a plain or ``file:`` path; None for other file systems."""
    parsed = urlparse(path)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:  # s3a://, dbfs:, hdfs:// (a drive letter is 1 char)
        return None
    return path


def _check_exists(table: str, path: str) -> None:
    local = _local(path)
    if local is not None and not any(c in local for c in "*?[") and not os.path.exists(local):
        raise InputError(f"{table} file {path}: not found")


def _is_dir_or_remote(path: str) -> bool:
    local = _local(path)
    return local is None or os.path.isdir(local)


def _display(uri: str) -> str:
    """A file URI as a user would write it (``file:/a/b%20c`` -> ``/a/b c``)."""
    local = _local(uri)
    return local if local is not None else uri


# --------------------------------------------------------------------------- reading


def _parse(spark: SparkSession, src: _Source, tz: str) -> DataFrame:
    """The parsed rows of one source: table columns plus ``_reason``/``_detail``/location."""
    out_schema = f"{_DATA_SPARK[src.table]}, {_META_SPARK}"
    if src.reader == "parquet":
        raw = _read_parquet(spark, src)
        fn = _parquet_parser(src.table, tz)
    else:
        raw = _read_lines(spark, src)
        if src.syntax == "csv":
            src = _with_csv_header(spark, src, raw)
        fn = _line_parser(src, tz)
    return raw.mapInArrow(fn, out_schema)


def _spark_read(src: _Source, read: Callable[[], DataFrame]) -> DataFrame:
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - Spark raises several kinds; keep ours precise
        text = str(exc)
        if "PATH_NOT_FOUND" in text:
            raise InputError(f"{src.table} file {src.path}: not found") from None
        if src.reader == "parquet" and ("Parquet" in text or "parquet" in text or "UNABLE_TO_INFER" in text):
            raise InputError(f"{src.table} file {src.path}: cannot read as Parquet ({_short(text)})") from None
        raise


def _read_lines(spark: SparkSession, src: _Source) -> DataFrame:
    # Lines as bytes: Spark's text source keeps the raw bytes, so latin-1 (and any
    # malformed UTF-8) reaches the parser intact and is decoded there.
    df = _spark_read(src, lambda: spark.read.text(src.path))
    return df.select(
        F.col("value").cast("binary").alias("line"),
        F.col("_metadata.file_path").alias("file"),
        F.col("_metadata.file_block_start").alias("split"),
    )


def _read_parquet(spark: SparkSession, src: _Source) -> DataFrame:
    df = _spark_read(src, lambda: spark.read.parquet(src.path))
    _require(src, df.columns)
    cols = df.columns
    if src.table == schemas.INTERACTIONS:
        cols = [c for c in ("user_id", "item_id", "timestamp", "rating") if c in df.columns]
    return df.select(
        *[F.col(f"`{c}`") for c in cols],
        F.col("_metadata.file_path").alias(_PQ_FILE),
        F.col("_metadata.row_index").alias(_PQ_ROW),
    )


def _with_csv_header(spark: SparkSession, src: _Source, lines: DataFrame) -> _Source:
    """Read the header (first non-blank line) once on the driver and check its columns.

    Executors use each file's own header for its first split and this one for later splits.
    """
    local = _local(src.path)
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
            f"{src.table} file {_display(first[0]['file'])} line 1: unreadable CSV header ({exc})"
        ) from None
    _require(src, header)
    return _Source(src.table, src.path, src.reader, src.syntax, src.dialect, src.encoding, header)


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


def _first_line_spark(src: _Source, lines: DataFrame) -> list:
    try:
        return (
            lines.where((F.col("split") == 0) & (F.length(F.trim(F.col("line").cast("string"))) > 0))
            .select("line", "file")
            .limit(1)
            .collect()
        )
    except Exception as exc:  # noqa: BLE001
        raise _translate_read_error(exc, {src.table: src}) from None


def _require(src: _Source, columns: Any) -> None:
    have = list(columns)
    for col in REQUIRED_COLUMNS[src.table]:
        if col not in have:
            raise SchemaError(
                f"{src.table} file {src.path}: missing column {col!r} (has {', '.join(have) or 'none'})"
            )


# --------------------------------------------------------------------------- counting


def _bad_rows(parsed: dict[str, DataFrame], sources: dict[str, _Source]) -> list[tuple]:
    """One aggregation over every parsed table: ``(table, reason, rows, first location)``.

    ``reason`` None is the count of good rows; ``first`` is the earliest row (by file, split,
    row) with that reason, as a Row of ``_file, _split, _row, _detail``.
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
        raise _translate_read_error(exc, sources) from None
    order = {t: i for i, t in enumerate(_TABLES)}
    rows.sort(key=lambda r: (order[r["table"]], r["_reason"] is not None, tuple(r["first"])[:3]))
    return [(r["table"], r["_reason"], int(r["n"]), r["first"]) for r in rows]


def _translate_read_error(exc: Exception, sources: dict[str, _Source]) -> Exception:
    # Unreadable files (a .gz that is not gzip, a truncated archive) fail inside a Spark
    # task; give them a one-line message naming the file. Anything else is a bug: re-raise.
    text = str(exc)
    markers = ("not a gzip file", "Not in GZIP format", "ZLIB input stream", "FAILED_READ_FILE", "CANNOT_READ_FILE")
    if not any(m in text for m in markers):
        return exc
    match = re.search(r"file:[^\s,;'\"]+", text)
    where = _display(match.group(0).rstrip(".")) if match else ", ".join(s.path for s in sources.values())
    return InputError(f"file {where}: unreadable ({_short(text)})")


def _too_many_bad_rows(spark: SparkSession, bad_only: list[tuple], sources: dict[str, _Source], allowed: int) -> str:
    """The error message: the first bad row (file and line), then how many there are."""
    table, reason, _, first = min(bad_only, key=lambda b: (_TABLES.index(b[0]), tuple(b[3])[:3]))
    total = sum(b[2] for b in bad_only)
    detail = f" ({first['_detail']})" if first["_detail"] else ""
    msg = f"{_where(spark, sources[table], first)}: {reason}{detail}"
    if total > 1:
        counts = ", ".join(f"{t} {r}: {n}" for t, r, n, _ in bad_only)
        msg += f"; {total} bad rows in all ({counts})"
    if allowed:
        return msg + f", more than ingest.max_bad_rows={allowed}"
    return msg + "; set ingest.max_bad_rows to skip bad rows"


def _where(spark: SparkSession, src: _Source, first: Any) -> str:
    """``<table> file <path> line N`` (text) or ``row N`` (Parquet) for a parsed row's location."""
    file, split, row = first["_file"], int(first["_split"]), int(first["_row"])
    if src.reader == "parquet":
        return f"{src.table} file {_display(file)} row {row + 1}"
    return f"{src.table} file {_display(file)} line {_lines_before(spark, file, split) + row + 1}"


def _lines_before(spark: SparkSession, file: str, split: int) -> int:
    # Rows are numbered within their split; a later split of a large uncompressed file
    # starts after every line of the earlier splits. Only counted when a message needs it.
    if split == 0:
        return 0
    return (
        spark.read.text(file).where(F.col("_metadata.file_block_start") < split).count()
    )


def _count_all(final: dict[str, DataFrame]) -> dict[str, int]:
    parts = [df.select(F.lit(t).alias("table")) for t, df in final.items()]
    union = parts[0]
    for p in parts[1:]:
        union = union.unionByName(p)
    counts = {r["table"]: int(r["n"]) for r in union.groupBy("table").agg(F.count(F.lit(1)).alias("n")).collect()}
    return {t: counts.get(t, 0) for t in _TABLES}


def _short(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("An error occurred", ":", "at ")):
            return line[:200]
    return text.strip().splitlines()[0][:200] if text.strip() else "unknown error"


# --------------------------------------------------------------------------- final tables


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


# --------------------------------------------------------------------------- executor side
# Everything below runs inside mapInArrow on the executors; closures carry plain values only.


class _Bad(Exception):
    """A row that cannot be used: ``reason`` is counted, ``detail`` goes into the message."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _line_parser(src: _Source, tz: str) -> Callable:
    spec = {
        "table": src.table, "syntax": src.syntax, "dialect": src.dialect,
        "encoding": src.encoding, "columns": src.columns, "tz": tz,
    }

    def parse(batches):
        from longtail.stages.ingest import _parse_line_batches

        return _parse_line_batches(batches, spec)

    return parse


def _parquet_parser(table: str, tz: str) -> Callable:
    def parse(batches):
        from longtail.stages.ingest import _parse_parquet_batches

        return _parse_parquet_batches(batches, table, tz)

    return parse


def _parse_line_batches(batches: Iterator, spec: dict) -> Iterator:
    table, syntax, dialect = spec["table"], spec["syntax"], spec["dialect"]
    encoding, columns = spec["encoding"], tuple(spec["columns"])
    out = _Output(table, spec["tz"])
    to_record = _DIALECTS[(dialect, table)]
    row_in_split: dict[tuple[str, int], int] = {}
    headers: dict[str, tuple[str, ...]] = {}
    for batch in batches:
        lines = batch.column(0).to_pylist()
        files = batch.column(1).to_pylist()
        splits = batch.column(2).to_pylist()
        for raw, file, split in zip(lines, files, splits):
            key = (file, split)
            row = row_in_split.get(key, 0)
            row_in_split[key] = row + 1
            try:
                try:
                    text = raw.decode(encoding)
                except UnicodeDecodeError as exc:
                    raise _Bad("invalid encoding", f"not {encoding}: {exc.reason} at byte {exc.start}") from None
                if row == 0 and split == 0:
                    text = text.lstrip("\ufeff")
                if not text.strip():
                    continue  # blank lines are not rows
                if syntax == "csv":
                    if split == 0 and file not in headers:
                        # This file's own header: files of one folder may order columns differently.
                        headers[file] = tuple(h.strip() for h in _csv_fields(text))
                        continue
                    fields = headers.get(file, columns)
                    values = _csv_fields(text)
                    if len(values) != len(fields):
                        raise _Bad("malformed line", f"{len(values)} CSV fields, header has {len(fields)}")
                    rec = {k: (v if v != "" else None) for k, v in zip(fields, values)}
                elif syntax == "dat":
                    values = text.rstrip("\r\n").split("::")
                    if len(values) != len(columns):
                        raise _Bad(
                            "malformed line", f"{len(values)} '::'-separated fields, expected {len(columns)}"
                        )
                    rec = dict(zip(columns, values))
                else:
                    rec = _parse_object(text, literal=(syntax == "json_or_literal"))
                out.add(to_record(rec), file, split, row)
            except _Bad as bad:
                out.bad(bad, file, split, row)
        if out.size:
            yield out.flush()
    if out.size:
        yield out.flush()


def _parse_parquet_batches(batches: Iterator, table: str, tz: str) -> Iterator:
    out = _Output(table, tz)
    to_record = _DIALECTS[("files", table)]
    for batch in batches:
        for rec in batch.to_pylist():
            file, row = rec.pop(_PQ_FILE), rec.pop(_PQ_ROW)
            try:
                out.add(to_record(rec), file, 0, row)
            except _Bad as bad:
                out.bad(bad, file, 0, row)
        if out.size:
            yield out.flush()


def _csv_fields(text: str) -> list[str]:
    try:
        return next(csv.reader([text.rstrip("\r\n")], strict=True))
    except (csv.Error, StopIteration) as exc:
        raise _Bad("malformed line", f"CSV: {exc}") from None


def _parse_object(text: str, literal: bool) -> dict:
    """One JSON object per line; with ``literal``, a Python dict literal too (Amazon 2014 metadata)."""
    stripped = text.strip()
    if literal and stripped.startswith("{'"):
        obj = _literal(stripped)
    else:
        try:
            obj = json.loads(stripped)
        except ValueError as exc:
            if not literal:
                hint = "; expected one JSON object per line" if stripped.startswith("[") else ""
                raise _Bad("malformed line", f"JSON: {exc}{hint}") from None
            obj = _literal(stripped, json_error=str(exc))
    if not isinstance(obj, dict):
        hint = "; expected one JSON object per line" if isinstance(obj, list) else ""
        raise _Bad("malformed line", f"expected an object, got {type(obj).__name__}{hint}")
    return obj


def _literal(text: str, json_error: str | None = None) -> Any:
    # ast.literal_eval only builds literals (never calls or names): safe for untrusted lines.
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        what = f"JSON: {json_error}" if json_error else f"Python literal: {exc.__class__.__name__}: {exc}"
        raise _Bad("malformed line", f"neither JSON nor a Python literal ({what})") from None


# ---- dialects: a parsed record -> the table's fields (raw values, normalised by _Output)


def _require_key(rec: dict, key: str) -> Any:
    if key not in rec:
        raise _Bad(f"missing {key}")
    return rec[key]


def _files_interaction(rec: dict) -> dict:
    return {
        "user_id": _require_key(rec, "user_id"),
        "item_id": _require_key(rec, "item_id"),
        "timestamp": _require_key(rec, "timestamp"),
        "rating": rec.get("rating"),
    }


def _amazon_interaction(rec: dict) -> dict:
    if "unixReviewTime" in rec or "reviewTime" not in rec:
        ts = _require_key(rec, "unixReviewTime")
    else:
        ts = _review_time(rec["reviewTime"])
    return {
        "user_id": _require_key(rec, "reviewerID"),
        "item_id": _require_key(rec, "asin"),
        "timestamp": ts,
        "rating": rec.get("overall"),
    }


def _review_time(value: Any) -> Any:
    # Amazon's human date "09 13, 2009" (month day, year), used only without unixReviewTime.
    try:
        return dt.datetime.strptime(str(value).strip(), "%m %d, %Y").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise _Bad("unparseable timestamp", f"reviewTime {_clip(value)!s}") from None


def _movielens_interaction(rec: dict) -> dict:
    return dict(rec)


_ITEM_FIELDS = ("item_id", "title", "description", "categories", "brand")


def _files_item(rec: dict) -> dict:
    out = {k: rec.get(k) for k in _ITEM_FIELDS}
    out["item_id"] = _require_key(rec, "item_id")
    out["attributes"] = {k: v for k, v in rec.items() if k not in _ITEM_FIELDS}
    return out


def _amazon_item(rec: dict) -> dict:
    known = {"asin", "title", "description", "categories", "category", "brand"}
    cats = rec.get("categories") if rec.get("categories") is not None else rec.get("category")
    return {
        "item_id": _require_key(rec, "asin"),
        "title": rec.get("title"),
        "description": rec.get("description"),
        "categories": cats,
        "brand": rec.get("brand"),
        "attributes": {k: v for k, v in rec.items() if k not in known and k not in _AMAZON_DROPPED},
    }


_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _movielens_item(rec: dict) -> dict:
    title = rec["title"]
    year = _YEAR.search(title)
    return {
        "item_id": rec["item_id"],
        "title": title,
        "description": None,
        "categories": rec["genres"],
        "brand": None,
        "attributes": {"year": year.group(1)} if year else {},
    }


def _files_user(rec: dict) -> dict:
    return {
        "user_id": _require_key(rec, "user_id"),
        "attributes": {k: v for k, v in rec.items() if k != "user_id"},
    }


_DIALECTS: dict[tuple[str, str], Callable[[dict], dict]] = {
    ("files", schemas.INTERACTIONS): _files_interaction,
    ("amazon", schemas.INTERACTIONS): _amazon_interaction,
    ("movielens", schemas.INTERACTIONS): _movielens_interaction,
    ("files", schemas.ITEMS): _files_item,
    ("amazon", schemas.ITEMS): _amazon_item,
    ("movielens", schemas.ITEMS): _movielens_item,
    ("files", schemas.USERS): _files_user,
    ("amazon", schemas.USERS): _files_user,
    ("movielens", schemas.USERS): _files_user,
}


# ---- normalising values


def _clip(value: Any) -> str:
    text = repr(value)
    text = text.replace("\n", " ").replace("\r", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def normalize_id(value: Any) -> str | None:
    """An id as a string: numbers without a spurious ``.0``, blanks and NaN as None."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, Decimal):
        return str(int(value)) if value == value.to_integral_value() else str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").strip() or None
    return str(value)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MIN_US = (dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc) - _EPOCH) // dt.timedelta(microseconds=1)
_MAX_US = (dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone.utc) - _EPOCH) // dt.timedelta(
    microseconds=1
)
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def timestamp_micros(value: Any) -> int:
    """Microseconds since the epoch (UTC) of a timestamp value.

    Accepts unix seconds (int, float, Decimal, or a numeric string), ISO-8601 strings
    (``2014-07-23``, ``2014-07-23T10:00:00``, with ``Z`` or an offset; naive means UTC),
    and ``datetime``/``date`` objects (naive means UTC).

    Raises:
        ValueError: unparseable or outside years 1..9999.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a timestamp")
    if isinstance(value, int):
        micros = value * 1_000_000
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        micros = round(value * 1_000_000)
    elif isinstance(value, Decimal):
        micros = int(value * 1_000_000)
    elif isinstance(value, dt.datetime):
        when = value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
        micros = (when - _EPOCH) // dt.timedelta(microseconds=1)
    elif isinstance(value, dt.date):
        micros = (dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc) - _EPOCH) // dt.timedelta(
            microseconds=1
        )
    elif isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            try:
                micros = int(Decimal(text) * 1_000_000)
            except InvalidOperation:
                raise ValueError("not a number") from None
        else:
            micros = timestamp_micros(dt.datetime.fromisoformat(text))
    else:
        raise ValueError(f"unsupported type {type(value).__name__}")
    if not _MIN_US <= micros <= _MAX_US:
        raise ValueError("outside years 1..9999 (unix seconds expected)")
    return micros


def normalize_rating(value: Any) -> float | None:
    """A rating as a float; None/blank/NaN are None. Raises ValueError when unparseable."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("a boolean is not a rating")
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
    number = float(value)
    if math.isnan(number):
        return None
    if math.isinf(number):
        raise ValueError("infinite")
    return number


def normalize_text(value: Any) -> str | None:
    """Item text: lists (2018 descriptions) joined by spaces; blanks are None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        parts = [normalize_text(v) for v in value]
        value = " ".join(p for p in parts if p)
    elif not isinstance(value, str):
        value = str(value)
    value = value.strip()
    return value or None


def normalize_categories(value: Any) -> list[str]:
    """Categories as a flat list of distinct strings in first-seen order.

    Lists are flattened (Amazon 2014 has a list of category paths); a string is a JSON
    list when it looks like one, otherwise ``|``-separated.
    """
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            if isinstance(parsed, list):
                return normalize_categories(parsed)
        value = text.split("|")
    flat: list[str] = []

    def walk(v: Any) -> None:
        if v is None:
            return
        if isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        else:
            flat.append(str(v).strip())

    walk(value)
    seen: set[str] = set()
    return [c for c in flat if c and not (c in seen or seen.add(c))]


def attribute_value(value: Any) -> str | None:
    """An extra column's value as a string (JSON for lists and mappings); None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (int, float, Decimal)):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return json.dumps(value, ensure_ascii=False, default=str)


class _Output:
    """Columns of one output batch: normalised table values plus reason and location."""

    def __init__(self, table: str, tz: str) -> None:
        import pyarrow as pa

        self.table = table
        string, long = pa.string(), pa.int64()
        strmap = pa.map_(pa.string(), pa.string())
        data = {
            schemas.INTERACTIONS: [("user_id", string), ("item_id", string),
                                   ("ts", pa.timestamp("us", tz=tz)), ("rating", pa.float64())],
            schemas.ITEMS: [("item_id", string), ("title", string), ("description", string),
                            ("categories", pa.list_(string)), ("brand", string), ("attributes", strmap)],
            schemas.USERS: [("user_id", string), ("attributes", strmap)],
        }[table]
        meta = [("_reason", string), ("_detail", string), ("_file", string), ("_split", long), ("_row", long)]
        self.fields = data + meta
        self.width = len(data)
        self.schema = pa.schema(self.fields)
        self._reset()

    def _reset(self) -> None:
        self.cols: list[list] = [[] for _ in self.fields]
        self.size = 0

    def add(self, rec: dict, file: str, split: int, row: int) -> None:
        values = self._normalize(rec)
        for col, v in zip(self.cols, values):
            col.append(v)
        self._meta(None, None, file, split, row)

    def bad(self, bad: _Bad, file: str, split: int, row: int) -> None:
        for col in self.cols[: self.width]:
            col.append(None)
        detail = bad.detail.replace("\n", " ").replace("\r", " ")
        if len(detail) > _MAX_DETAIL:
            detail = detail[: _MAX_DETAIL - 3] + "..."
        self._meta(bad.reason, detail or None, file, split, row)

    def _meta(self, reason: str | None, detail: str | None, file: str, split: int, row: int) -> None:
        w = self.width
        self.cols[w].append(reason)
        self.cols[w + 1].append(detail)
        self.cols[w + 2].append(file)
        self.cols[w + 3].append(split)
        self.cols[w + 4].append(row)
        self.size += 1

    def _normalize(self, rec: dict) -> list:
        if self.table == schemas.INTERACTIONS:
            user = _id_or_bad(rec["user_id"], "user_id")
            item = _id_or_bad(rec["item_id"], "item_id")
            if rec["timestamp"] is None or (isinstance(rec["timestamp"], str) and not rec["timestamp"].strip()):
                raise _Bad("null timestamp")
            try:
                ts = timestamp_micros(rec["timestamp"])
            except (ValueError, OverflowError, TypeError) as exc:
                raise _Bad("unparseable timestamp", f"{_clip(rec['timestamp'])}: {exc}") from None
            try:
                rating = normalize_rating(rec["rating"])
            except (ValueError, TypeError) as exc:
                raise _Bad("unparseable rating", f"{_clip(rec['rating'])}: {exc}") from None
            return [user, item, ts, rating]
        if self.table == schemas.ITEMS:
            attrs = {str(k): attribute_value(v) for k, v in rec["attributes"].items()}
            return [
                _id_or_bad(rec["item_id"], "item_id"),
                normalize_text(rec["title"]),
                normalize_text(rec["description"]),
                normalize_categories(rec["categories"]),
                normalize_text(rec["brand"]),
                [(k, v) for k, v in attrs.items() if v is not None],
            ]
        attrs = {str(k): attribute_value(v) for k, v in rec["attributes"].items()}
        return [_id_or_bad(rec["user_id"], "user_id"), [(k, v) for k, v in attrs.items() if v is not None]]

    def flush(self):
        import pyarrow as pa

        arrays = [pa.array(col, type=f[1]) for col, f in zip(self.cols, self.fields)]
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        self._reset()
        return batch


def _id_or_bad(value: Any, name: str) -> str:
    ident = normalize_id(value)
    if ident is None:
        raise _Bad(f"null {name}")
    return ident
