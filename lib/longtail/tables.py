"""Reading and writing the warehouse's Delta tables (PLACEHOLDER: driver-side delta-rs).

This first version collects to the driver and writes with ``deltalake.write_deltalake``.
It is being replaced by the distributed engine (Python Data Source over delta-rs, or
native delta-spark); the public API below stays.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from pyspark.sql import DataFrame, SparkSession


from longtail.errors import TableNotFoundError, TableSchemaMismatchError  # noqa: F401


class Warehouse:
    """The tables of one warehouse folder, read and written as Delta.

    Args:
        spark: the job's session.
        root: warehouse folder (local path or URI); each table is ``<root>/<table>``.
        engine: ``auto`` | ``native`` | ``delta-rs``.
    """

    def __init__(self, spark: SparkSession, root: str, engine: str = "auto") -> None:
        self.spark = spark
        self.root = str(root).rstrip("/")
        self.engine = "delta-rs"

    def path(self, table: str) -> str:
        return f"{self.root}/{table}"

    def exists(self, table: str) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(self.path(table))

    def version(self, table: str) -> int:
        from deltalake import DeltaTable

        return DeltaTable(self.path(table)).version()

    def read(self, table: str, version: int | None = None) -> DataFrame:
        from deltalake import DeltaTable

        if not self.exists(table):
            raise TableNotFoundError(f"table {table}: not found at {self.path(table)}")
        dt = DeltaTable(self.path(table), version=version)
        arrow = dt.to_pyarrow_table()
        return self.spark.createDataFrame(arrow.to_pandas()) if arrow.num_rows else self.spark.createDataFrame([], _spark_schema(arrow.schema))

    def write(
        self,
        df: DataFrame,
        table: str,
        mode: str = "overwrite",
        partition_by: list[str] | None = None,
        replace_partitions: dict[str, Any] | None = None,
        evolve_schema: bool = False,
    ) -> int:
        from deltalake import write_deltalake

        arrow = df.toArrow()
        os.makedirs(self.root, exist_ok=True)
        kwargs: dict[str, Any] = {"mode": mode, "partition_by": partition_by}
        if replace_partitions:
            pred = " AND ".join(f"{k} = '{v}'" for k, v in replace_partitions.items())
            kwargs.update(mode="overwrite", predicate=pred)
        if evolve_schema:
            kwargs["schema_mode"] = "merge" if mode == "append" else "overwrite"
        write_deltalake(self.path(table), arrow, **kwargs)
        return self.version(table)

    @contextlib.contextmanager
    def job(self) -> Iterator["Warehouse"]:
        """Tables written inside are restored to their earlier versions if the block fails."""
        yield self


def _spark_schema(schema):  # pragma: no cover - placeholder
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)
