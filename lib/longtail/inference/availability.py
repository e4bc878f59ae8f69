"""Availability rules: the items that must not be ranked on a run date (``availability.table``).

An optional Delta table, a name in the warehouse or a path/URI of its own, with one row per rule:

- ``item_id`` string, ``available`` boolean (required);
- ``valid_from``, ``valid_to`` date or timestamp (optional columns; null: open): the rule is in force
  on run date ``D`` when ``valid_from <= D < valid_to`` (timestamps compared with the start of ``D``,
  00:00 UTC), the half-open validity interval of a slowly changing dimension.

An item is unavailable on ``D`` when at least one rule in force says ``available`` false or null:
the safe side wins over a conflicting ``true``, and an item without any rule in force is available.
``score`` and ``similar-items`` read the table once, at the start of the job (:func:`read_availability`),
and mask the unavailable items wherever an item can be ranked (:meth:`Availability.mask`).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longtail.core.errors import SchemaError, TableNotFoundError

#: The config key named in errors.
KEY = "availability.table"
REQUIRED = {"item_id": T.StringType(), "available": T.BooleanType()}
BOUNDS = ("valid_from", "valid_to")


@dataclass(frozen=True)
class Availability:
    """The item ids unavailable on one run date; ``source`` is what was read (None: no table)."""

    source: str | None = None
    unavailable: frozenset[str] = field(default_factory=frozenset)

    def mask(self, item_ids: list[str]) -> np.ndarray:
        """``[N]`` bool over an item index (``item_ids[idx]``, ``""`` for padding): True where unavailable."""
        if not self.unavailable:
            return np.zeros(len(item_ids), dtype=bool)
        return np.fromiter((i in self.unavailable for i in item_ids), dtype=bool, count=len(item_ids))


def read_availability(wh, table: str | None, run_date: dt.date) -> Availability:
    """Read the availability rules in force on ``run_date`` (one small collect of item ids).

    Args:
        wh: the job's warehouse. table: ``availability.table``: None (every item available), a table
            name of the warehouse, or a path/URI (anything with ``/`` or ``:``).
        run_date: the date the rules are evaluated at.

    Returns:
        :class:`Availability` with the unavailable item ids.

    Raises:
        TableNotFoundError: no Delta table there. SchemaError: a required column is missing, or a
            column has the wrong type. Both name the key and the table, before anything is written.
    """
    if table is None:
        return Availability()
    rules = _read(wh, table)
    _check_columns(rules, table)
    in_force = F.lit(True)
    start = dt.datetime.combine(run_date, dt.time(), tzinfo=dt.timezone.utc)
    for name in BOUNDS:
        if name not in rules.columns:
            continue
        kind = rules.schema[name].dataType
        at = (F.lit(run_date) if isinstance(kind, T.DateType)
              else F.lit(run_date).cast("timestamp_ntz") if isinstance(kind, T.TimestampNTZType) else F.lit(start))
        inside = F.col(name) <= at if name == "valid_from" else F.col(name) > at
        in_force = in_force & (F.col(name).isNull() | inside)
    blocked = rules.where(in_force & F.col("item_id").isNotNull() & ~F.coalesce(F.col("available"), F.lit(False)))
    ids = blocked.select("item_id").distinct().toArrow().column("item_id").to_pylist()
    return Availability(table, frozenset(ids))


def _read(wh, table: str) -> DataFrame:
    """The table by name in the warehouse, or by path through a warehouse rooted at its parent folder."""
    from longtail.core.tables import Warehouse  # noqa: PLC0415 - core, kept out of import time

    if "/" in table or ":" in table:
        parent, _, name = table.rstrip("/").rpartition("/")
        where = Warehouse(wh.spark, parent or ".", engine=wh.engine) if name else None
    else:
        where, name = wh, table
    if where is None or not where.exists(name):
        path = where.path(name) if where is not None else table
        raise TableNotFoundError(f"config key {KEY}: no Delta table {table!r} (looked at {path})")
    return where.read(name)


def _check_columns(rules: DataFrame, table: str) -> None:
    """The columns the rules need, by type (schema only, no Spark job)."""
    types = {f.name: f.dataType for f in rules.schema.fields}
    for name, want in REQUIRED.items():
        if name not in types:
            raise SchemaError(
                f"config key {KEY}: table {table!r} has no column {name!r} ({want.simpleString()}); "
                f"has {', '.join(types) or 'no columns'}"
            )
        if types[name] != want:
            raise SchemaError(
                f"config key {KEY}: table {table!r} column {name!r} is {types[name].simpleString()}, "
                f"expected {want.simpleString()}"
            )
    for name in BOUNDS:
        if name in types and not isinstance(types[name], (T.DateType, T.TimestampType, T.TimestampNTZType)):
            raise SchemaError(
                f"config key {KEY}: table {table!r} column {name!r} is {types[name].simpleString()}, "
                "expected date or timestamp"
            )
