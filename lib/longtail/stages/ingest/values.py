"""Ingest's values: the normalisers of ids, timestamps, ratings, item text, categories and
attributes, why a row cannot be used (:class:`Bad`), and the builder of the Arrow batches
that the parse step returns (:class:`Output`).

Pure Python and pyarrow, no Spark: everything here runs inside ``mapInArrow`` on the
executors.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from longtail.core import schemas

# Longest detail kept for a bad row's message.
_MAX_DETAIL = 160
#: Deepest nesting of lists and mappings a value may have. A fixed bound, so that whether a row
#: loads never depends on how much of Python's recursion limit the process has left (the
#: normalisers and ``json`` recurse); real records nest a few levels.
MAX_DEPTH = 100
#: A bad row's detail for values nested deeper.
TOO_DEEP = f"values nested more than {MAX_DEPTH} levels deep"


class Bad(Exception):
    """A row that cannot be used: ``reason`` is counted, ``detail`` goes into the message."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def require_key(rec: dict, key: str) -> Any:
    """``rec[key]``; a record without the key is a bad row (``missing <key>``)."""
    if key not in rec:
        raise Bad(f"missing {key}")
    return rec[key]


def too_deep(value: Any, text: str) -> bool:
    """Whether ``value``, parsed from ``text``, nests lists or mappings more than :data:`MAX_DEPTH`
    levels deep (walked without recursion, and only when ``text`` has that many brackets)."""
    if text.count("[") + text.count("{") + text.count("(") <= MAX_DEPTH:
        return False
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = node.values()
        elif not isinstance(node, (list, tuple, set, frozenset)):
            continue
        if depth >= MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in node)
    return False


def clip(value: Any) -> str:
    """A value's repr on one line, at most 60 characters (for a bad row's detail)."""
    text = repr(value)
    text = text.replace("\n", " ").replace("\r", " ")
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- normalisers


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
# Unix seconds beyond these are outside years 1..9999 (checked before scaling: "1e999999" overflows).
_MIN_S, _MAX_S = _MIN_US // 1_000_000 - 1, _MAX_US // 1_000_000 + 1
# A lone UTF-16 surrogate: JSON's "\ud800" escape decodes to one; Arrow (UTF-8) cannot hold it.
_SURROGATE = re.compile("[\ud800-\udfff]")


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
        micros = _decimal_micros(value)
    elif isinstance(value, dt.datetime):
        when = value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
        micros = (when - _EPOCH) // dt.timedelta(microseconds=1)
    elif isinstance(value, dt.date):
        micros = (dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc) - _EPOCH) // dt.timedelta(
            microseconds=1
        )
    elif isinstance(value, str):
        micros = _string_micros(value)
    else:
        raise ValueError(f"unsupported type {type(value).__name__}")
    if not _MIN_US <= micros <= _MAX_US:
        raise ValueError("outside years 1..9999 (unix seconds expected)")
    return micros


def _string_micros(value: str) -> int:
    """A string timestamp: unix seconds when it is a number, otherwise ISO-8601."""
    text = value.strip()
    if _NUMBER.fullmatch(text):
        try:
            return _decimal_micros(Decimal(text))
        except InvalidOperation:
            raise ValueError("not a number") from None
    return timestamp_micros(dt.datetime.fromisoformat(text))


def _decimal_micros(seconds: Decimal) -> int:
    """Microseconds of unix seconds given exactly; the range is checked first, so that a huge
    exponent is an error rather than a decimal overflow or an integer of a million digits."""
    if not seconds.is_finite() or not _MIN_S <= seconds <= _MAX_S:
        raise ValueError("outside years 1..9999 (unix seconds expected)")
    return int(seconds * 1_000_000)


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
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the largest float (JSON allows 400 digits)
        raise ValueError("too large") from None
    if math.isnan(number):
        return None
    if math.isinf(number):
        raise ValueError("infinite")
    return number


def normalize_text(value: Any) -> str | None:
    """Item text: lists (2018 descriptions) joined by spaces; blanks are None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, set, frozenset)):
        parts = [normalize_text(v) for v in _in_order(value)]
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
            except (ValueError, RecursionError):  # not JSON (or nested too deeply): plain text
                parsed = None
            if isinstance(parsed, list) and not too_deep(parsed, text):
                return normalize_categories(parsed)
        value = text.split("|")
    flat: list[str] = []

    def walk(v: Any) -> None:
        if v is None:
            return
        if isinstance(v, (list, tuple, set, frozenset)):
            for x in _in_order(v):
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
    try:
        return json.dumps(value, ensure_ascii=False, default=_jsonable)
    except TypeError:  # a Python-literal mapping with keys JSON cannot hold (tuples): its Python form
        return str(value)


def _jsonable(value: Any) -> Any:
    # Python-literal values JSON has no type for: a set as a sorted list, anything else as its text.
    return _in_order(value) if isinstance(value, (set, frozenset)) else str(value)


def _in_order(values: Any) -> Any:
    """A Python-literal set's items sorted (its own order depends on the process's string hash
    seed, so a rerun could load other text); a list or tuple as it is."""
    return sorted(values, key=repr) if isinstance(values, (set, frozenset)) else values


# --------------------------------------------------------------------------- a table's values


def _id_or_bad(value: Any, name: str) -> str:
    if isinstance(value, (list, tuple, dict, set, frozenset)):  # its repr would load as an id
        raise Bad(f"unparseable {name}", f"{clip(value)}: a {type(value).__name__}, not a string or number")
    ident = normalize_id(value)
    if ident is None:
        raise Bad(f"null {name}")
    return ident


def _attributes(raw: dict) -> list[tuple[str, str]]:
    """Map entries of the extra fields: keys as strings, values by :func:`attribute_value`,
    None values left out."""
    attrs = {str(k): attribute_value(v) for k, v in raw.items()}
    return [(k, v) for k, v in attrs.items() if v is not None]


def _interaction_values(rec: dict) -> list:
    user = _id_or_bad(rec["user_id"], "user_id")
    item = _id_or_bad(rec["item_id"], "item_id")
    if rec["timestamp"] is None or (isinstance(rec["timestamp"], str) and not rec["timestamp"].strip()):
        raise Bad("null timestamp")
    try:
        ts = timestamp_micros(rec["timestamp"])
    except (ValueError, OverflowError, TypeError) as exc:
        raise Bad("unparseable timestamp", f"{clip(rec['timestamp'])}: {exc}") from None
    try:
        rating = normalize_rating(rec["rating"])
    except (ValueError, TypeError) as exc:
        raise Bad("unparseable rating", f"{clip(rec['rating'])}: {exc}") from None
    return [user, item, ts, rating]


def _item_values(rec: dict) -> list:
    attrs = _attributes(rec["attributes"])
    return [
        _id_or_bad(rec["item_id"], "item_id"),
        normalize_text(rec["title"]),
        normalize_text(rec["description"]),
        normalize_categories(rec["categories"]),
        normalize_text(rec["brand"]),
        attrs,
    ]


def _user_values(rec: dict) -> list:
    attrs = _attributes(rec["attributes"])
    return [_id_or_bad(rec["user_id"], "user_id"), attrs]


# A format's record (the table's fields, raw) -> the table's normalised values, in column order.
_VALUES = {
    schemas.INTERACTIONS: _interaction_values,
    schemas.ITEMS: _item_values,
    schemas.USERS: _user_values,
}


def _arrow_fields(table: str, tz: str) -> tuple[list, list]:
    """``(name, Arrow type)`` of a table's columns, and of the reason and location columns."""
    import pyarrow as pa

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
    return data, meta


def _has_surrogate(values: list) -> bool:
    """Whether a row's values (strings, lists of strings, map entries) hold a lone surrogate,
    which would fail the whole Arrow batch, not just this row."""
    for value in values:
        for part in value if isinstance(value, list) else (value,):
            for text in part if isinstance(part, tuple) else (part,):
                if isinstance(text, str) and not text.isascii() and _SURROGATE.search(text):
                    return True
    return False


class Output:
    """Columns of one output batch: normalised table values plus reason and location."""

    def __init__(self, table: str, tz: str) -> None:
        import pyarrow as pa

        self.table = table
        data, meta = _arrow_fields(table, tz)
        self.fields = data + meta
        self.width = len(data)
        self.schema = pa.schema(self.fields)
        self._values = _VALUES[table]
        self._reset()

    def _reset(self) -> None:
        self.cols: list[list] = [[] for _ in self.fields]
        self.size = 0

    def add(self, rec: dict, file: str, split: int, row: int) -> None:
        """Append a record's normalised values; raises :class:`Bad` (appending nothing)."""
        try:
            values = self._values(rec)
        except RecursionError:  # lists in lists deeper than the normalisers recurse
            raise Bad("malformed line", TOO_DEEP) from None
        if _has_surrogate(values):
            raise Bad("invalid encoding", "a lone surrogate escape (\\ud800-\\udfff) in a string")
        for col, v in zip(self.cols, values):
            col.append(v)
        self._meta(None, None, file, split, row)

    def bad(self, bad: Bad, file: str, split: int, row: int) -> None:
        """Append a bad row: null values, its reason and (clipped, one-line) detail."""
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

    def flush(self):
        """The rows added so far as one Arrow record batch; starts a new batch."""
        import pyarrow as pa

        arrays = [pa.array(col, type=f[1]) for col, f in zip(self.cols, self.fields)]
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        self._reset()
        return batch
