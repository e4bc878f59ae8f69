"""vacuum: what no table version or kept model needs goes once older than the retention; nothing else."""
from __future__ import annotations

import datetime as dt
import os
import time

import pytest
from longtail.core import schemas
from longtail.core.config import VacuumConfig
from longtail.core.vacuum import run_vacuum

pytestmark = pytest.mark.spark
HOUR = 3600


def _age(path, hours):
    when = time.time() - hours * HOUR
    for folder, _, files in os.walk(path):
        for name in files:
            os.utime(os.path.join(folder, name), (when, when))
        os.utime(folder, (when, when))
    os.utime(path, (when, when))


def _touch(path, hours=0.0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write("x")
    _age(path, hours)
    if hours:
        _age(os.path.dirname(path), hours)  # a folder's time is its last change
    return path


def _parquet(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
                  if f.endswith(".parquet"))


def test_vacuum_removes_orphans_scratch_and_old_models_only(spark, warehouse):
    wh, root = warehouse, warehouse.root
    rows = spark.createDataFrame([("u1", 1)], "user_id string, n int")
    wh.write(rows, "t")
    wh.write(rows, "t")  # the first file is now removed by a commit (a tombstone)
    live = _parquet(wh.path("t"))
    old_orphan = _touch(f"{wh.path('t')}/part-killed-00000.snappy.parquet", hours=5)
    new_orphan = _touch(f"{wh.path('t')}/part-inflight-00000.snappy.parquet")
    old_scratch = _touch(f"{root}/_tmp/neighbors-old/block-0.npy", hours=5)
    new_scratch = _touch(f"{root}/_tmp/staged/abc.json")
    old_run = _touch(f"{root}/_train/v-old/shard-0.parquet", hours=5)
    trained = dt.datetime(2026, 1, 1)
    models = []
    for i in range(1, 5):
        _touch(f"{root}/_models/sasrec/v{i}/weights.pt", hours=5)
        models.append(("sasrec", f"v{i}", f"{root}/_models/sasrec/v{i}", trained + dt.timedelta(days=i),
                       1, 0.1, 0.2, 1.0, 1, 42))
    wh.append_rows(schemas.MODELS, models)
    _touch(f"{root}/_models/sasrec/v5.tmp-1234/weights.pt", hours=5)  # a killed save
    _touch(f"{root}/_models/sasrec/v6/weights.pt", hours=5)  # a killed train: no row
    _touch(f"{root}/_models/sasrec/v7/weights.pt")  # training right now
    _touch(f"{root}/_reports/evaluation-sasrec.json", hours=5)

    dry = run_vacuum(wh, VacuumConfig(retention_hours=1, keep_models=2), dry_run=True)
    assert dry.table_files["t"] == 1 and os.path.exists(old_orphan)

    report = run_vacuum(wh, VacuumConfig(retention_hours=1, keep_models=2))
    assert report.table_files["t"] == 1  # the old orphan; the tombstone is younger than 1 h
    assert not os.path.exists(old_orphan) and os.path.exists(new_orphan)
    assert not os.path.exists(os.path.dirname(old_scratch)) and not os.path.exists(os.path.dirname(old_run))
    assert os.path.exists(new_scratch)
    assert sorted(os.listdir(f"{root}/_models/sasrec")) == ["v3", "v4", "v7"]
    assert os.path.exists(f"{root}/_reports/evaluation-sasrec.json")
    assert wh.read("t").count() == 1 and wh.read(schemas.MODELS).count() == 4

    # Removed files go once their removal is older than the retention; live ones never.
    from deltalake import DeltaTable

    current = [os.path.basename(u) for u in DeltaTable(wh.path("t")).file_uris()]
    assert len(live) == 2 and len(current) == 1
    report = run_vacuum(wh, VacuumConfig(retention_hours=0, keep_models=2))
    assert [os.path.basename(p) for p in _parquet(wh.path("t"))] == current  # (and the orphan, now 0 h old)
    assert wh.read("t").count() == 1
    assert "deleted" in str(report)
