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


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API server (moto's server mode) on a free local port; yields its endpoint URL."""
    import socket

    moto_server = pytest.importorskip("moto.server", reason="moto[server] (in the test extra) is not installed")
    from werkzeug.serving import make_server

    class Server(moto_server.ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = _complete_upload_result(moto_server.DomainDispatcherApplication(moto_server.create_backend_app))
            self._server = make_server(self._ip_address, self._port, app, True)
            self._server_ready_event.set()
            self._server.serve_forever()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Server(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def _complete_upload_result(app):
    """moto answers CompleteMultipartUpload with ``<CompleteMultipartUploadResponse>``; S3 says
    ``<CompleteMultipartUploadResult>``, and pyarrow takes anything else in a 200 for an error."""

    def fixed(environ, start_response):
        answer = {}

        def capture(status, headers, exc_info=None):
            answer["status"], answer["headers"] = status, headers
            return lambda data: None

        body = b"".join(app(environ, capture))
        headers = answer["headers"]
        if b"<CompleteMultipartUploadResponse" in body:
            body = body.replace(b"CompleteMultipartUploadResponse", b"CompleteMultipartUploadResult")
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        start_response(answer["status"], headers)
        return [body]

    return fixed


#: What every process (this one, Spark's Python workers, training processes) needs to reach the server.
def s3_environment(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "longtail-test", "AWS_SECRET_ACCESS_KEY": "longtail-test",
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true",
    }


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
