"""Writers for the concurrency suite: plain processes (no Spark) committing through
:mod:`longtail.core.commits`, the same code the warehouse's driver commits with.

Each writer writes its own Parquet files into the table folder and commits them as one Delta
transaction, the way a Spark write's tasks and driver do; what it read is what it declares.
"""
from __future__ import annotations

import json
import os
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([("id", pa.int64()), ("writer", pa.int64()), ("seq", pa.int64()), ("part", pa.string())])


def schema_json() -> str:
    from deltalake import Schema

    return Schema.from_arrow(SCHEMA).to_json()


def write_file(path: str, rows: pa.Table, part: str | None) -> dict:
    """One Parquet file of ``rows`` in the table folder, as an AddAction dict."""
    folder = f"part={part}" if part is not None else ""
    os.makedirs(os.path.join(path, folder), exist_ok=True)
    name = f"{folder}/f-{uuid.uuid4().hex}.parquet" if folder else f"f-{uuid.uuid4().hex}.parquet"
    data = rows.drop(["part"]) if part is not None else rows
    pq.write_table(data, os.path.join(path, name))
    return {"path": name, "size": os.path.getsize(os.path.join(path, name)),
            "partition_values": {"part": part} if part is not None else {},
            "modification_time": int(time.time() * 1000), "data_change": True,
            "stats": json.dumps({"numRecords": rows.num_rows})}


def rows_of(writer: int, seq: int, ids: list[int], part: str) -> pa.Table:
    n = len(ids)
    return pa.table({"id": ids, "writer": [writer] * n, "seq": [seq] * n, "part": [part] * n}, schema=SCHEMA)


def read(path: str):
    """(version, rows) of the table's latest version."""
    from deltalake import DeltaTable

    dt = DeltaTable(path)
    return dt.version(), dt.to_pyarrow_table()


def run(kind: str, path: str, writer: int, commits_each: int, start_at: float, partitioned: bool) -> dict:
    """One writer's ``commits_each`` commits of ``kind``; returns how many conflicts it saw and retried.

    Kinds:
        append: blind appends of 3 rows (ids unique by construction).
        partition: replaces its own partition ``w<writer>`` with 3 rows, 10 times.
        ids: reads the table, appends the next 3 ids after its max (read-modify-write, like the id maps
            of ``sequences``); a conflict means it must read again.
        counter: reads the one-row counter and overwrites it with value + 1 (a read-modify-overwrite).
    """
    from longtail.core.commits import Intent, commit
    from longtail.core.errors import ConflictError

    while time.time() < start_at:  # start together: maximum contention
        time.sleep(0.001)
    conflicts = 0
    job = f"writer{writer}"
    part_by = ["part"] if partitioned else []
    for seq in range(commits_each):
        while True:
            if kind == "append":
                ids = [writer * 1_000_000 + seq * 10 + i for i in range(3)]
                part = f"w{writer}" if partitioned else None
                adds = [write_file(path, rows_of(writer, seq, ids, part or ""), part)]
                intent = Intent("t", path, adds, "append", schema_json(), part_by, job=f"{job}-{seq}")
            elif kind == "partition":
                part = f"w{writer}"
                ids = [writer * 1_000_000 + seq * 10 + i for i in range(3)]
                adds = [write_file(path, rows_of(writer, seq, ids, part), part)]
                intent = Intent("t", path, adds, "overwrite", schema_json(), part_by, {"part": part},
                                read_version=read(path)[0], job=f"{job}-{seq}")
            elif kind == "ids":
                version, table = read(path)
                top = max(table.column("id").to_pylist() or [0])
                part = "all" if partitioned else None
                adds = [write_file(path, rows_of(writer, seq, [top + 1, top + 2, top + 3], part or ""), part)]
                intent = Intent("t", path, adds, "append", schema_json(), part_by, read_version=version,
                                reads=[{}], job=f"{job}-{seq}")
            else:  # counter
                version, table = read(path)
                value = max(table.column("id").to_pylist() or [0])
                part = "all" if partitioned else None
                adds = [write_file(path, rows_of(writer, seq, [value + 1], part or ""), part)]
                intent = Intent("t", path, adds, "overwrite", schema_json(), part_by, read_version=version,
                                reads=[{}], job=f"{job}-{seq}")
            try:
                commit(intent)
                break
            except ConflictError:
                conflicts += 1
                for a in adds:
                    os.remove(os.path.join(path, a["path"]))
    return {"writer": writer, "conflicts": conflicts}
