"""The ``amazon`` format: McAuley review files (2014 and 2018) and their item metadata.

Reviews are JSON lines with ``reviewerID``, ``asin``, ``overall`` and ``unixReviewTime`` (or,
in some 2018 lines, only the human ``reviewTime``). Metadata is JSON lines in 2018 but
Python-literal lines (``{'asin': ...}``) in 2014; a file may mix both, so every line may be
either. Both kinds may be gzipped. A user file, which Amazon does not publish, is read as in
the ``files`` format.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Callable

from longtail.core import schemas
from longtail.stages.ingest.values import Bad, clip, require_key

#: How the lines are parsed (see :func:`.parsing.parse_object`).
SYNTAX = "json_or_literal"

# Amazon metadata fields that are lists of other products or image links: large and not
# item text, so they are not kept as attributes.
_DROPPED = frozenset(
    {"related", "also_buy", "also_view", "also_viewed", "bought_together", "similar_item",
     "imUrl", "imageURL", "imageURLHighRes"}
)
_ITEM_KEYS = frozenset({"asin", "title", "description", "categories", "category", "brand"})


def interaction(rec: dict) -> dict:
    if "unixReviewTime" in rec or "reviewTime" not in rec:
        ts = require_key(rec, "unixReviewTime")
    else:
        ts = _review_time(rec["reviewTime"])
    return {
        "user_id": require_key(rec, "reviewerID"),
        "item_id": require_key(rec, "asin"),
        "timestamp": ts,
        "rating": rec.get("overall"),
    }


def _review_time(value: Any) -> Any:
    # Amazon's human date "09 13, 2009" (month day, year), used only without unixReviewTime.
    try:
        return dt.datetime.strptime(str(value).strip(), "%m %d, %Y").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise Bad("unparseable timestamp", f"reviewTime {clip(value)!s}") from None


def item(rec: dict) -> dict:
    # 2014 metadata has "categories" (a list of category paths), 2018 "category" (one list).
    cats = rec.get("categories") if rec.get("categories") is not None else rec.get("category")
    return {
        "item_id": require_key(rec, "asin"),
        "title": rec.get("title"),
        "description": rec.get("description"),
        "categories": cats,
        "brand": rec.get("brand"),
        "attributes": {k: v for k, v in rec.items() if k not in _ITEM_KEYS and k not in _DROPPED},
    }


#: A parsed line -> the table's fields (raw values), per table (users: see :mod:`.files`).
RECORDS: dict[str, Callable[[dict], dict]] = {
    schemas.INTERACTIONS: interaction,
    schemas.ITEMS: item,
}
