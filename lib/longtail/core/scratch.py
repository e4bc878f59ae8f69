"""Plain Parquet folders that Spark writes and reads back within a job (training shards, scratch).

:func:`write_parquet` and :func:`read_parquet` use Spark's own Parquet source where it reaches the
folder (:func:`longtail.core.session.can_reach`: local disks, clusters with an object-store
connector) and otherwise a Python data source over pyarrow's filesystems (``longtail_parquet``):
executors write their rows as Parquet files straight into the folder, one file per task and
partition value (Hive-style ``col=value`` folders, like Spark's), and read one file per task.
Either way the folder holds ordinary Parquet files that :mod:`longtail.core.files` reads.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

from pyspark.sql import DataFrame
from pyspark.sql.datasource import (
    DataSource,
    DataSourceArrowWriter,
    DataSourceReader,
    InputPartition,
    WriterCommitMessage,
)
from pyspark.sql.types import StructType

from longtail.core import files
from longtail.core.session import can_reach

NAME = "longtail_parquet"


def write_parquet(df: DataFrame, uri: str, partition_by: list[str] | None = None) -> None:
    """Replace the folder ``uri`` with ``df``'s rows as Parquet files (partitioned like Spark)."""
    spark = df.sparkSession
    if can_reach(spark, uri):
        writer = df.write.mode("overwrite")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.parquet(uri)
        return
    _register(spark)
    files.remove_tree(uri)
    (
        df.write.format(NAME)
        .mode("append")  # the folder was just emptied; the source only adds files
        .option("schema", df.schema.json())
        .option("partition_by", json.dumps(partition_by or []))
        .option("write_id", uuid.uuid4().hex[:12])
        .save(uri)
    )


def read_parquet(spark, uri: str, schema: StructType | None = None) -> DataFrame:
    """The Parquet files under ``uri`` (a folder :func:`write_parquet` wrote) as a DataFrame.

    ``schema`` is needed where Spark does not reach ``uri`` and the folder has partition columns
    (they are not in the files); without it the files' own schema is used.
    """
    if can_reach(spark, uri):
        return spark.read.parquet(uri)
    _register(spark)
    reader = spark.read.format(NAME)
    if schema is not None:
        reader = reader.schema(schema)
    return reader.load(uri)


def _register(spark) -> None:
    spark.dataSource.register(ParquetFilesSource)


# --------------------------------------------------------------------------- the data source


class ParquetFilesSource(DataSource):
    """``longtail_parquet``: a folder of Parquet files on any filesystem pyarrow reaches."""

    @classmethod
    def name(cls) -> str:
        return NAME

    def schema(self) -> StructType:
        import pyarrow.parquet as pq
        from pyspark.sql.pandas.types import from_arrow_schema

        paths = files.parquet_files(self.options["path"])
        if not paths:
            raise FileNotFoundError(f"no Parquet files under {self.options['path']}")
        fs, _ = files.filesystem(self.options["path"])
        with fs.open_input_file(paths[0]) as handle:
            return from_arrow_schema(pq.ParquetFile(handle).schema_arrow)

    def reader(self, schema: StructType) -> "_Reader":
        return _Reader(self.options["path"], schema)

    def writer(self, schema: StructType, overwrite: bool) -> "_Writer":
        return _Writer(self.options)


@dataclass
class _File(InputPartition):
    path: str
    values: dict[str, str]


class _Reader(DataSourceReader):
    def __init__(self, path: str, schema: StructType) -> None:
        self.path, self.schema = path, schema

    def partitions(self) -> list[_File]:
        fs, base = files.filesystem(self.path)
        found = []
        for p in files.parquet_files(self.path):
            folders = p[len(base.rstrip("/")) + 1:].split("/")[:-1]
            found.append(_File(p, dict(f.split("=", 1) for f in folders if "=" in f)))
        return found

    def read(self, partition: _File) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from pyspark.sql.pandas.types import to_arrow_schema

        schema = to_arrow_schema(self.schema, timezone="UTC")
        fs, _ = files.filesystem(self.path)
        with fs.open_input_file(partition.path) as handle:
            parquet = pq.ParquetFile(handle)
            present = [n for n in schema.names if n in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(batch_size=65536, columns=present):
                columns = [
                    batch.column(f.name).cast(f.type) if f.name in present
                    else pa.array([partition.values.get(f.name)] * batch.num_rows, pa.string()).cast(f.type)
                    for f in schema
                ]
                yield pa.RecordBatch.from_arrays(columns, schema=schema)


@dataclass
class _Written(WriterCommitMessage):
    paths: list[str]


class _Writer(DataSourceArrowWriter):
    """Each task writes one Parquet file per partition value it holds; nothing to commit."""

    def __init__(self, options: dict[str, str]) -> None:
        self.path = options["path"].rstrip("/")
        self.schema_json = options["schema"]
        self.partition_by: list[str] = json.loads(options.get("partition_by") or "[]")
        self.write_id = options.get("write_id") or uuid.uuid4().hex[:12]

    def write(self, iterator: Iterator[Any]) -> _Written:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
        from pyspark import TaskContext
        from pyspark.sql.pandas.types import to_arrow_schema

        schema = to_arrow_schema(StructType.fromJson(json.loads(self.schema_json)), timezone="UTC")
        data_columns = [n for n in schema.names if n not in self.partition_by]
        data_schema = pa.schema([schema.field(n) for n in data_columns])  # partition values live in folder names
        context = TaskContext.get()
        task = context.partitionId() if context is not None else 0
        fs, base = files.filesystem(self.path)
        writers: dict[tuple, Any] = {}
        written = []
        try:
            for batch in iterator:
                if batch.num_rows == 0:
                    continue
                table = pa.Table.from_batches([batch]).select(schema.names).cast(schema)
                keys = table.select(self.partition_by).group_by(self.partition_by).aggregate([]).to_pylist() \
                    if self.partition_by else [{}]
                for key in keys:
                    rows = table
                    for column, value in key.items():
                        rows = rows.filter(pc.is_null(rows[column]) if value is None else pc.equal(rows[column], value))
                    k = tuple(key.get(c) for c in self.partition_by)
                    if k not in writers:
                        folder = "/".join(f"{c}={v}" for c, v in zip(self.partition_by, k))
                        name = f"part-{self.write_id}-{task:05d}-{uuid.uuid4().hex[:8]}.parquet"
                        target = f"{base}/{folder}/{name}" if folder else f"{base}/{name}"
                        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
                        sink = fs.open_output_stream(target)
                        writers[k] = (sink, pq.ParquetWriter(sink, data_schema))
                        written.append(target)
                    writers[k][1].write_table(rows.select(data_columns))
        finally:
            for sink, writer in writers.values():
                writer.close()
                sink.close()
        return _Written(written)

    def commit(self, messages: list[_Written | None]) -> None:
        pass  # the files are in place; readers list the folder

    def abort(self, messages: list[_Written | None]) -> None:
        fs, _ = files.filesystem(self.path)
        for message in messages:
            for path in (message.paths if message is not None else []):
                try:
                    fs.delete_file(path)
                except FileNotFoundError:
                    pass
