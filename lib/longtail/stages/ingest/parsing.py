"""Executor side of ingest: raw lines (or Parquet rows) -> Arrow batches of normalised rows.

Runs inside ``mapInArrow``. Lines arrive as bytes with their file and split; they are
numbered per split (so that an error can name the file and line), decoded, split into
fields by the source's syntax (``::``, JSON or Python literal), mapped to the table's
fields by the format's records and normalised. CSV files are read whole, one file at a time,
by Python's CSV reader (:func:`parse_csv_files`): quoted fields may hold commas, quotes and
line breaks, and every file's own header names its columns. A row that cannot be used carries a reason
(:class:`~.values.Bad`) instead of values. The closures shipped to the executors carry plain
values only and import this module there.
"""
from __future__ import annotations

import ast
import csv
import json
import re
from typing import Any, Callable, Iterator

from longtail.stages.ingest import amazon, files, movielens
from longtail.stages.ingest.sources import Source
from longtail.stages.ingest.values import TOO_DEEP, Bad, Output, too_deep

# Location columns appended to Parquet rows before parsing (unlikely to clash with data).
PQ_FILE, PQ_ROW = "__longtail_file", "__longtail_row"

# Each format's records per table: a parsed line or row -> the table's fields.
_RECORDS = {"files": files.RECORDS, "amazon": amazon.RECORDS, "movielens": movielens.RECORDS}


def csv_parser(table: str, tz: str) -> Callable:
    """The ``mapInArrow`` function reading whole CSV files (``file``: a URI per row)."""
    def parse(batches):
        from longtail.stages.ingest.parsing import parse_csv_files

        return parse_csv_files(batches, table, tz)

    return parse


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
    """Batches of raw lines -> batches of the table's rows, one per line that is not blank;
    lines are numbered from 0 within each (file, split)."""
    table, syntax = spec["table"], spec["syntax"]
    encoding, columns = spec["encoding"], tuple(spec["columns"])
    out = Output(table, spec["tz"])
    to_record = _RECORDS[spec["dialect"]][table]
    row_in_split: dict[tuple[str, int], int] = {}
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
                rec = _fields(text, syntax, columns)
                if rec is not None:
                    out.add(to_record(rec), file, split, row)
            except Bad as bad:
                out.bad(bad, file, split, row)
        if out.size:
            yield out.flush()
    if out.size:
        yield out.flush()


def parse_csv_files(batches: Iterator, table: str, tz: str) -> Iterator:
    """Batches of CSV file URIs -> batches of the table's rows, every file read whole by Python's
    CSV reader (RFC 4180 quoting, fields spanning lines) with its own header: columns are matched
    by name in every file. A row's location is the line its record starts on."""
    out = Output(table, tz)
    to_record = files.RECORDS[table]
    for batch in batches:
        for uri in batch.column(0).to_pylist():
            for rec, line, bad in csv_records(uri):
                try:
                    if bad is not None:
                        raise bad
                    out.add(to_record(rec), uri, 0, line - 1)
                except Bad as problem:
                    out.bad(problem, uri, 0, line - 1)
                if out.size >= 4096:
                    yield out.flush()
    if out.size:
        yield out.flush()


def csv_records(uri: str, encoding: str = "utf-8") -> Iterator[tuple[dict | None, int, Bad | None]]:
    """``(record by header name, first line, None)`` or ``(None, line, Bad)`` for each CSV record.

    The first non-blank record is the header; blank lines are not records; blank fields are None.

    Raises:
        OSError: the file cannot be read (``FAILED_READ_FILE`` and the URI in the message).
    """
    import io

    from longtail.core.files import filesystem

    fs, path = filesystem(uri)
    compression = "gzip" if uri.lower().endswith(".gz") else None
    try:
        with fs.open_input_stream(path, compression=compression) as raw:
            text = io.TextIOWrapper(raw, encoding=encoding, errors="surrogateescape", newline="")
            reader = csv.reader(text, strict=True)
            header: tuple[str, ...] | None = None
            start = 1
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield None, start, Bad("malformed line", f"CSV: {exc}")
                    start = reader.line_num + 1
                    continue
                line, start = start, reader.line_num + 1
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue  # blank lines are not records
                if header is None:
                    header = tuple(h.strip() for h in fields)
                    header = (header[0].lstrip("\ufeff"), *header[1:])
                    continue
                if len(fields) != len(header):
                    yield None, line, Bad("malformed line", f"{len(fields)} CSV fields, header has {len(header)}")
                    continue
                if any(_undecodable(v) for v in fields):
                    yield None, line, Bad("invalid encoding", f"not {encoding}")
                    continue
                yield {k: (v if v != "" else None) for k, v in zip(header, fields)}, line, None
    except (OSError, EOFError, ValueError) as exc:
        raise OSError(f"FAILED_READ_FILE {uri}: {' '.join(str(exc).split())}") from None


def csv_header(uri: str, encoding: str = "utf-8") -> tuple[str, ...] | None:
    """The header (first non-blank record) of a CSV file; None for a file without one.

    Raises:
        ValueError: the header is not in ``encoding`` (a bad byte in a later record is that
            record's problem: :func:`csv_records` marks it).
    """
    import io

    from longtail.core.files import filesystem

    fs, path = filesystem(uri)
    compression = "gzip" if uri.lower().endswith(".gz") else None
    with fs.open_input_stream(path, compression=compression) as raw:
        # Not strict: the reader decodes blocks ahead of the header, which may hold a bad row.
        text = io.TextIOWrapper(raw, encoding=encoding, errors="surrogateescape", newline="")
        for fields in csv.reader(text, strict=True):
            if fields and not (len(fields) == 1 and not fields[0].strip()):
                names = tuple(h.strip() for h in fields)
                if any(_undecodable(n) for n in names):
                    raise ValueError(f"the header line is not {encoding}")
                return (names[0].lstrip("\ufeff"), *names[1:])
    return None


def _undecodable(value: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in value)


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


def _fields(text: str, syntax: str, columns: tuple) -> dict:
    """A line's fields by name (JSON, Python literal or ``::``-separated)."""
    if syntax == "dat":
        return movielens.split_line(text, columns)
    return parse_object(text, literal=(syntax == "json_or_literal"))


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
        except RecursionError:  # deeper than the recursion limit, so deeper than MAX_DEPTH too
            raise Bad("malformed line", TOO_DEEP) from None
        except ValueError as exc:
            if not literal:
                hint = "; expected one JSON object per line" if stripped.startswith("[") else ""
                raise Bad("malformed line", f"JSON: {exc}{hint}") from None
            obj = _literal(stripped, json_error=str(exc))
    if too_deep(obj, stripped):
        raise Bad("malformed line", TOO_DEEP)
    if not isinstance(obj, dict):
        hint = "; expected one JSON object per line" if isinstance(obj, list) else ""
        raise Bad("malformed line", f"expected an object, got {type(obj).__name__}{hint}")
    return obj


def _literal(text: str, json_error: str | None = None) -> Any:
    # ast.literal_eval only builds literals (never calls or names): safe for untrusted lines.
    try:
        tree = ast.parse(text, mode="eval")
        if _LONG_RADIX_INT.search(text):
            _check_int_sizes(tree)
        return ast.literal_eval(tree)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        # literal_eval names a node it refuses by its repr, with a memory address: name its type.
        problem = re.sub(r"<ast\.(\w+) object at 0x[0-9a-fA-F]+>", r"\1", str(exc))
        what = f"JSON: {json_error}" if json_error else f"Python literal: {exc.__class__.__name__}: {problem}"
        raise Bad("malformed line", f"neither JSON nor a Python literal ({what})") from None


# About 4,200 decimal digits: Python prints no integer of more than 4,300 (ids, attributes and
# messages print them). It reads no longer decimal literal either, but hex, octal and binary
# literals of any length: only text with a long one is checked.
_MAX_INT_BITS = 14_000
_LONG_RADIX_INT = re.compile(r"0[xXoObB][0-9a-fA-F_]{1000}")


def _check_int_sizes(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and node.value.bit_length() > _MAX_INT_BITS:
            raise ValueError(f"an integer of {node.value.bit_length()} bits, more than Python prints")
