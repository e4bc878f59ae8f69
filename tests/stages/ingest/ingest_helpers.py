"""Helpers of the ingest tests (imported by name: this folder is on sys.path under pytest's default
import mode): tiny raw files written here, table rows in a stable order."""
from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

from longtail.core.config import IngestConfig

STRICT = IngestConfig(max_bad_rows=0)


def ts(*args: int) -> dt.datetime:
    # Spark returns naive datetimes in the session time zone, UTC in the tests' session.
    return dt.datetime(*args)


def write_file(path: Path, text: str, encoding: str = "utf-8") -> str:
    """Write ``text`` to ``path`` (gzipped when the name ends in ``.gz``); returns the path."""
    data = text.encode(encoding)
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return str(path)


def table_rows(wh, table: str, *cols: str) -> list[tuple]:
    """A table's rows (``cols``, or all columns) as sorted tuples, None last."""
    df = wh.read(table)
    rows = [tuple(r) for r in df.select(*(cols or df.columns)).collect()]
    return sorted(rows, key=lambda r: [(v is None, "" if v is None else v) for v in r])


def bad_jsonl(tmp_path: Path) -> str:
    return write_file(
        tmp_path / "events.jsonl",
        '{"user_id": "u1", "item_id": "i1", "timestamp": 1400000000}\n'
        '{"user_id": "u1", "item_id": "i2", "timestamp": 1400000001}\n'
        '{"user_id": "u2", "item_id": "i1", "timestamp": 14000\n',
    )
