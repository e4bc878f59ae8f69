"""Shared fixtures: one local SparkSession for the whole test run, a fresh warehouse per test."""
from __future__ import annotations

import os

import pytest

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def spark():
    from longtail.core.config import SparkConfig
    from longtail.core.session import build_spark

    session = build_spark(
        SparkConfig(master="local[2]", app_name="longtail-tests", driver_memory="2g", shuffle_partitions=2)
    )
    yield session
    session.stop()


@pytest.fixture()
def warehouse(spark, tmp_path):
    """An empty warehouse folder with the embedded default engine."""
    from longtail.core.tables import Warehouse

    return Warehouse(spark, str(tmp_path / "warehouse"))


#: A demo small enough for the test suite: every stage runs for real, on tiny data.
DEMO_OVERRIDES = {
    "demo.users": 300,
    "demo.items": 120,
    "demo.train_epochs": 2,
    "train.hidden": 16,
    "train.max_len": 20,
    "train.batch_size": 64,
    "encode.batch_size": 32,
    "encode.max_tokens": 32,
    "encode.pca_dim": 16,
    "neighbors.top_n": 5,
    "evaluate.als_max_iter": 3,
    "evaluate.als_rank": 8,
}


@pytest.fixture(scope="session")
def demo_warehouse(spark, tmp_path_factory):
    """A warehouse on which `longtail demo` ran once (synthetic catalogue, every stage)."""
    import io

    from longtail.core.config import Config
    from longtail.core.tables import Warehouse
    from longtail.pipeline import run_demo

    root = tmp_path_factory.mktemp("demo") / "warehouse"
    cfg = Config().replace(warehouse=str(root), **DEMO_OVERRIDES)
    wh = Warehouse(spark, str(root))
    progress = io.StringIO()
    result = run_demo(wh, cfg, out=progress)
    return wh, cfg, result, progress.getvalue()
