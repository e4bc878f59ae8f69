"""Concurrent writers on one table: 4 processes x 10 commits each, through the commit protocol
the warehouse uses (longtail.core.commits). Counted: rows lost, duplicate ids, conflicts reported.

Figures of a run go to docs/reliability.md; `LONGTAIL_FAULT_REPORT=path` appends them as JSON lines.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections import Counter

import pytest
from deltalake import DeltaTable

from tests.faults import writers

WRITERS, COMMITS = 4, 10


def _create(path: str, partitioned: bool, seed_rows: bool) -> None:
    from deltalake.transaction import AddAction, create_table_with_add_actions
    from deltalake import Schema

    adds = []
    if seed_rows:
        part = "all" if partitioned else None
        adds = [AddAction(**writers.write_file(path, writers.rows_of(-1, -1, [0], part or ""), part))]
    create_table_with_add_actions(path, Schema.from_json(writers.schema_json()), adds,
                                  partition_by=["part"] if partitioned else None)


def _run_all(kind: str, path: str, partitioned: bool) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 2.0
    with ctx.Pool(WRITERS) as pool:
        results = [pool.apply_async(writers.run, (kind, path, w, COMMITS, start_at, partitioned))
                   for w in range(WRITERS)]
        return [r.get(timeout=300) for r in results]


def _report(case: str, **figures) -> None:
    target = os.environ.get("LONGTAIL_FAULT_REPORT")
    if target:
        with open(target, "a") as out:
            out.write(json.dumps({"suite": "concurrent", "case": case, **figures}) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("partitioned", [False, True], ids=["one-table", "own-partitions"])
def test_blind_appends_lose_nothing(tmp_path, partitioned):
    path = str(tmp_path / "t")
    _create(path, partitioned, seed_rows=False)
    results = _run_all("append", path, partitioned)
    rows = DeltaTable(path).to_pyarrow_table()
    expected = {w * 1_000_000 + s * 10 + i for w in range(WRITERS) for s in range(COMMITS) for i in range(3)}
    ids = rows.column("id").to_pylist()
    lost, duplicates = len(expected - set(ids)), len(ids) - len(set(ids))
    conflicts = sum(r["conflicts"] for r in results)
    _report(f"append {'own partitions' if partitioned else 'one table'}", rows_lost=lost,
            duplicates=duplicates, conflicts=conflicts, commits=DeltaTable(path).version())
    assert (lost, duplicates, conflicts) == (0, 0, 0)
    assert DeltaTable(path).version() == WRITERS * COMMITS


@pytest.mark.slow
def test_partition_replacements_of_different_partitions_all_land(tmp_path):
    path = str(tmp_path / "t")
    _create(path, True, seed_rows=False)
    results = _run_all("partition", path, True)
    rows = DeltaTable(path).to_pyarrow_table().to_pylist()
    by_part = Counter(r["part"] for r in rows)
    last = {(r["part"], r["seq"]) for r in rows}
    conflicts = sum(r["conflicts"] for r in results)
    _report("replace own partition", partitions_wrong=sum(1 for w in range(WRITERS) if by_part[f"w{w}"] != 3),
            conflicts=conflicts, commits=DeltaTable(path).version())
    assert by_part == {f"w{w}": 3 for w in range(WRITERS)}  # each partition holds its last write only
    assert last == {(f"w{w}", COMMITS - 1) for w in range(WRITERS)}
    assert conflicts == 0 and DeltaTable(path).version() == WRITERS * COMMITS


@pytest.mark.slow
@pytest.mark.parametrize("partitioned", [False, True] if os.environ.get("LONGTAIL_FAULTS_FULL") == "1" else [False],
                         ids=lambda p: "partitioned" if p else "one-table")
def test_read_modify_write_gets_conflicts_never_duplicate_ids(tmp_path, partitioned):
    path = str(tmp_path / "t")
    _create(path, partitioned, seed_rows=True)
    results = _run_all("ids", path, partitioned)
    ids = [i for i in DeltaTable(path).to_pyarrow_table().column("id").to_pylist() if i != 0]
    duplicates = len(ids) - len(set(ids))
    conflicts = sum(r["conflicts"] for r in results)
    _report(f"assign next ids {'partitioned' if partitioned else 'one table'}", duplicates=duplicates,
            rows_lost=WRITERS * COMMITS * 3 - len(set(ids)), conflicts=conflicts)
    assert duplicates == 0
    assert sorted(ids) == list(range(1, WRITERS * COMMITS * 3 + 1))  # dense: nothing lost either
    assert conflicts > 0  # they did collide, and were told


@pytest.mark.slow
def test_read_modify_overwrite_loses_no_update(tmp_path):
    path = str(tmp_path / "t")
    _create(path, False, seed_rows=True)
    results = _run_all("counter", path, False)
    values = DeltaTable(path).to_pyarrow_table().column("id").to_pylist()
    conflicts = sum(r["conflicts"] for r in results)
    _report("counter overwrite", updates_lost=WRITERS * COMMITS - max(values), conflicts=conflicts)
    assert values == [WRITERS * COMMITS]  # every increment counted once
    assert conflicts > 0
