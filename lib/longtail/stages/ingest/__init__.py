"""``longtail ingest``: raw interaction, item and user files -> the ``interactions``, ``items``
and ``users`` tables.

Formats (see ``docs/contracts.md``), one module each with its records:

- ``amazon`` (:mod:`.amazon`): McAuley review files (2014 and 2018), JSON lines, gzipped or
  not; metadata as JSON lines (2018) or Python-literal lines (2014). Every line may be either.
- ``movielens`` (:mod:`.movielens`): MovieLens-1M ``ratings.dat``, ``movies.dat``,
  ``users.dat`` (``::``, latin-1).
- ``files`` (:mod:`.files`): ``.csv``, ``.parquet``, ``.jsonl``/``.json`` (JSON lines), each
  optionally ``.gz``, or a folder of Parquet or CSV files; columns as in the contract, further
  item/user columns kept as string attributes. CSV is read by a real CSV reader (quoted fields
  with commas, quotes and line breaks), with every file's own header: columns are matched by
  name in each file.

How it runs: :mod:`.sources` plans how each file is read. Line-based text files (JSON lines,
``.dat``) are read by Spark as raw lines (bytes, so any encoding survives) with their file and
split (``_metadata``); CSV files are listed, their headers checked on the driver, and each is
read whole in one task; one ``mapInArrow`` function per table (:mod:`.read`, :mod:`.parsing`)
parses and normalises (:mod:`.values`) the rows on the executors, keeping each row's file and
line so that an error can name them. Parquet is read by Spark and normalised by the same function. Every
row that cannot be used carries a reason instead of values; one aggregation over the
(cached) parsed rows counts them per reason (:mod:`.bad_rows`). Too many bad rows fail the
job before anything is written; otherwise good rows are de-duplicated (:mod:`.final`) and
the three tables are replaced inside one warehouse job.
"""
from __future__ import annotations

import time
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession

from longtail.core import schemas
from longtail.core.config import IngestConfig
from longtail.core.errors import ConfigError, InputError
from longtail.stages.ingest.bad_rows import (
    count_rows_by_reason,
    too_many_bad_rows,
    where,
)
from longtail.stages.ingest.final import count_all, final_tables
from longtail.stages.ingest.read import parse
from longtail.stages.ingest.report import IngestReport
from longtail.stages.ingest.sources import FORMATS, TABLES, Source, plan_source
from longtail.stages.ingest.values import (
    attribute_value,
    normalize_categories,
    normalize_id,
    normalize_rating,
    normalize_text,
    timestamp_micros,
)

__all__ = [
    "FORMATS",
    "IngestReport",
    "attribute_value",
    "normalize_categories",
    "normalize_id",
    "normalize_rating",
    "normalize_text",
    "run_ingest",
    "timestamp_micros",
]


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
    _check_options(fmt, cfg)
    paths = {schemas.INTERACTIONS: interactions, schemas.ITEMS: items, schemas.USERS: users}
    sources = {t: plan_source(t, fmt, p) for t, p in paths.items() if p is not None}
    tz = spark.conf.get("spark.sql.session.timeZone") or "UTC"
    parsed = {t: parse(spark, src, tz) for t, src in sources.items()}
    cached: list[DataFrame] = []
    try:
        # Parsing runs once: the counting pass fills the cache that the writes then read.
        for df in parsed.values():
            cached.append(df.persist(StorageLevel.MEMORY_AND_DISK))
        counts = count_rows_by_reason(parsed, sources)
        bad = [c for c in counts if c[1] is not None]
        good_rows = {t: n for (t, reason, n, _) in counts if reason is None}
        _check_rows(spark, bad, good_rows, sources, cfg.max_bad_rows)

        final, derived = final_tables(parsed)
        for df in final.values():
            cached.append(df.persist(StorageLevel.MEMORY_AND_DISK))
        _write_tables(wh, final)
        report = _report(spark, fmt, count_all(final), derived, good_rows, bad, sources)
        report.seconds = time.perf_counter() - started
        return report
    finally:
        for df in cached:
            df.unpersist()


def _check_options(fmt: str, cfg: IngestConfig) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"ingest format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if cfg.max_bad_rows < 0:
        raise ConfigError(f"config key ingest.max_bad_rows: must be >= 0, got {cfg.max_bad_rows}")


def _check_rows(
    spark: SparkSession, bad: list[tuple], good_rows: dict[str, int], sources: dict[str, Source], allowed: int
) -> None:
    """Fail before anything is written: more bad rows than allowed, or no usable interaction."""
    if sum(n for (_, _, n, _) in bad) > allowed:
        raise InputError(too_many_bad_rows(spark, bad, sources, allowed))
    if not good_rows.get(schemas.INTERACTIONS):
        raise InputError(f"{schemas.INTERACTIONS} file {sources[schemas.INTERACTIONS].path}: no usable rows")


def _write_tables(wh: Any, final: dict[str, DataFrame]) -> None:
    """Replace the three tables in one warehouse job: a failure puts back what was written."""
    with wh.job():
        for table in TABLES:
            # Ingest replaces each table whole with the contract schema, so a table
            # from an older release (fewer columns) is replaced, not a mismatch.
            wh.write(schemas.conform(final[table], table), table, mode="overwrite", evolve_schema=True)


def _report(
    spark: SparkSession,
    fmt: str,
    rows: dict[str, int],
    derived: list[str],
    good_rows: dict[str, int],
    bad: list[tuple],
    sources: dict[str, Source],
) -> IngestReport:
    """The report: rows written, duplicates removed (good rows not written) and skipped rows."""
    report = IngestReport(format=fmt, rows=rows, derived=derived)
    report.duplicates = {t: good_rows[t] - rows[t] for t in TABLES if t in good_rows}
    for table, reason, n, first in bad:
        report.skipped[f"{table}: {reason}"] = n
        report.first_skipped[f"{table}: {reason}"] = where(spark, sources[table], first)
    return report
