"""Shared fixtures: one local SparkSession for the whole test run, a fresh warehouse per test."""
from __future__ import annotations

import os

import pytest

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def spark():
    from longtail.config import SparkConfig
    from longtail.session import build_spark

    session = build_spark(
        SparkConfig(master="local[2]", app_name="longtail-tests", driver_memory="2g", shuffle_partitions=2)
    )
    yield session
    session.stop()


@pytest.fixture()
def warehouse(spark, tmp_path):
    """An empty warehouse folder with the embedded default engine."""
    from longtail.tables import Warehouse

    return Warehouse(spark, str(tmp_path / "warehouse"))
