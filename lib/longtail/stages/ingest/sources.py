"""Planning ingest's reads: which reader and syntax a table's file gets, from the format and
the file's name, after checking that it exists; the columns each table's file must have;
and paths shown the way a user wrote them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from longtail.core import schemas
from longtail.core.errors import InputError, SchemaError
from longtail.stages.ingest import amazon, movielens

FORMATS = ("amazon", "movielens", "files")

#: The tables ingest loads, in the order it counts and reports them.
TABLES = (schemas.INTERACTIONS, schemas.ITEMS, schemas.USERS)

#: Columns a table's raw file must have (checked on the header or Parquet schema).
REQUIRED_COLUMNS = {
    schemas.INTERACTIONS: ("user_id", "item_id", "timestamp"),
    schemas.ITEMS: ("item_id", "title"),
    schemas.USERS: ("user_id",),
}


@dataclass(frozen=True)
class Source:
    """How one table's raw file is read (plain values: shipped to the executors)."""

    table: str
    path: str
    reader: str  # "lines" | "csv" | "parquet"
    syntax: str  # lines: "json" | "json_or_literal" | "csv" | "dat"
    dialect: str  # "files" | "amazon" | "movielens"
    encoding: str = "utf-8"
    columns: tuple[str, ...] = ()  # csv: the header; dat: the field names


def plan_source(table: str, fmt: str, path: str) -> Source:
    """How to read ``table``'s file ``path`` in format ``fmt``.

    Raises:
        InputError: the file does not exist, is gzipped Parquet, or its kind is unknown.
    """
    _check_exists(table, path)
    if fmt == "amazon" and table != schemas.USERS:
        return Source(table, path, "lines", amazon.SYNTAX, "amazon")
    if fmt == "movielens":
        return Source(table, path, "lines", movielens.SYNTAX, "movielens", movielens.ENCODING,
                      movielens.FIELDS[table])
    return _plan_by_name(table, path)


def _plan_by_name(table: str, path: str) -> Source:
    """The ``files`` format (and Amazon user files): the reader from the file's name."""
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    gz = name.endswith(".gz")
    stem = name[:-3] if gz else name
    ext = stem.rsplit(".", 1)[-1] if "." in stem else ""
    if ext == "csv" or (not gz and _is_csv_folder(path)):
        # A real CSV reader per file (quoting, multi-line fields, each file's own header).
        return Source(table, path, "csv", "csv", "files")
    if ext in ("jsonl", "json", "ndjson"):
        return Source(table, path, "lines", "json", "files")
    if ext == "parquet" and gz:
        raise InputError(f"{table} file {path}: gzip-compressed Parquet is not supported; gunzip it first")
    if ext == "parquet" or (not gz and _is_dir_or_remote(path)):
        return Source(table, path, "parquet", "", "files")
    raise InputError(
        f"{table} file {path}: unknown file kind; expected .csv, .parquet, .jsonl or .json "
        "(optionally .gz) or a folder of Parquet or CSV files"
    )


def require_columns(src: Source, columns: Any) -> None:
    """Raise :class:`SchemaError` naming the first required column ``columns`` lacks."""
    have = list(columns)
    for col in REQUIRED_COLUMNS[src.table]:
        if col not in have:
            raise SchemaError(
                f"{src.table} file {src.path}: missing column {col!r} (has {', '.join(have) or 'none'})"
            )


def local_path(path: str) -> str | None:
    """The local path for a plain or ``file:`` path; None for other file systems."""
    parsed = urlparse(path)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:  # s3a://, dbfs:, hdfs:// (a drive letter is 1 char)
        return None
    return path


def _check_exists(table: str, path: str) -> None:
    local = local_path(path)
    if local is not None and not any(c in local for c in "*?[") and not os.path.exists(local):
        raise InputError(f"{table} file {path}: not found")


def _is_csv_folder(path: str) -> bool:
    """A local folder whose data files are all CSV (``.csv`` or ``.csv.gz``)."""
    local = local_path(path)
    if local is None or not os.path.isdir(local):
        return False
    names = [n.lower() for _, _, files in os.walk(local) for n in files if not n.startswith(("_", "."))]
    return bool(names) and all(n.endswith((".csv", ".csv.gz")) for n in names)


def _is_dir_or_remote(path: str) -> bool:
    local = local_path(path)
    return local is None or os.path.isdir(local)


def display(uri: str) -> str:
    """A file URI as a user would write it (``file:/a/b%20c`` -> ``/a/b c``)."""
    local = local_path(uri)
    return local if local is not None else uri
