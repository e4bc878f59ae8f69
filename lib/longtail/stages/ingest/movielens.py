"""The ``movielens`` format: MovieLens-1M ``ratings.dat``, ``movies.dat`` and ``users.dat``.

Each line is ``::``-separated fields in a fixed order per file, encoded in latin-1. A movie's
year, the ``(1995)`` that ends its title, is kept as the attribute ``year``; its genres
(``Drama|Musical``) become the categories.
"""
from __future__ import annotations

import re
from typing import Callable

from longtail.core import schemas
from longtail.stages.ingest import files
from longtail.stages.ingest.values import Bad

#: How the lines are parsed (:func:`split_line`) and decoded.
SYNTAX = "dat"
ENCODING = "latin-1"

#: MovieLens-1M field order per file.
FIELDS = {
    schemas.INTERACTIONS: ("user_id", "item_id", "rating", "timestamp"),
    schemas.ITEMS: ("item_id", "title", "genres"),
    schemas.USERS: ("user_id", "gender", "age", "occupation", "zip_code"),
}

_YEAR = re.compile(r"\((\d{4})\)\s*$")


def split_line(text: str, columns: tuple[str, ...]) -> dict:
    """A ``::``-separated line as ``{field: value}``; a wrong field count is a malformed line."""
    values = text.rstrip("\r\n").split("::")
    if len(values) != len(columns):
        raise Bad("malformed line", f"{len(values)} '::'-separated fields, expected {len(columns)}")
    return dict(zip(columns, values))


def interaction(rec: dict) -> dict:
    return dict(rec)


def item(rec: dict) -> dict:
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


#: A parsed line -> the table's fields (raw values), per table.
RECORDS: dict[str, Callable[[dict], dict]] = {
    schemas.INTERACTIONS: interaction,
    schemas.ITEMS: item,
    schemas.USERS: files.user,
}
