"""Generated bad input for ingest (hypothesis): every generated raw file either loads or fails with
one line naming the file and line, never a trace, and no table changes.

Two layers:

- Spark-free, many cases: the executor-side parsers (:mod:`longtail.stages.ingest.parsing`, the
  functions Spark's ``mapInArrow`` calls) on generated lines and CSV files of every format, and the
  normalisers (:mod:`longtail.stages.ingest.values`) on generated values. Every row is either values
  that satisfy the table's contract or a bad row with a known reason; no exception escapes.
- End to end, few cases (each is a Spark job): ``longtail ingest`` (``longtail.cli.main``) on
  generated file sets of each format into a warehouse holding a good ingest. Exit status 0 with the
  rows the Spark-free parsers find in the same bytes, or 2 with one ``error:`` line naming the file
  and the line of the first bad row the parsers find (or the file and what is wrong with it), no
  trace, and every table at its version before.

Records are mutations of real-looking ones (fields of the wrong type, missing or extra, huge
numbers, NaN and infinity, odd timestamps, nested values where scalars belong, lone surrogates),
lines are mutated (truncated, bad UTF-8, a BOM, NUL, deep nesting), CSV files get quotes, line
breaks and wrong field counts. The seed corpus (``tests/corpus/ingest/``) always runs: every file
through the Spark-free layer, the good ``files`` set and two bad files end to end.
``LONGTAIL_FAULTS_FULL=1`` runs 15x as many generated cases, and every seed end to end.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as dt
import gzip
import io
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from fuzz_settings import FULL, bounded
from hypothesis import example, given
from hypothesis import strategies as st
from longtail.core.errors import LongtailError
from longtail.stages.ingest import values as V
from longtail.stages.ingest.parsing import csv_header, csv_parser, line_parser
from longtail.stages.ingest.read import csv_files
from longtail.stages.ingest.sources import TABLES, Source, display, plan_source

CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "ingest"
INTERACTIONS, ITEMS, USERS = TABLES

# --------------------------------------------------------------------------- values

LONE_SURROGATES = st.sampled_from(["\ud800", "x\udfffy", "\udc80", "half \ud83d"])
ODD_TEXT = st.sampled_from(
    ["", " ", "\t", "::", "a::b", 'say "hi"', "a,b", "two\nlines", "cr\rhere", "\ufeffbom", "é", "名前", "\x00",
     "\\", "'", "{", "[1, 2]", '["a", "b"]', "null", "NaN", "a|b||a", " padded "]
)
TEXT = st.one_of(st.text(max_size=8), ODD_TEXT, LONE_SURROGATES)
HUGE = st.integers(309, 420).flatmap(lambda n: st.sampled_from([10**n, -(10**n) + 1]))
NUMBERS = st.one_of(
    st.integers(-(2**63), 2**63),
    HUGE,
    st.floats(),
    st.sampled_from([0, -0.0, 1e308, 5e-324, math.nan, math.inf, -math.inf, 1.5, 5]),
)
TIMESTAMP_TEXT = st.sampled_from(
    ["1400000000", " 1400000000.5 ", "1e9", "1e999999", "1e500000", "-1e20", "2014-05-13", "2014-05-13T16:53:20Z",
     "2014-05-13 02:00:00+02:00", "2014-02-30", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
     "9999-12-31T23:59:59.999999", "10000-01-01", "soon", "1400000000000", "١٤٠٠٠٠٠٠٠٠", "14_0000_0000", "0x10",
     "nan", "inf", "+1", ".5", "5.", "253402300800", "-62135596801", "2014-05-13T25:00", "T"]
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT, TIMESTAMP_TEXT)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


class Raw:
    """Python-literal text written as it is (``0xfff...``: an integer too long for Python to print)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


# Values only a Python literal (Amazon 2014 metadata) can hold.
LITERAL_ONLY = st.sampled_from(
    [{(1, 2): "tuple key"}, {"b", "a", "c"}, frozenset(), b"\xffbytes", 1 + 2j, (1, "a"), {None: 1, 2.5: [3]},
     Raw("0x" + "f" * 4000), Raw("-0b" + "1" * 15000), Raw("[" * 150 + "]" * 150), Raw("__import__('os')")]
)

GOOD_ID = st.one_of(st.from_regex(r"[A-Za-z0-9]{1,6}", fullmatch=True), st.integers(0, 10**6))
GOOD_TS = st.integers(0, 2_000_000_000)
GOOD_RATING = st.one_of(st.none(), st.integers(1, 5), st.sampled_from([1.5, 4.0]))
WORD = st.from_regex(r"[A-Za-z][A-Za-z ]{0,8}", fullmatch=True)
GOOD_LATIN = st.text(alphabet="abcdeéèüßÆ ()1234567890", min_size=1, max_size=10)

# A real-looking record per (format, table), as its fields.
GOOD = {
    ("files", INTERACTIONS): st.fixed_dictionaries(
        {"user_id": GOOD_ID, "item_id": GOOD_ID, "timestamp": GOOD_TS, "rating": GOOD_RATING}),
    ("files", ITEMS): st.fixed_dictionaries(
        {"item_id": GOOD_ID, "title": WORD, "description": WORD, "categories": st.lists(WORD, max_size=3),
         "brand": WORD, "price": st.floats(0, 100)}),
    ("files", USERS): st.fixed_dictionaries({"user_id": GOOD_ID, "country": WORD, "age": st.integers(0, 99)}),
    ("amazon", INTERACTIONS): st.fixed_dictionaries(
        {"reviewerID": GOOD_ID, "asin": GOOD_ID, "overall": st.sampled_from([1.0, 2.0, 3.0, 4.0, 5.0]),
         "unixReviewTime": GOOD_TS, "reviewText": WORD, "helpful": st.lists(st.integers(0, 9), max_size=2)}),
    ("amazon", ITEMS): st.fixed_dictionaries(
        {"asin": GOOD_ID, "title": WORD, "description": st.one_of(WORD, st.lists(WORD, max_size=2)),
         "categories": st.lists(st.lists(WORD, max_size=3), max_size=2), "brand": WORD,
         "price": st.floats(0, 100), "salesRank": st.dictionaries(WORD, st.integers(1, 10**6), max_size=1),
         "related": st.fixed_dictionaries({"also_bought": st.lists(GOOD_ID, max_size=2)})}),
    ("movielens", INTERACTIONS): st.fixed_dictionaries(
        {"user_id": st.integers(1, 6040), "item_id": st.integers(1, 3952), "rating": st.integers(1, 5),
         "timestamp": GOOD_TS}),
    ("movielens", ITEMS): st.fixed_dictionaries(
        {"item_id": st.integers(1, 3952), "title": GOOD_LATIN, "genres": st.sampled_from(["Drama", "Drama|Musical"])}),
    ("movielens", USERS): st.fixed_dictionaries(
        {"user_id": st.integers(1, 6040), "gender": st.sampled_from(["F", "M"]), "age": st.integers(1, 56),
         "occupation": st.integers(0, 20), "zip_code": st.from_regex(r"[0-9]{5}", fullmatch=True)}),
}


@st.composite
def records(draw, fmt: str, table: str) -> dict:
    """A real-looking record, perhaps with fields of any value, dropped or added."""
    rec = draw(GOOD[fmt, table])
    keys = sorted(rec)
    literal = fmt == "amazon"
    wild = st.one_of(VALUES, LITERAL_ONLY) if literal else VALUES
    for key, value in draw(st.dictionaries(st.sampled_from(keys), wild, max_size=2)).items():
        rec[key] = value
    for key in draw(st.lists(st.sampled_from(keys), max_size=1)):
        rec.pop(key, None)
    rec.update(draw(st.dictionaries(st.text(max_size=6), wild, max_size=2)))
    if fmt == "amazon" and table == INTERACTIONS and draw(st.booleans()):
        # 2018 lines may have only the human date.
        rec.pop("unixReviewTime", None)
        rec["reviewTime"] = draw(st.one_of(st.sampled_from(["03 6, 2018", "13 45, 2014", "02 29, 2015", ""]), VALUES))
    return rec


def serialize(rec: dict, fmt: str, table: str, how: str) -> bytes:
    """One line of a record: JSON, a Python literal (Amazon) or ``::`` fields (MovieLens)."""
    if fmt == "movielens":
        from longtail.stages.ingest.movielens import FIELDS

        text = "::".join("" if rec.get(f) is None else str(rec.get(f)) for f in FIELDS[table] if f in rec)
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:
            return text.encode("utf-8", "surrogatepass")  # read as latin-1 anyway
    if how == "literal" or (fmt == "amazon" and _literal_only(rec)):
        return repr(rec).encode("utf-8", "surrogatepass")
    return json.dumps(rec, ensure_ascii=how == "json_ascii").encode("utf-8", "surrogatepass")


def _literal_only(value: Any) -> bool:
    if isinstance(value, dict):
        return any(not isinstance(k, str) or _literal_only(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_literal_only(v) for v in value)
    return not isinstance(value, (str, int, float, bool, type(None)))


LINE_MUTATIONS = st.one_of(
    st.just(None), st.just(None), st.just(None), st.just(None),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("insert"), st.floats(0, 1),
              st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00", b'"', b"'", b"{",
                               b"::", b",", b"\\", b"\xef\xbb\xbf"])),
    st.tuples(st.just("replace"), st.binary(max_size=24)),
    st.tuples(st.just("deep"), st.integers(100, 1200)),
    st.just(("bom",)), st.just(("blank",)),
)


def mutate(line: bytes, mutation: Any) -> bytes:
    if mutation is None:
        return line
    kind = mutation[0]
    if kind == "truncate":
        return line[: int(len(line) * mutation[1])]
    if kind == "insert":
        at = int(len(line) * mutation[1])
        return line[:at] + mutation[2] + line[at:]
    if kind == "replace":
        return mutation[1]
    if kind == "deep":  # nesting deeper than Python's recursion limit, or just below it
        n = mutation[1]
        return b'{"item_id": "i", "user_id": "u", "asin": "a", "title": ' + b"[" * n + b"1" + b"]" * n + b"}"
    if kind == "bom":
        return b"\xef\xbb\xbf" + line
    return b"  \t "


@st.composite
def lines_of(draw, fmt: str, table: str, max_lines: int = 6, clean: int = 0) -> list[bytes]:
    """Lines of a line-based file (JSON lines, Amazon, MovieLens ``.dat``), each perhaps mutated;
    with ``clean`` = k, about k of k + 1 lines are real-looking records as they are."""
    how = st.sampled_from(["json", "json_ascii", "literal"] if fmt == "amazon" else ["json", "json_ascii"])
    out = []
    for _ in range(draw(st.integers(1 if clean else 0, max_lines))):
        if draw(st.integers(0, clean)) > 0:
            out.append(serialize(draw(GOOD[fmt, table]), fmt, table, draw(how)))
            continue
        line = serialize(draw(records(fmt, table)), fmt, table, draw(how))
        out.append(mutate(line, draw(LINE_MUTATIONS)))
    return out


# --------------------------------------------------------------------------- CSV files

CSV_COLUMNS = {
    INTERACTIONS: ["user_id", "item_id", "timestamp", "rating"],
    ITEMS: ["item_id", "title", "description", "categories", "brand", "price"],
    USERS: ["user_id", "country", "age"],
}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


@st.composite
def csv_files_of(draw, table: str, clean: int = 0) -> bytes:
    """A CSV file: a header (perhaps lacking, repeating or padding a column), records of any values
    with any quoting, then perhaps a mutation of the text (an unbalanced quote, bad bytes, a BOM);
    with ``clean`` = k, about k of k + 1 records, header and texts are left as they are."""
    columns = list(CSV_COLUMNS[table])
    kinds = ["missing", "repeated", "padded", "extra", "none"]
    header_kind = draw(st.sampled_from(["plain"] * (6 + 5 * clean) + kinds))
    if header_kind == "missing":
        columns.remove(draw(st.sampled_from(columns[:2])))
    elif header_kind == "repeated":
        columns.append(columns[0])
    elif header_kind == "extra":
        columns.append(draw(st.text(max_size=5)))
    header = [f" {c} " for c in columns] if header_kind == "padded" else columns
    out = io.StringIO()
    writer = csv.writer(out, quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC])),
                        lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    if header_kind != "none":
        writer.writerow(header)
    for _ in range(draw(st.integers(1 if clean else 0, 5))):
        rec = draw(GOOD["files", table] if draw(st.integers(0, clean)) > 0 else records("files", table))
        row = [_cell(rec.get(c.strip())) for c in columns]
        extra = draw(st.sampled_from([0] * 8 + [-1, 1]))
        row = row[:extra] if extra < 0 else row + ["x"] * extra
        if draw(st.integers(0, 9)) == 0:
            out.write("\n")  # a blank line
        writer.writerow(row)
    data = out.getvalue().encode("utf-8", "surrogatepass")
    mutation = draw(st.sampled_from([None] * (5 + 6 * clean) + ["quote", "bytes", "bom", "truncate", "cr", "nul"]))
    at = draw(st.integers(0, len(data)))
    if mutation == "quote":
        data = data[:at] + b'"' + data[at:]
    elif mutation == "bytes":
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80"])) + data[at:]
    elif mutation == "bom":
        data = b"\xef\xbb\xbf" + data
    elif mutation == "truncate":
        data = data[:at]
    elif mutation == "cr":
        data = data[:at] + b"\r" + data[at:]
    elif mutation == "nul":
        data = data[:at] + b"\x00" + data[at:]
    return data


# --------------------------------------------------------------------------- the Spark-free parsers


def hadoop_lines(data: bytes) -> list[bytes]:
    """A text file's lines as Spark's text source splits them (``\\n``, ``\\r\\n`` or ``\\r``)."""
    lines = re.split(rb"\r\n|\r|\n", data)
    if lines[-1] == b"":
        lines.pop()
    return lines


def _rows(batches) -> list[dict]:
    """Parsed rows as dicts, timestamps as microseconds."""
    rows = []
    for batch in batches:
        if "ts" in batch.schema.names:
            i = batch.schema.get_field_index("ts")
            batch = batch.set_column(i, "ts", batch.column(i).cast(pa.int64()))
        rows += batch.to_pylist()
    return rows


def parse_lines(src: Source, lines: list[bytes], uri: str, batch_rows: int = 4) -> list[dict]:
    """What Spark's ``mapInArrow`` function for ``src`` makes of these lines (split 0 of ``uri``)."""
    batches = [
        pa.RecordBatch.from_arrays(
            [pa.array(chunk, pa.binary()), pa.array([uri] * len(chunk), pa.string()),
             pa.array([0] * len(chunk), pa.int64())],
            names=["line", "file", "split"],
        )
        for chunk in (lines[i: i + batch_rows] for i in range(0, len(lines), batch_rows))
    ]
    return _rows(line_parser(src, "UTC")(iter(batches)))


def parse_csv(table: str, uri: str) -> list[dict]:
    batch = pa.RecordBatch.from_arrays([pa.array([uri], pa.string())], names=["file"])
    return _rows(csv_parser(table, "UTC")(iter([batch])))


REASONS = re.compile(r"malformed line|invalid encoding|missing [A-Za-z_]+|null (user_id|item_id|timestamp)"
                     r"|unparseable (timestamp|rating|user_id|item_id)")
MIN_US = -62135596800 * 10**6
MAX_US = 253402300799999999


def _stripped(value: Any) -> bool:
    return isinstance(value, str) and value != "" and value == value.strip()


def check_rows(table: str, rows: list[dict]) -> None:
    """Every row: values that keep the table's contract, or a known reason and no values."""
    for r in rows:
        data = {k: v for k, v in r.items() if not k.startswith("_")}
        assert isinstance(r["_file"], str) and r["_row"] >= 0 and r["_split"] >= 0, r
        if r["_reason"] is not None:
            assert REASONS.fullmatch(r["_reason"]), r
            assert all(v is None for v in data.values()), r
            detail = r["_detail"]
            assert detail is None or (len(detail) <= 160 and "\n" not in detail and "\r" not in detail), r
            continue
        assert r["_detail"] is None, r
        if table == INTERACTIONS:
            assert _stripped(r["user_id"]) and _stripped(r["item_id"]), r
            assert MIN_US <= r["ts"] <= MAX_US, r
            assert r["rating"] is None or math.isfinite(r["rating"]), r
        elif table == ITEMS:
            assert _stripped(r["item_id"]), r
            assert all(r[c] is None or _stripped(r[c]) for c in ("title", "description", "brand")), r
            cats = r["categories"]
            assert all(_stripped(c) for c in cats) and len(set(cats)) == len(cats), r
        else:
            assert _stripped(r["user_id"]), r
        if table != INTERACTIONS:
            keys = [k for k, _ in r["attributes"]]
            assert len(set(keys)) == len(keys) and all(isinstance(v, str) for _, v in r["attributes"]), r


def _blank(line: bytes, encoding: str, first: bool) -> bool:
    """Whether the parser skips this line (it decodes to whitespace)."""
    try:
        text = line.decode(encoding)
    except UnicodeDecodeError:
        return False
    return not (text.lstrip("\ufeff") if first else text).strip()


def check_line_rows(src: Source, lines: list[bytes], rows: list[dict]) -> None:
    """One row per line that is not blank, numbered by line, in order."""
    check_rows(src.table, rows)
    expected = [i for i, line in enumerate(lines) if not _blank(line, src.encoding, first=i == 0)]
    assert [r["_row"] for r in rows] == expected


def source(fmt: str, table: str) -> Source:
    """How ingest reads a line-based file of ``fmt`` for ``table`` (a seed's name picks the reader)."""
    name = {"files": "files/good_items.jsonl", "amazon": "amazon/good_reviews.json",
            "movielens": "movielens/good_ratings.dat"}[fmt]
    return plan_source(table, fmt, str(CORPUS / name))


LINE_KINDS = [(fmt, t) for fmt in ("files", "amazon", "movielens") for t in TABLES
              if not (fmt == "amazon" and t == USERS)]


@bounded(30)
@given(data=st.data())
@example(data=None)  # the inputs of _LINE_EXAMPLES
def test_line_parsers_give_values_or_a_reason_per_line(data):
    cases = _LINE_EXAMPLES if data is None else []
    if data is not None:
        fmt, table = data.draw(st.sampled_from(LINE_KINDS))
        cases = [(fmt, table, data.draw(lines_of(fmt, table, max_lines=12)))]
    for fmt, table, lines in cases:
        src = source(fmt, table)
        check_line_rows(src, lines, parse_lines(src, lines, "file:/raw/x"))


# Lines whose exception escaped the parser (failing the whole Spark task) before the fixes: found
# by the generator, or by probing around what it found; kept as explicit examples.
_LINE_EXAMPLES = [
    ("files", INTERACTIONS, [b'{"user_id": "u", "item_id": "i", "timestamp": 1, "rating": 1' + b"0" * 400 + b"}"]),
    ("files", INTERACTIONS, [b'{"user_id": "u", "item_id": "i", "timestamp": "1e999999"}']),
    ("files", ITEMS, [b'{"item_id": "i", "title": "\\ud800"}', b'{"item_id": "j", "title": "ok"}']),
    ("files", ITEMS, [b"[" * 5000]),
    ("files", ITEMS, [b'{"item_id": "i", "categories": "' + b"[" * 5000 + b'"}']),
    ("amazon", ITEMS, [b"{'asin': 'a', 'description': " + b"[" * 600 + b"]" * 600 + b"}"]),
    ("amazon", ITEMS, [b'{"asin": "a", "description": ' + b"[" * 600 + b"]" * 600 + b"}"]),
    ("amazon", ITEMS, [b"{'asin': 'a', 'salesRank': {(1, 2): 3}}"]),
    ("amazon", ITEMS, [b"{'asin': 0x" + b"f" * 4000 + b"}"]),
    ("amazon", INTERACTIONS, [b"{'reviewerID': 'u', 'asin': 'a', 'unixReviewTime': 0x" + b"f" * 4000 + b"}"]),
    ("amazon", INTERACTIONS, [b"{'reviewerID': 'u', 'asin': 'a', 'unixReviewTime': 1, 'overall': '\\udc80'}"]),
    ("files", USERS, [b'{"user_id": "u", "x": {"\\ud800": 1}}']),
    ("movielens", INTERACTIONS, [b"1::2::3::1e999999", b"\xef\xbb\xbf1::2::3::4"]),
]


@bounded(30)
@given(data=st.data())
def test_valid_records_parse_to_their_values(data):
    """Real-looking records without mutations load as themselves (a check that can fail: a parser
    that marks everything bad passes the test above)."""
    fmt, table = data.draw(st.sampled_from(LINE_KINDS))
    recs = data.draw(st.lists(GOOD[fmt, table], min_size=1, max_size=5))
    how = data.draw(st.sampled_from(["json", "json_ascii", "literal"] if fmt == "amazon" else ["json"]))
    src = source(fmt, table)
    rows = parse_lines(src, [serialize(r, fmt, table, how) for r in recs], "file:/raw/x")
    assert [r["_reason"] for r in rows] == [None] * len(recs)
    for rec, row in zip(recs, rows):
        if table == INTERACTIONS:
            user, item, ts, rating = _interaction_fields(fmt, rec)
            assert (row["user_id"], row["item_id"], row["ts"]) == (str(user), str(item), ts * 10**6)
            assert row["rating"] == (None if rating is None else float(rating))
        elif table == ITEMS:
            assert row["item_id"] == str(rec["asin" if fmt == "amazon" else "item_id"])
            assert row["title"] == (rec["title"].strip() or None)
        else:
            assert row["user_id"] == str(rec["user_id"])
            assert dict(row["attributes"]) == {k: str(v) for k, v in rec.items() if k != "user_id"}


def _interaction_fields(fmt: str, rec: dict) -> tuple:
    if fmt == "amazon":
        return rec["reviewerID"], rec["asin"], rec["unixReviewTime"], rec["overall"]
    return rec["user_id"], rec["item_id"], rec["timestamp"], rec["rating"]


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(gzip.compress(data, mtime=0) if name.endswith(".gz") else data)
    return path


@bounded(25)
@given(table=st.sampled_from(TABLES), data=st.data(), gz=st.sampled_from([False, False, False, True]))
@example(table=INTERACTIONS, data=b'user_id,item_id,timestamp\nu1,"i1\n', gz=False)
@example(table=ITEMS, data=b"item_id,title\ni1,\"\xed\xa0\x80\"\n", gz=False)
@example(table=USERS, data=b"\xef\xbb\xbf\r\n\r\nuser_id\r\n\x00\r\n", gz=False)
def test_csv_parser_gives_values_or_a_reason_per_record(table, data, gz, tmp_path_factory):
    raw = data if isinstance(data, bytes) else data.draw(csv_files_of(table))
    folder = tmp_path_factory.mktemp("csv")
    path = _write(folder, "events.csv.gz" if gz else "events.csv", raw)
    if gz and not isinstance(data, bytes) and data.draw(st.booleans()):
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # a truncated archive
    uri = f"file:{path}"
    try:
        csv_header(uri)  # the driver's check: a header, None, or one of the errors it turns into a message
    except (OSError, EOFError, ValueError, csv.Error):
        pass
    try:
        rows = parse_csv(table, uri)
    except OSError as exc:  # Spark fails the task; ingest names the file (translate_read_error)
        assert gz and str(exc).startswith(f"FAILED_READ_FILE {uri}: "), exc
        return
    check_rows(table, rows)
    lines = [r["_row"] for r in rows]
    assert lines == sorted(lines) and len(set(lines)) == len(lines)


ANY_VALUES = st.recursive(
    st.one_of(
        SCALARS,
        st.integers(-(10**4000), 10**4000),  # JSON holds no longer integer (Python will not read it)
        st.decimals(allow_nan=False, allow_infinity=False).filter(  # what a Parquet decimal holds
            lambda d: len(d.as_tuple().digits) <= 38 and -38 <= d.as_tuple().exponent <= 38),
        st.datetimes(timezones=st.none() | st.builds(
            dt.timezone, st.timedeltas(min_value=dt.timedelta(hours=-23), max_value=dt.timedelta(hours=23)))),
        st.dates(),
        st.binary(max_size=6),
        st.sampled_from([1 + 2j, (1, 2), frozenset({1}), Decimal("1E+30"), Decimal("-0.000001")]),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    | st.tuples(inner, inner),
    max_leaves=8,
)


@bounded(100)
@given(value=ANY_VALUES)
@example(value="1e999999")  # found: decimal.Overflow escaped timestamp_micros
@example(value=10**400)  # found: OverflowError escaped normalize_rating
@example(value={"k": {(1, 2): 3}})  # found: TypeError escaped attribute_value
@example(value={"b", "a", "c"})  # found: text in the order of the process's string hashes
def test_normalisers_return_their_type_or_raise_their_error(value):
    ident = V.normalize_id(value)
    assert ident is None or _stripped(ident)
    try:
        micros = V.timestamp_micros(value)
    except (ValueError, OverflowError, TypeError):
        pass  # what a row's timestamp check turns into "unparseable timestamp"
    else:
        assert isinstance(micros, int) and MIN_US <= micros <= MAX_US
    try:
        rating = V.normalize_rating(value)
    except (ValueError, TypeError):
        pass  # "unparseable rating"
    else:
        assert rating is None or (isinstance(rating, float) and math.isfinite(rating))
    text = V.normalize_text(value)
    assert text is None or _stripped(text)
    cats = V.normalize_categories(value)
    assert all(_stripped(c) for c in cats) and len(set(cats)) == len(cats)
    attr = V.attribute_value(value)
    assert attr is None or isinstance(attr, str)


# --------------------------------------------------------------------------- expected outcome of an ingest


@dataclass
class Expected:
    """What ``longtail ingest`` must do with a file set, from the Spark-free parsers."""

    error: str | None = None  # the text the one error line holds
    interactions: set = field(default_factory=set)
    items: dict = field(default_factory=dict)  # item_id -> the row of its first good occurrence
    users: set = field(default_factory=set)


def read_source(src: Source) -> list[dict]:
    """Every parsed row of one source, as the Spark job's ``mapInArrow`` makes them."""
    path = Path(src.path)
    if src.reader == "csv":
        return list(itertools.chain.from_iterable(parse_csv(src.table, uri) for uri in csv_files(src)))
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return parse_lines(src, hadoop_lines(data), f"file:{path}", batch_rows=4096)


def expect(fmt: str, paths: dict[str, Path], max_bad_rows: int) -> Expected:
    """The outcome ``run_ingest`` must reach, computed without Spark (same order of checks)."""
    try:
        sources = {t: plan_source(t, fmt, str(p)) for t, p in paths.items()}
        rows = {}
        for table, src in sources.items():
            try:
                rows[table] = read_source(src)
            except (OSError, EOFError):  # a broken archive: the Spark job fails, ingest names the file
                return Expected(error=f"file {src.path}: unreadable")
    except LongtailError as exc:
        return Expected(error=str(exc))
    bad = [(TABLES.index(t), r["_row"], t, r) for t, rs in rows.items() for r in rs if r["_reason"] is not None]
    if len(bad) > max_bad_rows:
        _, row, table, first = min(bad, key=lambda b: b[:2])
        detail = f" ({first['_detail']})" if first["_detail"] else ""
        return Expected(error=f"{table} file {display(first['_file'])} line {row + 1}: {first['_reason']}{detail}")
    good = {t: [r for r in rs if r["_reason"] is None] for t, rs in rows.items()}
    if not good[INTERACTIONS]:
        return Expected(error=f"{INTERACTIONS} file {paths[INTERACTIONS]}: no usable rows")
    out = Expected(interactions={(r["user_id"], r["item_id"], r["ts"], r["rating"]) for r in good[INTERACTIONS]})
    for r in good.get(ITEMS, []):
        out.items.setdefault(r["item_id"], _item(r))
    if ITEMS not in good:
        out.items = {i: (i, None, None, (), None, ()) for _, i, _, _ in out.interactions}
    out.users = {r["user_id"] for r in good[USERS]} if USERS in good else {u for u, _, _, _ in out.interactions}
    return out


def _item(r: dict) -> tuple:
    return (r["item_id"], r["title"], r["description"], tuple(r["categories"]), r["brand"],
            tuple(sorted(r["attributes"])))


def table_contents(root: Path) -> Expected:
    """The three tables as they are, read with delta-rs."""
    from deltalake import DeltaTable

    def rows(table: str) -> list[dict]:
        return _rows(DeltaTable(str(root / table)).to_pyarrow_table().to_batches())

    out = Expected()
    out.interactions = {(r["user_id"], r["item_id"], r["ts"], r["rating"]) for r in rows(INTERACTIONS)}
    out.items = {r["item_id"]: _item(r) for r in rows(ITEMS)}
    out.users = {r["user_id"] for r in rows(USERS)}
    return out


def versions(root: Path) -> dict[str, int]:
    """Each table's Delta version (-1: no table yet)."""
    from deltalake import DeltaTable

    return {t: DeltaTable(str(root / t)).version() if (root / t).exists() else -1 for t in TABLES}


def run_cli(argv: list[str]) -> tuple[int, str]:
    from longtail.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(argv)
    return status, err.getvalue()


def check_ingest(root: Path, fmt: str, paths: dict[str, Path], max_bad_rows: int = 0) -> int:
    """Run ``longtail ingest`` on the files and check the outcome against :func:`expect`."""
    from deltalake import DeltaTable

    expected = expect(fmt, paths, max_bad_rows)
    before, listing = versions(root), sorted(p.name for p in root.iterdir() if p.name != "_tmp")
    options = {INTERACTIONS: "--interactions", ITEMS: "--items", USERS: "--users"}
    argv = ["ingest", "--format", fmt, *itertools.chain.from_iterable((options[t], str(p)) for t, p in paths.items()),
            "--set", f"warehouse={root}", "--set", "spark.shuffle_partitions=2",
            "--set", f"ingest.max_bad_rows={max_bad_rows}"]
    status, stderr = run_cli(argv)
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    if expected.error is not None:
        errors = [line for line in stderr.splitlines() if line.startswith("longtail ingest: error: ")]
        assert status == 2, stderr
        assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr
        assert expected.error in errors[0], (expected.error, errors[0])
        assert versions(root) == before
        assert sorted(p.name for p in root.iterdir() if p.name != "_tmp") == listing
        return status
    assert status == 0, (stderr, expected)
    assert all(versions(root)[t] > before[t] for t in TABLES)
    got = table_contents(root)
    assert DeltaTable(str(root / INTERACTIONS)).to_pyarrow_table().num_rows == len(got.interactions)  # no duplicates
    assert got.interactions == expected.interactions
    assert got.items == expected.items
    assert got.users == expected.users
    return status


# --------------------------------------------------------------------------- the seed corpus

# file (under tests/corpus/ingest) -> (format, table, expected): None loads every row; (line, reason)
# is the first bad row; a string is the message of a file that cannot be read at all.
SEEDS = {
    "files/good_interactions.csv": ("files", INTERACTIONS, None),
    "files/good_items.jsonl": ("files", ITEMS, None),
    "files/good_users.csv": ("files", USERS, None),
    "files/good_bom_crlf.csv": ("files", INTERACTIONS, None),
    "files/bad_unterminated_quote.csv": ("files", INTERACTIONS, (3, "malformed line")),
    "files/bad_extra_field.csv": ("files", INTERACTIONS, (2, "malformed line")),
    "files/bad_utf8.csv": ("files", INTERACTIONS, (3, "invalid encoding")),
    "files/bad_header_missing_column.csv": ("files", INTERACTIONS, "missing column 'item_id'"),
    "files/bad_header_twice.csv": ("files", INTERACTIONS, "column 'user_id' appears twice in the header"),
    "files/bad_empty.csv": ("files", INTERACTIONS, "empty, expected a CSV header line"),
    "files/bad_timestamp.jsonl": ("files", INTERACTIONS, (2, "unparseable timestamp")),
    "files/bad_timestamp_overflow.jsonl": ("files", INTERACTIONS, (1, "unparseable timestamp")),
    "files/bad_truncated.jsonl": ("files", INTERACTIONS, (2, "malformed line")),
    "files/bad_huge_rating.jsonl": ("files", INTERACTIONS, (1, "unparseable rating")),
    "files/bad_nested_id.jsonl": ("files", INTERACTIONS, (1, "unparseable user_id")),
    "files/bad_nan_id.jsonl": ("files", INTERACTIONS, (1, "null user_id")),
    "files/bad_lone_surrogate_items.jsonl": ("files", ITEMS, (2, "invalid encoding")),
    "files/bad_deep_items.jsonl": ("files", ITEMS, (1, "malformed line")),
    "amazon/good_reviews.json": ("amazon", INTERACTIONS, None),
    "amazon/good_reviews.json.gz": ("amazon", INTERACTIONS, None),
    "amazon/good_meta.json": ("amazon", ITEMS, None),
    "amazon/good_meta_python_values.json": ("amazon", ITEMS, None),
    "amazon/bad_review_time.json": ("amazon", INTERACTIONS, (2, "unparseable timestamp")),
    "amazon/bad_reviews_array.json": ("amazon", INTERACTIONS, (2, "malformed line")),
    "amazon/bad_reviews_missing_asin.json": ("amazon", INTERACTIONS, (1, "missing asin")),
    "amazon/bad_reviews_truncated.json.gz": ("amazon", INTERACTIONS, "unreadable"),
    "amazon/bad_meta_huge_hex.json": ("amazon", ITEMS, (2, "malformed line")),
    "amazon/bad_meta_code.json": ("amazon", ITEMS, (1, "malformed line")),
    "movielens/good_ratings.dat": ("movielens", INTERACTIONS, None),
    "movielens/good_movies.dat": ("movielens", ITEMS, None),
    "movielens/good_users.dat": ("movielens", USERS, None),
    "movielens/bad_ratings_fields.dat": ("movielens", INTERACTIONS, (2, "malformed line")),
    "movielens/bad_ratings_rating.dat": ("movielens", INTERACTIONS, (1, "unparseable rating")),
    "movielens/bad_ratings_timestamp.dat": ("movielens", INTERACTIONS, (2, "unparseable timestamp")),
    "movielens/bad_movies_fields.dat": ("movielens", ITEMS, (1, "malformed line")),
}
# The good file set of each format (run end to end: the first one is the baseline ingest).
GOOD_SETS = {
    "files": {INTERACTIONS: "files/good_interactions.csv", ITEMS: "files/good_items.jsonl",
              USERS: "files/good_users.csv"},
    "amazon": {INTERACTIONS: "amazon/good_reviews.json.gz", ITEMS: "amazon/good_meta.json"},
    "movielens": {INTERACTIONS: "movielens/good_ratings.dat", ITEMS: "movielens/good_movies.dat",
                  USERS: "movielens/good_users.dat"},
}
# Seeds run end to end in the default run, besides the good `files` set (the baseline): a JSON lines
# file whose lone surrogate failed the whole Spark task before a fix, and a bad MovieLens file; the
# generated file sets cover every format. With the full flag: every seed, and every good set.
E2E_SEEDS = ["files/bad_lone_surrogate_items.jsonl", "movielens/bad_ratings_timestamp.dat"]
E2E_FULL = sorted(SEEDS) + [f"good set: {fmt}" for fmt in ("amazon", "movielens")]


def test_seed_corpus_is_complete():
    assert sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file()) == sorted(SEEDS)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seed_corpus_spark_free(name):
    fmt, table, expected = SEEDS[name]
    src = None
    try:
        src = plan_source(table, fmt, str(CORPUS / name))
        rows = read_source(src)
    except (LongtailError, OSError, EOFError) as exc:  # a file ingest names as unreadable
        assert isinstance(expected, str) and (expected in str(exc) or expected == "unreadable"), exc
        return
    assert not isinstance(expected, str), f"{name}: loads, expected {expected!r}"
    if src.reader == "lines":
        data = (CORPUS / name).read_bytes()
        check_line_rows(src, hadoop_lines(gzip.decompress(data) if name.endswith(".gz") else data), rows)
    else:
        check_rows(table, rows)
    bad = [r for r in rows if r["_reason"] is not None]
    if expected is None:
        assert rows and not bad, bad
    else:
        assert (bad[0]["_row"] + 1, bad[0]["_reason"]) == expected, bad[0]


# --------------------------------------------------------------------------- end to end


class Ingests:
    """The warehouse of the end-to-end cases, holding a good ingest; a folder per generated case."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "warehouse"
        self.root.mkdir()
        self.cases = itertools.count()

    def folder(self) -> Path:
        path = self.base / f"case{next(self.cases)}"
        path.mkdir()
        return path


@pytest.fixture(scope="module")
def ingests(spark, tmp_path_factory) -> Ingests:
    state = Ingests(tmp_path_factory.mktemp("fuzz-ingest"))
    paths = {t: CORPUS / p for t, p in GOOD_SETS["files"].items()}
    assert check_ingest(state.root, "files", paths) == 0  # the baseline: the good seed of `files`
    return state


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.parametrize("name", E2E_FULL if FULL else E2E_SEEDS)
def test_seed_corpus_end_to_end(ingests, name):
    if name.startswith("good set: "):
        fmt = name.removeprefix("good set: ")
        assert check_ingest(ingests.root, fmt, {t: CORPUS / p for t, p in GOOD_SETS[fmt].items()}) == 0
        return
    fmt, table, expected = SEEDS[name]
    paths = {t: CORPUS / p for t, p in GOOD_SETS[fmt].items()}  # the seed in place of its table's good file
    paths[table] = CORPUS / name
    status = check_ingest(ingests.root, fmt, paths)
    assert status == (0 if expected is None else 2)


def _join(lines: list[bytes], ends: list[bytes], final: bool) -> bytes:
    parts = [line + end for line, end in zip(lines, itertools.cycle(ends))]
    data = b"".join(parts)
    return data if final or not parts else data[: -len(parts[-1]) + len(lines[-1])]


@st.composite
def file_sets(draw, fmt: str, folder_of) -> tuple[dict[str, Path], int]:
    """A raw file set of ``fmt`` written to a new folder, and the ``ingest.max_bad_rows`` to use."""
    tables = [INTERACTIONS, *draw(st.sets(st.sampled_from([ITEMS, USERS] if fmt != "amazon" else [ITEMS])))]
    folder = folder_of()
    paths = {}
    for table in TABLES:
        if table not in tables:
            continue
        if fmt == "files" and draw(st.booleans()):
            paths[table] = _write(folder, f"{table}.csv", draw(csv_files_of(table, clean=3)))
            continue
        lines = draw(lines_of(fmt, table, max_lines=8, clean=3))
        ends = draw(st.lists(st.sampled_from([b"\n", b"\n", b"\r\n", b"\r"]), min_size=1, max_size=3))
        data = _join(lines, ends, final=draw(st.booleans()))
        name = {"files": f"{table}.jsonl", "amazon": f"{table}.json", "movielens": f"{table}.dat"}[fmt]
        if fmt == "amazon" and draw(st.booleans()):
            name += ".gz"
        paths[table] = _write(folder, name, data)
    return paths, draw(st.sampled_from([0, 0, 1, 3]))


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["files", "amazon", "movielens"])
@bounded(2)
@given(data=st.data())
def test_generated_file_sets_load_or_fail_naming_file_and_line(ingests, fmt, data):
    paths, max_bad_rows = data.draw(file_sets(fmt, ingests.folder))
    check_ingest(ingests.root, fmt, paths, max_bad_rows)
