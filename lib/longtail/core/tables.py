"""Reading and writing the warehouse's Delta tables, through native Delta or delta-rs.

Two engines behind one API (:class:`Warehouse`):

- ``native``: delta-spark, when its JVM classes are on the classpath (Databricks, ``--packages``).
- ``delta-rs``: the Python Data Source in :mod:`longtail.core.delta_rs`: executors write Parquet files,
  the driver commits them in one Delta transaction. Reads pin a version and give Spark's own Parquet
  reader the version's file list (measured 1.5-3x faster than the Python reader on 200k rows), falling back
  to the Python Data Source reader for file layouts Spark cannot read that way.

Both check a write's schema against the table first (:class:`TableSchemaMismatchError` unless
``evolve_schema``), and :meth:`Warehouse.job` puts every table written in a failed block back.

Concurrency (delta-rs; native Delta keeps its own guarantees): every write commits against the
version its job read (:mod:`longtail.core.commits`): a table read inside :meth:`Warehouse.job` is
remembered at the version read, and a later write to it conflicts with any other writer's change
since; an overwrite conflicts with changes to what it replaces; a blind append never conflicts
(it is retried). A failed job undoes only its own commits (tagged with its id), never another
writer's. See ``docs/reliability.md``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DataType, StructField, StructType

from longtail.core import commits, delta_rs, faults
from longtail.core.errors import (
    ConfigError,
    ConflictError,
    EnvironmentProblem,
    InputError,
    TableNotFoundError,
    TableSchemaMismatchError,
)
from longtail.core.session import can_reach

log = logging.getLogger(__name__)

ENGINES = ("auto", "native", "delta-rs")
MODES = ("overwrite", "append")
#: Partition column types whose folder names Spark's Parquet reader parses back exactly.
_FOLDER_TYPES = ("string", "date", "integer", "long", "short", "byte", "boolean")


class Warehouse:
    """The tables of one warehouse folder, read and written as Delta.

    Args:
        spark: the job's session.
        root: warehouse folder (local path, ``file:`` URI or object-store URI); tables are ``<root>/<table>``.
        engine: ``auto`` (native Delta when its JVM classes are present, else delta-rs), ``native`` or ``delta-rs``.

    Raises:
        ConfigError: an unknown engine.
        EnvironmentProblem: ``native`` asked for but delta-spark is not on the classpath.
    """

    def __init__(self, spark: SparkSession, root: str, engine: str = "auto") -> None:
        if engine not in ENGINES:
            raise ConfigError(f"delta.engine: unknown engine {engine!r} (expected one of {', '.join(ENGINES)})")
        self.spark = spark
        self.root = _normalize_root(str(root))
        jvm_delta = delta_rs.register(spark)
        if engine == "native" and not jvm_delta:
            raise EnvironmentProblem(
                "delta.engine is native but Delta's JVM classes are not on the classpath: start Spark with "
                "--packages io.delta:delta-spark_2.13:<version> (or on Databricks), or use engine auto/delta-rs"
            )
        self.engine = "native" if engine == "native" or (engine == "auto" and jvm_delta) else "delta-rs"
        self._impl = _Native(spark) if self.engine == "native" else _DeltaRs(spark, f"{self.root}/_tmp/staged")
        #: The open job() blocks, outermost first; the outermost one's id tags every commit.
        self._jobs: list[_Job] = []

    def path(self, table: str) -> str:
        """Folder or URI of ``table``."""
        return f"{self.root}/{table}"

    def exists(self, table: str) -> bool:
        """Whether ``table`` is a Delta table."""
        return self._impl.exists(self.path(table))

    def version(self, table: str) -> int:
        """Latest version of ``table``. Raises TableNotFoundError."""
        self._require(table)
        return self._impl.version(self.path(table))

    def read(self, table: str, version: int | None = None) -> DataFrame:
        """``table`` at ``version`` (latest when None) as a DataFrame with the table's schema.

        Raises:
            TableNotFoundError: no such table, or no such version of it.
            UnsupportedDeltaTable: (delta-rs) the table uses deletion vectors or column mapping.
        """
        self._require(table)
        latest = self._impl.version(self.path(table))
        if version is not None and not 0 <= version <= latest:
            raise TableNotFoundError(f"table {table}: no version {version} at {self.path(table)} (latest is {latest})")
        pinned = latest if version is None else version
        for frame in self._jobs:  # a job's writes commit against what it read
            frame.reads.setdefault(table, pinned)
        return self._impl.read(table, self.path(table), pinned)

    def write(
        self,
        df: DataFrame,
        table: str,
        mode: str = "overwrite",
        partition_by: list[str] | None = None,
        replace_partitions: dict[str, Any] | None = None,
        evolve_schema: bool = False,
    ) -> int:
        """Write ``df`` to ``table`` in one Delta commit and return the new version.

        Args:
            df: rows to write.
            table: table name.
            mode: ``overwrite`` (replace all rows) or ``append``.
            partition_by: partition columns of a new table (or of an overwrite with ``evolve_schema``).
            replace_partitions: e.g. ``{"run_date": date}``: overwrite only that partition, keep the others;
                every row of ``df`` must lie in it.
            evolve_schema: let a different schema through: merged into the table for append and
                partition replacement, replacing it for overwrite.

        Raises:
            TableSchemaMismatchError: ``df``'s columns or types differ from the table's (names both).
            InputError: rows outside the partition being replaced.
            ConflictError: another writer changed what this write read (see the module doc).
            ValueError: unknown mode, or ``replace_partitions`` with append.
        """
        if mode not in MODES:
            raise ValueError(f"table {table}: unknown write mode {mode!r} (expected overwrite or append)")
        if replace_partitions and mode != "overwrite":
            raise ValueError(f"table {table}: replace_partitions needs mode='overwrite', not {mode!r}")
        path = self.path(table)
        existing = self._impl.describe(table, path) if self._impl.exists(path) else None
        plan = _plan(table, df.schema, existing, mode, partition_by, replace_partitions or {}, evolve_schema)
        job = self._jobs[0].id if self._jobs else uuid.uuid4().hex[:12]
        read = self._jobs[0].reads.get(table) if self._jobs else None
        current = existing.version if existing else None
        txn = _Txn(job, read if read is not None else current, [{}] if read is not None else [])
        for frame in self._jobs:  # what to go back to if the job fails
            frame.base.setdefault(table, current)
        version = self._impl.write(_conform(df, plan.schema), table, path, plan, txn)
        faults.point(f"committed:{table}")
        return version

    def append_rows(self, table: str, rows: list[tuple]) -> int:
        """Append ``rows`` (tuples in the contract's column order) to a record table in one commit.

        Run, model and evaluation records are only ever appended, never rewritten, so that
        jobs running at once cannot lose each other's rows; readers take the latest row per key.
        Returns the new version.
        """
        from longtail.core.schemas import SCHEMAS

        return self.write(self.spark.createDataFrame(rows, SCHEMAS[table]), table, mode="append")

    @contextlib.contextmanager
    def job(self) -> Iterator["Warehouse"]:
        """Run a block as one job: its writes commit against the versions it read, and if it raises,
        what it committed is undone.

        Tables created inside the block are removed. Nested blocks each undo what was written in
        them. Only this job's own commits are undone: a table another writer changed after this
        job's commit, in the same partition, is left as it is (a note on the error says so).
        A :class:`longtail.core.faults.Killed` (a simulated kill -9) passes through untouched.
        """
        frame = _Job(self._jobs[0].id if self._jobs else uuid.uuid4().hex[:12])
        self._jobs.append(frame)
        try:
            yield self
        except faults.Killed:
            raise
        except BaseException as exc:
            for table, version in frame.base.items():
                try:
                    left = self._undo(table, version, frame.id)
                except Exception as problem:  # noqa: BLE001 - keep undoing the others, report on the error
                    left = f"could not undo this job's commits: {problem}"
                if left:
                    exc.add_note(f"table {table}: {left}")
                    log.error("table %s: %s", table, left)
            raise
        finally:
            self._jobs.remove(frame)

    # ------------------------------------------------------------------ internals

    def _require(self, table: str) -> None:
        if not self.exists(table):
            raise TableNotFoundError(f"table {table}: no Delta table at {self.path(table)}")

    def _undo(self, table: str, version: int | None, job: str) -> str | None:
        return self._impl.undo(table, self.path(table), version, job)


@dataclass
class _Job:
    """One open :meth:`Warehouse.job` block."""

    id: str
    #: table -> version the job first read.
    reads: dict[str, int] = field(default_factory=dict)
    #: table -> version before the block's first write there (None: the table did not exist).
    base: dict[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class _Txn:
    """What a write commits against: the job's id, the version it read, what it read there."""

    job: str
    read_version: int | None
    reads: list[dict[str, str | None]]


# ---------------------------------------------------------------------------- schema plan


@dataclass(frozen=True)
class _Existing:
    schema: StructType
    partition_by: list[str]
    version: int


@dataclass(frozen=True)
class _Plan:
    """What one write does: the table schema after it, partitioning, and how to treat the old rows."""

    schema: StructType
    mode: str
    partition_by: list[str]
    replace: dict[str, str | None]
    #: ``merge`` (add columns), ``overwrite`` (replace the schema) or None (unchanged / new table).
    schema_mode: str | None
    new_table: bool


def _plan(
    table: str,
    incoming: StructType,
    existing: _Existing | None,
    mode: str,
    partition_by: list[str] | None,
    replace: dict[str, Any],
    evolve: bool,
) -> _Plan:
    """Check ``incoming`` against the table and decide the schema and partitioning after the write."""
    replace_str = {c: delta_rs.partition_string(v) for c, v in replace.items()}
    full_overwrite = mode == "overwrite" and not replace
    parts = _partitioning(table, existing, partition_by, replace, full_overwrite and evolve)
    if existing is None:
        _check_partition_columns(table, parts, incoming)
        return _Plan(delta_rs.nullable(incoming), mode, parts, replace_str, None, True)
    problems = _differences(existing.schema, incoming)
    if not problems:
        schema = existing.schema  # exactly, so a write never loosens a NOT NULL column of a foreign table
        _check_partition_columns(table, parts, schema)
        # Native Delta needs overwriteSchema to change partitioning even when the columns stay.
        schema_mode = "overwrite" if parts != existing.partition_by else None
        return _Plan(schema, mode, parts, replace_str, schema_mode, False)
    if not evolve:
        raise TableSchemaMismatchError(
            f"table {table}: the DataFrame does not match the table: {'; '.join(problems)} "
            "(pass evolve_schema=True to change the table)"
        )
    if full_overwrite:
        schema, schema_mode = delta_rs.nullable(incoming), "overwrite"
    else:
        schema, schema_mode = _merged_schema(table, existing.schema, incoming, mode), "merge"
    _check_partition_columns(table, parts, schema)
    return _Plan(schema, mode, parts, replace_str, schema_mode, False)


def _partitioning(
    table: str, existing: _Existing | None, partition_by: list[str] | None, replace: dict[str, Any], may_change: bool
) -> list[str]:
    """The partition columns after the write; a change needs a full overwrite with schema evolution."""
    if existing is None:
        parts = list(partition_by if partition_by is not None else replace)
    else:
        parts = existing.partition_by
        if partition_by is not None and list(partition_by) != parts:
            if not may_change:
                raise TableSchemaMismatchError(
                    f"table {table}: partitioned by {parts}, not {list(partition_by)}; "
                    "overwrite with evolve_schema=True to repartition it"
                )
            parts = list(partition_by)
    if replace and sorted(replace) != sorted(parts):
        raise TableSchemaMismatchError(
            f"table {table}: partitioned by {parts}; replace_partitions must name exactly those columns, "
            f"not {sorted(replace)}"
        )
    return parts


def _merged_schema(table: str, existing: StructType, incoming: StructType, mode: str) -> StructType:
    """The table's schema with ``incoming``'s new columns added; a changed type is an error."""
    table_types = {f.name: f.dataType for f in existing}
    changed = [f.name for f in incoming if f.name in table_types and not _same_type(f.dataType, table_types[f.name])]
    if changed:
        raise TableSchemaMismatchError(
            f"table {table}: column {changed[0]} has type {_type_of(incoming, changed[0])} in the DataFrame "
            f"but {table_types[changed[0]].simpleString()} in the table; a {mode} can only add columns "
            "(overwrite the whole table with evolve_schema=True to change types)"
        )
    added = [_nullable_field(f) for f in incoming if f.name not in table_types]
    return StructType([*existing.fields, *added])


def _differences(table_schema: StructType, incoming: StructType) -> list[str]:
    """Human descriptions of every column that differs (nullability aside)."""
    theirs = {f.name: f.dataType for f in incoming}
    ours = {f.name: f.dataType for f in table_schema}
    problems = [f"column {n} is missing from the DataFrame" for n in ours if n not in theirs]
    problems += [f"column {n} is not in the table" for n in theirs if n not in ours]
    problems += [
        f"column {n} has type {theirs[n].simpleString()} in the DataFrame but {t.simpleString()} in the table"
        for n, t in ours.items()
        if n in theirs and not _same_type(theirs[n], t)
    ]
    return problems


def _check_partition_columns(table: str, parts: list[str], schema: StructType) -> None:
    missing = [c for c in parts if c not in schema.names]
    if missing:
        raise TableSchemaMismatchError(f"table {table}: partition column {missing[0]} is not in the DataFrame")


def _same_type(a: DataType, b: DataType) -> bool:
    # Nullability aside: Spark marks literals and aggregates non-nullable, tables are all-nullable.
    return delta_rs.nullable(a) == delta_rs.nullable(b)


def _nullable_field(f: StructField) -> StructField:
    return StructField(f.name, delta_rs.nullable(f.dataType), True, f.metadata)


def _type_of(schema: StructType, name: str) -> str:
    return schema[name].dataType.simpleString()


def _conform(df: DataFrame, schema: StructType) -> DataFrame:
    """``df``'s columns in table order; columns the table has but ``df`` lacks (schema merge) as nulls."""
    present = set(df.columns)
    return df.select(
        [F.col(f.name) if f.name in present else F.lit(None).cast(f.dataType).alias(f.name) for f in schema]
    )


# ---------------------------------------------------------------------------- engines


class _DeltaRs:
    """delta-rs through the Python Data Source (writes) and Spark's Parquet reader (reads)."""

    def __init__(self, spark: SparkSession, stage_dir: str) -> None:
        self.spark = spark
        #: Where write tasks leave the manifest of the files to commit (see delta_rs.take_manifest).
        self.stage_dir = stage_dir

    def exists(self, path: str) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(path)

    def version(self, path: str) -> int:
        from deltalake import DeltaTable

        return DeltaTable(path).version()

    def describe(self, table: str, path: str) -> _Existing:
        from deltalake import DeltaTable

        dt = DeltaTable(path)
        delta_rs.check_supported(dt, table, path)
        return _Existing(delta_rs.spark_schema(dt), list(dt.metadata().partition_columns), dt.version())

    def read(self, table: str, path: str, version: int) -> DataFrame:
        from deltalake import DeltaTable

        dt = DeltaTable(path, version=version)
        delta_rs.check_supported(dt, table, path)
        schema = delta_rs.spark_schema(dt)
        parts = list(dt.metadata().partition_columns)
        files = delta_rs.data_files(dt)
        if not files:
            return self.spark.createDataFrame([], schema)
        # Spark's own Parquet reader where it reaches the folder (an object store needs its Hadoop connector).
        if _spark_can_read(files, parts, schema) and can_reach(self.spark, path):
            uris = [f"{path}/{urllib.parse.unquote(p)}" for p, _ in files]
            reader = self.spark.read.schema(schema)
            if parts:  # partition values come back from the col=value folders
                reader = reader.option("basePath", path)
            return reader.parquet(*uris).select(*schema.names)
        return (
            self.spark.read.format(delta_rs.NAME)
            .schema(schema)
            .option("versionAsOf", str(version))
            .load(path)
        )

    def write(self, df: DataFrame, table: str, path: str, plan: _Plan, txn: _Txn) -> int:
        write_id = uuid.uuid4().hex[:12]
        writer = (
            df.write.format(delta_rs.NAME)
            .mode(plan.mode)  # always explicit: the source knows only append and overwrite
            .option("table", table)
            .option("table_schema", plan.schema.json())
            .option("partition_by", json.dumps(plan.partition_by))
            .option("replace_partitions", json.dumps(plan.replace))
            .option("write_id", write_id)
            .option("stage_dir", self.stage_dir)
        )
        with _job_group(self.spark, write_id) as settle:
            try:
                writer.save(path)
            except Exception as exc:
                # Files of failed tasks never reach abort(): remove everything this write left,
                # once the write's other tasks have stopped (they may still be writing).
                settle()
                delta_rs.sweep_write(path, write_id)
                _raise_known(exc)
                raise
        adds = delta_rs.take_manifest(self.stage_dir, write_id)
        intent = commits.Intent(
            table, path, adds, plan.mode, plan.schema.json(), plan.partition_by, plan.replace,
            read_version=txn.read_version, reads=txn.reads, job=txn.job, write=write_id, schema_mode=plan.schema_mode,
        )
        try:
            return commits.commit(intent, before=lambda: faults.point(f"commit:{table}"))
        except ConflictError:
            delta_rs.remove_files(path, [a["path"] for a in adds])  # never to be committed
            raise

    def undo(self, table: str, path: str, base: int | None, job: str) -> str | None:
        return commits.revert(path, table, base, job)


@contextlib.contextmanager
def _job_group(spark: SparkSession, group: str):
    """Run the block's Spark jobs in their own group; yields a function that cancels the group
    and waits (bounded) until none of its tasks still runs."""
    try:
        sc = spark.sparkContext
    except Exception:  # noqa: BLE001 - Spark Connect has no SparkContext: nothing to settle
        yield lambda: None
        return
    previous = sc.getLocalProperty("spark.jobGroup.id")
    sc.setJobGroup(group, f"longtail write {group}", interruptOnCancel=True)

    def settle(timeout: float = 60.0) -> None:
        sc.cancelJobGroup(group)
        tracker = sc.statusTracker()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stages = {s for j in tracker.getJobIdsForGroup(group) if (info := tracker.getJobInfo(j)) for s in info.stageIds}
            running = [s for s in stages if (st := tracker.getStageInfo(s)) and st.numActiveTasks > 0]
            if not running:
                return
            time.sleep(0.2)

    try:
        yield settle
    finally:
        sc.setLocalProperty("spark.jobGroup.id", previous)


class _Native:
    """delta-spark (JVM) through its DataFrame reader/writer and ``delta.tables``."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def _table(self, path: str):
        from delta.tables import DeltaTable

        return DeltaTable.forPath(self.spark, path)

    def exists(self, path: str) -> bool:
        from delta.tables import DeltaTable

        return DeltaTable.isDeltaTable(self.spark, path)

    def version(self, path: str) -> int:
        return int(self._table(path).history(1).select("version").first()[0])

    def describe(self, table: str, path: str) -> _Existing:
        detail = self._table(path).detail().select("partitionColumns").first()
        return _Existing(self.spark.read.format("delta").load(path).schema, list(detail[0]), self.version(path))

    def read(self, table: str, path: str, version: int) -> DataFrame:
        return self.spark.read.format("delta").option("versionAsOf", version).load(path)

    def write(self, df: DataFrame, table: str, path: str, plan: _Plan, txn: _Txn) -> int:
        # delta-spark checks conflicts itself (against the snapshot it read when the write began);
        # the job's id goes into commitInfo.userMetadata so that undo() can tell its commits.
        writer = df.write.format("delta").mode(plan.mode).option("userMetadata", f"{commits.JOB_KEY}={txn.job}")
        if plan.partition_by:
            writer = writer.partitionBy(*plan.partition_by)
        if plan.replace:
            where = " AND ".join(f"{c} IS NULL" if v is None else f"{c} = '{v}'" for c, v in plan.replace.items())
            writer = writer.option("replaceWhere", where)
        if plan.schema_mode == "merge":
            writer = writer.option("mergeSchema", "true")
        elif plan.schema_mode == "overwrite":
            writer = writer.option("overwriteSchema", "true")
        try:
            writer.save(path)
        except Exception as exc:
            _raise_known(exc, table)
            raise
        return self.version(path)

    def undo(self, table: str, path: str, base: int | None, job: str) -> str | None:
        if not self.exists(path):
            return None
        tag = f"{commits.JOB_KEY}={job}"
        history = self._table(path).history().select("version", "userMetadata").collect()
        others = [r["version"] for r in history if (base is None or r["version"] > base) and r["userMetadata"] != tag]
        if others:
            return f"commits {sorted(others)} by other writers followed this job's; left as it is"
        if base is None:
            _remove_tree(path)
        else:
            self._table(path).restoreToVersion(base)
        return None


# ---------------------------------------------------------------------------- small helpers


def _raise_known(exc: Exception, table: str | None = None) -> None:
    """Turn a write failure we caused on purpose into its one-line error."""
    text = str(exc)
    found = re.search(delta_rs.PARTITION_MISMATCH + r": ([^\n]*)", text)
    if found:
        raise InputError(found.group(1)) from None
    if "DELTA_REPLACE_WHERE_MISMATCH" in text:  # native Delta's own check of replaceWhere
        raise InputError(f"table {table}: the DataFrame has rows outside the partition being replaced") from None


def _spark_can_read(files: list[tuple[str, dict[str, Any]]], parts: list[str], schema: StructType) -> bool:
    """Whether Spark's Parquet reader gets these files right: no glob characters in their paths, and
    (for partitioned tables) every file in the ``col=value`` folder its partition values name."""
    if any(schema[c].dataType.typeName() not in _FOLDER_TYPES for c in parts):
        return False
    for rel, values in files:
        rel = urllib.parse.unquote(rel)
        if any(ch in rel for ch in "*?[]{}\\"):
            return False
        expected = delta_rs.partition_dir(parts, [delta_rs.partition_string(values[c]) for c in parts])
        if parts and os.path.dirname(rel) != expected:
            return False
    return True


def _normalize_root(root: str) -> str:
    """Absolute local path for paths and ``file:`` URIs; other URIs (s3://, abfss://...) pass through."""
    root = root.rstrip("/") or "/"
    if root.startswith("file:"):
        return urllib.parse.unquote(urllib.parse.urlparse(root).path).rstrip("/") or "/"
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+://", root):
        return root
    return os.path.abspath(root)


def _remove_tree(path: str) -> None:
    """Delete a table folder (a table created inside a failed job)."""
    fs, base = delta_rs.filesystem(path)
    fs.delete_dir(base)
