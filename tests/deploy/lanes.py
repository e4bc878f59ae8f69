"""Running longtail the way its users do, each lane in its own processes, and checking what it wrote.

The lanes start ``longtail`` (or ``spark-submit``) as a subprocess: a Spark Connect server, a
``local-cluster`` with executor JVMs, a warehouse on an S3 server or a wheel installed outside the
checkout each need a fresh JVM and environment, which the test session's own SparkSession cannot give.
Tables are checked with delta-rs directly, so a lane's check needs no Spark.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from longtail.core import files
from longtail.core.schemas import SCHEMAS

REPO = Path(__file__).resolve().parents[2]
#: Two executors of one core and 2 GB each: a real multi-executor cluster on one machine.
CLUSTER = "local-cluster[2,1,2048]"
#: The tables `longtail demo` writes (every stage's outputs).
DEMO_TABLES = (
    "interactions", "items", "users", "user_sequences", "item_stats", "user_stats", "item_embeddings",
    "item_embeddings_pca", "user_embeddings", "similar_users", "models", "evaluation", "recommendations",
    "recommendation_runs", "similar_items",
)


def demo_settings() -> list[str]:
    """``--set`` options of the test suite's small demo (the same as the ``demo_warehouse`` fixture)."""
    from suite_settings import DEMO_OVERRIDES  # tests/suite_settings.py

    return [arg for key, value in DEMO_OVERRIDES.items() for arg in ("--set", f"{key}={value}")]


def cluster_demo(warehouse: str, session: str) -> subprocess.CompletedProcess:
    """``longtail demo`` over :data:`CLUSTER` with cluster training; ``session`` is ``spark.master``
    (executor JVMs under the classic session) or ``spark.remote`` (a Spark Connect server over them)."""
    return longtail([
        *demo_settings(), "--set", f"warehouse={warehouse}", "--set", f"{session}={CLUSTER}",
        "--set", "spark.driver_memory=1g", "--set", "train.mode=cluster", "--set", "train.processes=2", "demo",
    ])


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1"})
    env.pop("SPARK_CONNECT_MODE_ENABLED", None)
    env.pop("SPARK_REMOTE", None)
    env.update(extra or {})
    return env


def run(command: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
        timeout: float = 2400) -> subprocess.CompletedProcess:
    """Run a command; on failure the assertion shows the end of its output."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env or environment(), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    done.seconds = time.perf_counter() - started  # type: ignore[attr-defined]
    assert done.returncode == 0, (
        f"{' '.join(map(str, command[:6]))} ... exited {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n"
        f"--- stderr (Java stack frames left out)\n{without_java_frames(done.stderr)[-6000:]}"
    )
    return done


def without_java_frames(text: str) -> str:
    """``text`` without the ``at ...`` and ``... N more`` lines of Java stack traces: a failing
    lane's own message and each exception's first line fit in the assertion's tail."""
    return "\n".join(
        line for line in text.splitlines()
        if not re.match(r"^\s+(at |\.\.\. \d+ more)", line)
    )


def longtail(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``longtail ARGS`` in a new process (this interpreter)."""
    return run([sys.executable, "-m", "longtail.cli", *args], **kwargs)


def read_table(warehouse: str, table: str):
    """A table as a pyarrow Table, read with delta-rs (object stores through the same URI mapping)."""
    from deltalake import DeltaTable

    return DeltaTable(files.delta_uri(f"{warehouse.rstrip('/')}/{table}")).to_pyarrow_table()


def check_demo_tables(warehouse: str, top_k: int = 10, tables: tuple[str, ...] = DEMO_TABLES) -> dict[str, int]:
    """Every table of the demo is there with the contract's columns; K rows per user in
    ``recommendations``. Returns the row count of each table."""
    from deltalake import DeltaTable

    rows = {}
    for table in tables:
        uri = files.delta_uri(f"{warehouse.rstrip('/')}/{table}")
        assert DeltaTable.is_deltatable(uri), f"table {table} is missing from {warehouse}"
        data = DeltaTable(uri).to_pyarrow_table()
        assert set(SCHEMAS[table].names) <= set(data.column_names), (table, data.column_names)
        rows[table] = data.num_rows
        assert data.num_rows > 0, f"table {table} is empty"
    recs = read_table(warehouse, "recommendations").to_pandas()
    per_user = recs.groupby("user_id")["rank"].agg(["count", "max"])
    assert (per_user["count"] == top_k).all() and (per_user["max"] == top_k).all()
    return rows


def check_progress(stderr: str) -> None:
    """The demo's progress: the first line before Spark's output, a line per stage, no DataFrame repr."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[0].startswith("longtail demo: starting Spark"), lines[:3]
    for stage in ("synthetic catalogue", "sequences", "encode", "train", "evaluate", "score"):
        assert any(f"] {stage}: " in line and "running" not in line for line in lines), stage
    assert any("epoch 1/" in line for line in lines), "no per-epoch training line"
    assert not any("[" in line and "rows x" in line for line in lines), "a DataFrame repr in the progress"
    # The session started for the job is stopped before the process exits: no executor relaunches
    # and no ERROR traces from a shutting-down cluster after the job's last line.
    assert lines[-1].startswith("longtail demo: done in"), lines[-3:]
