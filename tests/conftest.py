"""Shared fixtures: one local SparkSession for the whole test run, a fresh warehouse per test."""
from __future__ import annotations

import os

import pytest
from suite_settings import DEMO_OVERRIDES, s3_environment

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def _test_jvm():
    """The suite's one JVM: a local[2] session that also serves Spark Connect on a free local port
    (so processes the tests start, the fault suite's kill -9 victims among them, run on Spark
    Connect without a JVM of their own). Yields (session, Connect URL, token)."""
    import socket
    import uuid

    from longtail.core.config import SparkConfig
    from longtail.core.session import build_spark

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = uuid.uuid4().hex
    connect = {
        "spark.plugins": "org.apache.spark.sql.connect.SparkConnectPlugin",
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
        "spark.connect.authenticate.token": token,
    }
    session = build_spark(
        SparkConfig(master="local[2]", app_name="longtail-tests", driver_memory="2g", shuffle_partitions=2),
        extra_conf=connect,
    )
    yield session, f"sc://localhost:{port}", token
    session.stop()


@pytest.fixture(scope="session")
def spark(_test_jvm):
    return _test_jvm[0]


@pytest.fixture(scope="session")
def connect_server(_test_jvm):
    """(URL, environment) for a process that joins the suite's JVM over Spark Connect:
    ``--set spark.remote=<URL>`` with the environment's token."""
    _, url, token = _test_jvm
    return url, {"SPARK_CONNECT_AUTHENTICATE_TOKEN": token}


@pytest.fixture()
def warehouse(spark, tmp_path):
    """An empty warehouse folder with the embedded default engine."""
    from longtail.core.tables import Warehouse

    return Warehouse(spark, str(tmp_path / "warehouse"))


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


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API server (moto's server mode, ``tests/s3_server.py``) in its own process on a free
    local port; yields its endpoint URL."""
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    # A failure, not a skip: moto[server] is in the test extra, so its absence is a broken
    # install, and a skip would hide every object-store lane from CI.
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"the S3 lanes need moto[server] from the test extra (pip install -e '.[test]'): {exc}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("s3_server.py")), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"the test S3 server did not start (exit {server.poll()})") from None
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture()
def s3_bucket(s3_server, monkeypatch):
    """A new empty bucket on the test S3 server, its environment set; yields ``s3a://<bucket>``."""
    import uuid

    import boto3

    for name, value in s3_environment(s3_server).items():
        monkeypatch.setenv(name, value)
    bucket = f"longtail-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    yield f"s3a://{bucket}"


@pytest.fixture()
def s3_spark(spark, s3_bucket, s3_server):
    """The test session, its Python workers given the S3 server's environment (they were started
    before the server; a cluster gets these variables from ``spark.executorEnv.*``)."""
    env = spark.sparkContext.environment
    saved = dict(env)
    env.update(s3_environment(s3_server))
    yield spark
    env.clear()
    env.update(saved)
