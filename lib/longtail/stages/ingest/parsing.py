"""Executor side of ingest: raw lines (or Parquet rows) -> Arrow batches of normalised rows.

Runs inside ``mapInArrow``. Lines arrive as bytes with their file and split; they are
numbered per split (so that an error can name the file and line), decoded, split into
fields by the source's syntax (CSV, ``::``, JSON or Python literal), mapped to the table's
fields by the format's records and normalised. A row that cannot be used carries a reason
(:class:`~.values.Bad`) instead of values. The closures shipped to the executors carry plain
values only and import this module there.
"""
from __future__ import annotations

import ast
import csv
import json
from typing import Any, Callable, Iterator

from longtail.stages.ingest import amazon, files, movielens
from longtail.stages.ingest.sources import Source
from longtail.stages.ingest.values import Bad, Output

# Location columns appended to Parquet rows before parsing (unlikely to clash with data).
PQ_FILE, PQ_ROW = "__longtail_file", "__longtail_row"

# Each format's records per table: a parsed line or row -> the table's fields.
_RECORDS = {"files": files.RECORDS, "amazon": amazon.RECORDS, "movielens": movielens.RECORDS}


def line_parser(src: Source, tz: str) -> Callable:
    """The ``mapInArrow`` function parsing ``src``'s lines (``line``, ``file``, ``split``)."""
    spec = {
        "table": src.table, "syntax": src.syntax, "dialect": src.dialect,
        "encoding": src.encoding, "columns": src.columns, "tz": tz,
    }

    def parse(batches):
        from longtail.stages.ingest.parsing import parse_line_batches

        return parse_line_batches(batches, spec)

    return parse


def parquet_parser(table: str, tz: str) -> Callable:
    """The ``mapInArrow`` function normalising Parquet rows (with :data:`PQ_FILE`, :data:`PQ_ROW`)."""
    def parse(batches):
        from longtail.stages.ingest.parsing import parse_parquet_batches

        return parse_parquet_batches(batches, table, tz)

    return parse


def parse_line_batches(batches: Iterator, spec: dict) -> Iterator:
    """Batches of raw lines -> batches of the table's rows, one per line that is not blank
    (nor a CSV header); lines are numbered from 0 within each (file, split)."""
    table, syntax = spec["table"], spec["syntax"]
    encoding, columns = spec["encoding"], tuple(spec["columns"])
    out = Output(table, spec["tz"])
    to_record = _RECORDS[spec["dialect"]][table]
    row_in_split: dict[tuple[str, int], int] = {}
    headers: dict[str, tuple[str, ...]] = {}
    for batch in batches:
        lines = batch.column(0).to_pylist()
        uris = batch.column(1).to_pylist()
        splits = batch.column(2).to_pylist()
        for raw, file, split in zip(lines, uris, splits):
            key = (file, split)
            row = row_in_split.get(key, 0)
            row_in_split[key] = row + 1
            try:
                text = _decode(raw, encoding, first=(row == 0 and split == 0))
                if not text.strip():
                    continue  # blank lines are not rows
                rec = _fields(text, syntax, columns, headers, file, split)
                if rec is not None:
                    out.add(to_record(rec), file, split, row)
            except Bad as bad:
                out.bad(bad, file, split, row)
        if out.size:
            yield out.flush()
    if out.size:
        yield out.flush()


def parse_parquet_batches(batches: Iterator, table: str, tz: str) -> Iterator:
    """Batches of Parquet rows (``files`` columns plus location) -> batches of the table's rows."""
    out = Output(table, tz)
    to_record = files.RECORDS[table]
    for batch in batches:
        for rec in batch.to_pylist():
            file, row = rec.pop(PQ_FILE), rec.pop(PQ_ROW)
            try:
                out.add(to_record(rec), file, 0, row)
            except Bad as bad:
                out.bad(bad, file, 0, row)
        if out.size:
            yield out.flush()


def _decode(raw: bytes, encoding: str, first: bool) -> str:
    """A line's text; ``first`` (a file's first line) loses its byte-order mark."""
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise Bad("invalid encoding", f"not {encoding}: {exc.reason} at byte {exc.start}") from None
    return text.lstrip("\ufeff") if first else text


def _fields(text: str, syntax: str, columns: tuple, headers: dict, file: str, split: int) -> dict | None:
    """A line's fields by name; None for a CSV file's header line."""
    if syntax == "csv":
        return _csv_record(text, columns, headers, file, split)
    if syntax == "dat":
        return movielens.split_line(text, columns)
    return parse_object(text, literal=(syntax == "json_or_literal"))


def _csv_record(text: str, columns: tuple, headers: dict, file: str, split: int) -> dict | None:
    """A CSV line by its file's header (``columns``, the first file's, in later splits);
    blank fields are None. The first line of a file's first split is its header: None."""
    if split == 0 and file not in headers:
        # This file's own header: files of one folder may order columns differently.
        headers[file] = tuple(h.strip() for h in csv_fields(text))
        return None
    fields = headers.get(file, columns)
    values = csv_fields(text)
    if len(values) != len(fields):
        raise Bad("malformed line", f"{len(values)} CSV fields, header has {len(fields)}")
    return {k: (v if v != "" else None) for k, v in zip(fields, values)}


def csv_fields(text: str) -> list[str]:
    """The fields of one CSV line; raises :class:`Bad` (malformed line) when it is not CSV."""
    try:
        return next(csv.reader([text.rstrip("\r\n")], strict=True))
    except (csv.Error, StopIteration) as exc:
        raise Bad("malformed line", f"CSV: {exc}") from None


def parse_object(text: str, literal: bool) -> dict:
    """One JSON object per line; with ``literal``, a Python dict literal too (Amazon 2014 metadata).

    Raises:
        Bad: malformed line (neither syntax, or not an object).
    """
    stripped = text.strip()
    if literal and stripped.startswith("{'"):
        obj = _literal(stripped)
    else:
        try:
            obj = json.loads(stripped)
        except ValueError as exc:
            if not literal:
                hint = "; expected one JSON object per line" if stripped.startswith("[") else ""
                raise Bad("malformed line", f"JSON: {exc}{hint}") from None
            obj = _literal(stripped, json_error=str(exc))
    if not isinstance(obj, dict):
        hint = "; expected one JSON object per line" if isinstance(obj, list) else ""
        raise Bad("malformed line", f"expected an object, got {type(obj).__name__}{hint}")
    return obj


def _literal(text: str, json_error: str | None = None) -> Any:
    # ast.literal_eval only builds literals (never calls or names): safe for untrusted lines.
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        what = f"JSON: {json_error}" if json_error else f"Python literal: {exc.__class__.__name__}: {exc}"
        raise Bad("malformed line", f"neither JSON nor a Python literal ({what})") from None
