"""The ``files`` format's records: interactions, items and users in the contract's columns.

Each file's kind comes from its name (``.csv``, ``.jsonl``/``.json``, ``.parquet``, optionally
``.gz``, or a folder of Parquet files; see :mod:`.sources`); whatever the kind, a row is a
mapping of column names to raw values, mapped here to the table's fields. Interactions need
``user_id``, ``item_id``, ``timestamp`` (``rating`` is optional); items need ``item_id`` and
keep every column beyond ``title``, ``description``, ``categories`` and ``brand`` as an
attribute; users keep every column beyond ``user_id`` as an attribute. The values are
normalised afterwards (:class:`~.values.Output`).

User files of the other formats are read with these records too.
"""
from __future__ import annotations

from typing import Callable

from longtail.core import schemas
from longtail.stages.ingest.values import require_key

_ITEM_FIELDS = ("item_id", "title", "description", "categories", "brand")


def interaction(rec: dict) -> dict:
    return {
        "user_id": require_key(rec, "user_id"),
        "item_id": require_key(rec, "item_id"),
        "timestamp": require_key(rec, "timestamp"),
        "rating": rec.get("rating"),
    }


def item(rec: dict) -> dict:
    out = {k: rec.get(k) for k in _ITEM_FIELDS}
    out["item_id"] = require_key(rec, "item_id")
    out["attributes"] = {k: v for k, v in rec.items() if k not in _ITEM_FIELDS}
    return out


def user(rec: dict) -> dict:
    return {
        "user_id": require_key(rec, "user_id"),
        "attributes": {k: v for k, v in rec.items() if k != "user_id"},
    }


#: A parsed row -> the table's fields (raw values), per table.
RECORDS: dict[str, Callable[[dict], dict]] = {
    schemas.INTERACTIONS: interaction,
    schemas.ITEMS: item,
    schemas.USERS: user,
}
