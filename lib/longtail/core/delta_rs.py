"""Delta tables through Spark without the JVM Delta jars: a Spark 4 Python Data Source over delta-rs.

Writing stays distributed: every task writes its rows as Parquet files straight into the table folder
(:meth:`DeltaRsWriter.write`, on the executors) and returns their Delta ``add`` actions; all of them go
into ONE Delta transaction (:meth:`DeltaRsWriter.commit`; through the Warehouse, a manifest that the
job's driver commits against the version it read, :mod:`longtail.core.commits`). A job that fails never
reaches ``commit``, so the table keeps its last version; ``abort`` deletes the files of the tasks that
finished.

Reading pins one table version and makes one input partition per data file (:class:`DeltaRsReader`).
``longtail.core.tables`` reads most tables faster through Spark's own Parquet reader and keeps this reader
for layouts that one cannot express.

Options (strings; :class:`longtail.core.tables.Warehouse` sets them):
    path: table folder or URI.  versionAsOf: version to read.
    table_schema: Spark ``StructType`` JSON of the table after the write (all fields nullable).
    partition_by: JSON list of partition columns.  replace_partitions: JSON ``{column: value}``, the only
    partition an overwrite replaces.  write_id: tags the files of one write.  table: name for messages.
    stage_dir: when set, ``commit`` only writes ``<stage_dir>/<write_id>.json`` with the files' add actions
    and the caller commits them (:mod:`longtail.core.commits`); without it ``commit`` commits at once.
Not supported here (refused by :func:`check_supported`): deletion vectors, column mapping.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

from pyspark.sql.datasource import (
    DataSource,
    DataSourceArrowWriter,
    DataSourceReader,
    InputPartition,
    WriterCommitMessage,
)
from pyspark.sql.types import ArrayType, DataType, MapType, StructField, StructType

from longtail.core.errors import EnvironmentProblem
from longtail.core.files import filesystem, read_bytes, remove_file, write_bytes

NAME = "delta_rs"
#: Raised inside a write task when a row lies outside the partition being replaced; the driver
#: finds this marker in Spark's error text and turns it back into a one-line error.
PARTITION_MISMATCH = "LONGTAIL_PARTITION_MISMATCH"
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
#: Rows buffered before a Parquet row group is written: Spark hands over small Arrow batches
#: (maxRecordsPerBatch) and one row group per batch would make files slow to read.
ROW_GROUP_ROWS = 128 * 1024
#: Delta and Spark truncate string statistics to 32 characters.
STRING_STATS_CHARS = 32


class UnsupportedDeltaTable(EnvironmentProblem):
    """The table uses a Delta feature the delta-rs engine cannot read correctly."""


# --------------------------------------------------------------------------- helpers


def spark_schema(table) -> StructType:
    """The Spark schema of a ``deltalake.DeltaTable`` (Delta's schema JSON is Spark's)."""
    return StructType.fromJson(json.loads(table.schema().to_json()))


def nullable(t: DataType) -> DataType:
    """``t`` with every field, element and map value nullable.

    Tables are created this way: Spark hands writers non-nullable fields (literals, aggregates), and a
    NOT NULL column would make later, differently built appends fail.
    """
    if isinstance(t, StructType):
        return StructType([StructField(f.name, nullable(f.dataType), True, f.metadata) for f in t])
    if isinstance(t, ArrayType):
        return ArrayType(nullable(t.elementType), True)
    if isinstance(t, MapType):
        return MapType(nullable(t.keyType), nullable(t.valueType), True)
    return t


def arrow_schema(schema: StructType):
    """Arrow schema Spark expects for ``schema`` (UTC timestamps, plain strings, same nullability)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(schema, timezone="UTC")


def check_supported(table, name: str, path: str) -> None:
    """Refuse tables whose files alone do not give their rows (deletion vectors, column mapping).

    Raises:
        UnsupportedDeltaTable: naming the table, its path and the feature.
    """
    protocol = table.protocol()
    features = set(protocol.reader_features or []) | set(protocol.writer_features or [])
    config = table.metadata().configuration or {}
    problems = []
    if "deletionVectors" in features or config.get("delta.enableDeletionVectors") == "true":
        problems.append("deletion vectors")
    if "columnMapping" in features or config.get("delta.columnMapping.mode", "none") != "none":
        problems.append("column mapping")
    if problems:
        raise UnsupportedDeltaTable(
            f"table {name} at {path} uses {' and '.join(problems)}, which the delta-rs engine does not "
            "support: use the native Delta engine (delta.engine: native) or rewrite the table without them"
        )


def partition_string(value: Any) -> str | None:
    """A partition value as Delta stores it in ``partitionValues`` (None for null)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def escape_path_name(value: str) -> str:
    """Hive-style escaping of a partition value for a folder name (as Spark does, %XX)."""
    return "".join(c if c.isalnum() or c in "-_. " else f"%{ord(c):02X}" for c in value)


def partition_dir(columns: list[str], values: list[str | None]) -> str:
    """``col=value/...`` folder of one partition, '' for an unpartitioned table."""
    return "/".join(f"{c}={NULL_PARTITION if v is None else escape_path_name(v)}" for c, v in zip(columns, values))


def data_files(table) -> list[tuple[str, dict[str, Any]]]:
    """(path relative to the table as in the log, URI-encoded; typed partition values) of every file."""
    import pyarrow as pa

    actions = pa.table(table.get_add_actions(flatten=True))
    parts = [n for n in actions.column_names if n.startswith("partition.")]
    rows = actions.select(["path", *parts]).to_pylist()
    return [(r["path"], {n[len("partition."):]: r[n] for n in parts}) for r in rows]


def remove_files(table_uri: str, relative_paths: list[str]) -> None:
    """Delete files of an unfinished write, given as written (not URI-encoded); missing ones are fine."""
    fs, base = filesystem(table_uri)
    for rel in relative_paths:
        try:
            fs.delete_file(f"{base}/{rel}")
        except FileNotFoundError:
            pass


def sweep_write(table_uri: str, write_id: str) -> None:
    """Delete every file a write left behind, including those of failed tasks, which never reach abort()."""
    from pyarrow import fs as pafs

    fs, base = filesystem(table_uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError:
        return
    for info in infos:
        if info.type == pafs.FileType.File and f"part-{write_id}-" in info.base_name:
            fs.delete_file(info.path)


# --------------------------------------------------------------------------- the data source


class DeltaRsDataSource(DataSource):
    """``spark.read/write.format("delta_rs")``: Delta tables through delta-rs (see module doc)."""

    @classmethod
    def name(cls) -> str:
        return NAME

    def schema(self) -> StructType:
        from deltalake import DeltaTable

        return spark_schema(DeltaTable(self.options["path"], version=_version_option(self.options)))

    def reader(self, schema: StructType) -> "DeltaRsReader":
        return DeltaRsReader(self.options["path"], _version_option(self.options), schema)

    def writer(self, schema: StructType, overwrite: bool) -> "DeltaRsWriter":
        options = dict(self.options)
        options.setdefault("table_schema", nullable(schema).json())  # direct use, without the Warehouse
        return DeltaRsWriter(options, overwrite)


class DeltaAlias(DeltaRsDataSource):
    """The same source under ``delta``: registering it fails when JVM Delta is present (engine probe)."""

    @classmethod
    def name(cls) -> str:
        return "delta"


def register(spark) -> bool:
    """Register the source as ``delta_rs``; return True when JVM Delta (delta-spark) is available.

    The probe registers the alias ``delta``: Spark refuses with DATA_SOURCE_ALREADY_EXISTS exactly when a
    JVM source of that name is on the classpath. It needs no ``_jvm``, so it works under Spark Connect.
    """
    spark.dataSource.register(DeltaRsDataSource)
    try:
        spark.dataSource.register(DeltaAlias)
    except Exception as exc:  # noqa: BLE001 - only one condition means "JVM Delta present"
        if "DATA_SOURCE_ALREADY_EXISTS" in str(exc):
            return True
        raise
    return False


def _version_option(options) -> int | None:
    value = options.get("versionAsOf")
    return None if value in (None, "") else int(value)


# --------------------------------------------------------------------------- reading


@dataclass
class DeltaFilePartition(InputPartition):
    """One data file (path inside the table as on disk, None for an empty table) and its partition values."""

    path: str | None
    partition_values: dict[str, Any]


class DeltaRsReader(DataSourceReader):
    """Reads one pinned version: one input partition per data file."""

    def __init__(self, path: str, version: int | None, schema: StructType) -> None:
        from deltalake import DeltaTable

        table = DeltaTable(path, version=version)
        check_supported(table, os.path.basename(path.rstrip("/")), path)
        # Pin the version now, on the driver, so every task reads the same snapshot.
        self.path, self.version, self.schema = path, table.version(), schema

    def partitions(self) -> list[DeltaFilePartition]:
        from deltalake import DeltaTable

        files = data_files(DeltaTable(self.path, version=self.version))
        return [DeltaFilePartition(urllib.parse.unquote(p), v) for p, v in files] or [DeltaFilePartition(None, {})]

    def read(self, partition: DeltaFilePartition) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if partition.path is None:
            return
        schema = arrow_schema(self.schema)
        # Join on the filesystem's side: a URI would percent-decode the file name a second time.
        fs, base = filesystem(self.path)
        with fs.open_input_file(f"{base.rstrip('/')}/{partition.path}") as handle:
            parquet = pq.ParquetFile(handle)
            present = [n for n in schema.names if n in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(batch_size=65536, columns=present):
                columns = []
                for f in schema:
                    if f.name in present:
                        columns.append(batch.column(f.name).cast(f.type))
                    else:  # a partition column, or one added to the table after this file was written
                        value = partition.partition_values.get(f.name)
                        columns.append(pa.repeat(pa.scalar(value, f.type), batch.num_rows))
                yield pa.RecordBatch.from_arrays(columns, schema=schema)


# --------------------------------------------------------------------------- writing


@dataclass
class DeltaFiles(WriterCommitMessage):
    """The files one task wrote: ``deltalake.transaction.AddAction`` fields as dicts."""

    adds: list[dict[str, Any]] = field(default_factory=list)


class DeltaRsWriter(DataSourceArrowWriter):
    """Executors write Parquet files; the driver commits them in one Delta transaction."""

    def __init__(self, options: dict[str, str], overwrite: bool) -> None:
        self.path = options["path"].rstrip("/")
        self.table = options.get("table") or os.path.basename(self.path)
        self.overwrite = overwrite
        self.schema_json = options["table_schema"]
        self.partition_by: list[str] = json.loads(options.get("partition_by") or "[]")
        self.replace: dict[str, str | None] = json.loads(options.get("replace_partitions") or "{}")
        self.write_id = options.get("write_id") or uuid.uuid4().hex[:12]
        #: Folder for the manifest of a staged write (set by the Warehouse), '' to commit here.
        self.stage_dir = (options.get("stage_dir") or "").rstrip("/")

    # ---- executors

    def write(self, iterator: Iterator[Any]) -> DeltaFiles:
        import pyarrow as pa

        schema = arrow_schema(StructType.fromJson(json.loads(self.schema_json)))
        data_columns = [n for n in schema.names if n not in self.partition_by]
        files: dict[tuple, _ParquetFile] = {}
        for batch in iterator:
            if batch.num_rows == 0:
                continue
            table = pa.Table.from_batches([batch]).select(schema.names).cast(schema)
            for key, rows in _split(table, self.partition_by):
                values = [partition_string(v) for v in key]
                self._check_replaced_partition(values)
                if key not in files:
                    folder = partition_dir(self.partition_by, values)
                    files[key] = _ParquetFile(self.path, folder, self.write_id, dict(zip(self.partition_by, values)))
                files[key].add(rows.select(data_columns))
        return DeltaFiles([f.close() for f in files.values()])

    def _check_replaced_partition(self, values: list[str | None]) -> None:
        for column, value in zip(self.partition_by, values):
            if column in self.replace and value != self.replace[column]:
                raise ValueError(
                    f"{PARTITION_MISMATCH}: table {self.table}: the DataFrame has rows with {column}={value}, "
                    f"outside the partition being replaced ({column}={self.replace[column]})"
                )

    # ---- driver

    def commit(self, messages: list[DeltaFiles | None]) -> None:
        adds = [a for m in messages if m is not None for a in m.adds]
        if self.stage_dir:
            # The Warehouse commits on its own driver, against the version its job read
            # (longtail.core.commits): hand it the files in a manifest.
            write_bytes(f"{self.stage_dir}/{self.write_id}.json", json.dumps({"adds": adds}).encode())
            return
        from longtail.core.commits import Intent, commit, latest_version

        commit(Intent(
            self.table, self.path, adds, "overwrite" if self.overwrite else "append", self.schema_json,
            self.partition_by, self.replace, read_version=latest_version(self.path), write=self.write_id,
            schema_mode="merge" if not self.overwrite else None,
        ))

    def abort(self, messages: list[DeltaFiles | None]) -> None:
        remove_files(self.path, [a["path"] for m in messages if m is not None for a in m.adds])


def _split(table, columns: list[str]) -> Iterator[tuple[tuple, Any]]:
    """(partition key, rows) for each partition present in an Arrow table."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not columns:
        yield (), table
        return
    keys = table.select(columns).group_by(columns).aggregate([]).to_pylist()
    if len(keys) == 1:  # the usual case: a whole batch in one partition
        yield tuple(keys[0][c] for c in columns), table
        return
    for key in keys:
        mask = None
        for c in columns:
            v = key[c]
            m = pc.is_null(table[c]) if v is None else pc.equal(table[c], pa.scalar(v, table[c].type))
            mask = m if mask is None else pc.and_(mask, m)
        yield tuple(key[c] for c in columns), table.filter(mask)


class _ParquetFile:
    """One output file of a task: buffered row groups plus the statistics Delta keeps per file."""

    def __init__(self, table_uri: str, folder: str, write_id: str, partition_values: dict[str, str | None]):
        from pyspark import TaskContext

        context = TaskContext.get()
        task = context.partitionId() if context is not None else 0
        name = f"part-{write_id}-{task:05d}-{uuid.uuid4().hex}.snappy.parquet"
        self.relative = f"{folder}/{name}" if folder else name
        self.fs, base = filesystem(table_uri)
        self.full_path = f"{base}/{self.relative}"
        self.partition_values = partition_values
        self.buffer: list = []
        self.buffered = 0
        self.writer = None
        self.stats = _Stats()

    def add(self, rows) -> None:
        self.stats.add(rows)
        self.buffer.append(rows)
        self.buffered += rows.num_rows
        if self.buffered >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.buffer:
            return
        rows = pa.concat_tables(self.buffer)
        if self.writer is None:
            self.fs.create_dir(os.path.dirname(self.full_path), recursive=True)
            self.sink = self.fs.open_output_stream(self.full_path)
            self.writer = pq.ParquetWriter(self.sink, rows.schema, compression="snappy")
        self.writer.write_table(rows, row_group_size=ROW_GROUP_ROWS)
        self.buffer, self.buffered = [], 0

    def close(self) -> dict[str, Any]:
        self._flush()
        self.writer.close()
        self.sink.close()
        return {
            "path": self.relative,  # as on disk: delta-rs percent-encodes it for the log itself
            "size": self.fs.get_file_info(self.full_path).size,
            "partition_values": self.partition_values,
            "modification_time": int(time.time() * 1000),
            "data_change": True,
            "stats": self.stats.json(),
        }


class _Stats:
    """numRecords, nullCount and min/max of top-level primitive columns, as Delta's ``stats`` JSON."""

    def __init__(self) -> None:
        self.rows = 0
        self.nulls: dict[str, int] = {}
        self.min: dict[str, Any] = {}
        self.max: dict[str, Any] = {}

    def add(self, table) -> None:
        import pyarrow.compute as pc
        import pyarrow.types as t

        self.rows += table.num_rows
        for name, column in zip(table.column_names, table.columns):
            kind = column.type
            if t.is_nested(kind):
                continue
            self.nulls[name] = self.nulls.get(name, 0) + column.null_count
            orderable = t.is_integer(kind) or t.is_floating(kind) or t.is_date(kind) or t.is_timestamp(kind) or t.is_string(kind)
            if not orderable or column.null_count == len(column):
                continue
            low, high = (v.as_py() for v in pc.min_max(column).values())
            self.min[name] = low if name not in self.min else min(self.min[name], low)
            self.max[name] = high if name not in self.max else max(self.max[name], high)

    def json(self) -> str:
        low = {k: s for k, v in self.min.items() if (s := _stat_value(v, up=False)) is not None}
        high = {k: s for k, v in self.max.items() if (s := _stat_value(v, up=True)) is not None}
        return json.dumps({"numRecords": self.rows, "minValues": low, "maxValues": high, "nullCount": self.nulls})


def _stat_value(value: Any, up: bool) -> Any:
    """A min (``up=False``) or max value as Delta writes it; None where no safe bound exists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dt.datetime):
        # Delta keeps milliseconds; round the max up so it stays an upper bound.
        if up and value.microsecond % 1000:
            value += dt.timedelta(microseconds=1000 - value.microsecond % 1000)
        value = value.astimezone(dt.timezone.utc) if value.tzinfo else value
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str) and len(value) > STRING_STATS_CHARS:
        # A prefix is still a lower bound; a truncated max would not be an upper bound.
        return None if up else value[:STRING_STATS_CHARS]
    return value


def take_manifest(stage_dir: str, write_id: str) -> list[dict[str, Any]]:
    """The add actions a staged write left in its manifest; the manifest is deleted."""
    path = f"{stage_dir.rstrip('/')}/{write_id}.json"
    adds = json.loads(read_bytes(path))["adds"]
    remove_file(path)
    return adds
