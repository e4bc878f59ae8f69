"""The SparkSession, built once per job from :class:`~longtail.core.config.SparkConfig`.

Four ways to get one, all returning a session the stages use alike (DataFrame APIs only: no
``sparkContext``, no RDDs, no ``_jvm``, so every one of them also works on Spark Connect):

- ``master: local[N]`` (the embedded default) or ``local-cluster[E,C,M]`` (E executor JVMs with their
  own Python workers, on this machine): a classic session started here;
- ``remote: local[N]``: a Spark Connect server started on this machine, and a Connect session to it;
- ``remote: sc://host:port``: a Connect session to a running server (Databricks Connect, Spark 4);
- ``master: null``: the session spark-submit, a notebook or Databricks already built.

JVMs started here log errors only (``longtail/conf/log4j2.properties``): no start-up WARN lines and no
console progress bars between a job's own progress lines.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyspark.sql import SparkSession

from longtail.core.config import SparkConfig
from longtail.core.errors import EnvironmentProblem


class JavaNotFoundError(EnvironmentProblem):
    """No usable Java runtime for local Spark."""


log = logging.getLogger(__name__)

#: The log4j 2 configuration of the JVMs started here.
LOG4J_CONF = Path(__file__).resolve().parents[1] / "conf" / "log4j2.properties"
_LOCAL = re.compile(r"^local(\[(\d+|\*)(,\d+)?\])?$")
_LOCAL_CLUSTER = re.compile(r"^local-cluster\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]$")


def check_java() -> None:
    """Fail clearly when local Spark cannot start for want of Java (instead of a Py4J trace).

    Raises:
        JavaNotFoundError: no ``java`` on PATH or in ``JAVA_HOME``, or it does not run.
    """
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java or not os.path.exists(java):
        where = f"JAVA_HOME={java_home}" if java_home else "PATH"
        raise JavaNotFoundError(
            f"Java not found ({where}): local Spark needs Java 17 or 21. "
            "Install it (e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME."
        )
    try:
        subprocess.run([java, "-version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise JavaNotFoundError(f"Java at {java} does not run: {exc}") from None


def is_connect(spark) -> bool:
    """Whether ``spark`` is a Spark Connect session (no SparkContext, no RDDs)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def describe(spark) -> str:
    """``local[2]``, ``local-cluster[2,1,2048] (2 slots)``, ``Spark Connect sc://...``: for progress lines."""
    master = _conf(spark, "spark.master") or "?"
    kind = "Spark Connect, " if is_connect(spark) else ""
    return f"{kind}{master}, {default_parallelism(spark)} task slots"


def default_parallelism(spark) -> int:
    """Task slots of the session's cluster, on a classic session and on Spark Connect alike.

    Classic: ``SparkContext.defaultParallelism``. Connect has no SparkContext: the
    ``spark.default.parallelism`` property when set, else what the master URL says
    (``local[N]``, ``local-cluster[E,C,M]``), else ``spark.sql.shuffle.partitions``.
    """
    if not is_connect(spark):
        try:
            return int(spark.sparkContext.defaultParallelism)
        except Exception:  # noqa: BLE001 - a session without a usable context: use the properties
            pass
    explicit = _conf(spark, "spark.default.parallelism")
    if explicit:
        return max(1, int(explicit))
    slots = master_slots(_conf(spark, "spark.master") or "")
    if slots:
        return slots
    return max(1, int(_conf(spark, "spark.sql.shuffle.partitions") or "8"))


def master_slots(master: str) -> int | None:
    """Task slots a ``local[N]``/``local[*]``/``local-cluster[E,C,M]`` master gives; None for others."""
    local = _LOCAL.match(master)
    if local:
        n = local.group(2)
        return (os.cpu_count() or 1) if n in (None, "*") else int(n)
    cluster = _LOCAL_CLUSTER.match(master)
    if cluster:
        return int(cluster.group(1)) * int(cluster.group(2))
    return None


def build_spark(
    cfg: SparkConfig, extra_conf: dict[str, str] | None = None, delta_engine: str = "auto"
) -> SparkSession:
    """Return the job's SparkSession (see the module doc for the four kinds).

    Args:
        cfg: the ``spark`` section of the config.
        extra_conf: properties a caller needs on top.
        delta_engine: ``delta.engine``; ``native`` on a session started here adds delta-spark's jars
            (``configure_spark_with_delta_pip``: the ``delta`` extra, and Maven Central or a local
            Ivy cache to resolve them).

    Raises:
        JavaNotFoundError: a session to start here and no usable Java.
        EnvironmentProblem: ``delta.engine: native`` and delta-spark's jars cannot be resolved.
    """
    return _build(cfg, extra_conf, delta_engine)[0]


def _build(cfg: SparkConfig, extra_conf: dict[str, str] | None, delta_engine: str) -> tuple[SparkSession, bool]:
    """:func:`build_spark`'s session, and whether this call started it (a local session or Connect
    server where no SparkContext ran before) rather than reaching one that was already there."""
    from pyspark import SparkContext

    fresh = SparkContext._active_spark_context is None
    conf = {
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(cfg.arrow_max_records_per_batch),
        "spark.sql.session.timeZone": "UTC",
        "spark.python.worker.reuse": "true",
        **(extra_conf or {}),
        **cfg.conf,
    }
    if cfg.remote:
        if cfg.remote.startswith("sc://"):
            return _connect(cfg.remote, conf), False
        return _local_connect(cfg, conf, delta_engine), fresh
    active = SparkSession.getActiveSession()
    if cfg.master is None or active is not None:
        builder = SparkSession.builder
        if cfg.master is None and active is None:
            builder = builder.appName(cfg.app_name)
        spark = builder.getOrCreate()
        # An existing session (spark-submit, Databricks, a notebook) keeps its static settings;
        # the runtime ones from the config (shuffle partitions, Arrow batch size, UTC) apply.
        for key, value in conf.items():
            _try_set(spark, key, value)
        return spark, False
    return _start_local(cfg.master, cfg, conf, delta_engine), fresh


@contextmanager
def spark_for_job(cfg: SparkConfig, delta_engine: str = "auto") -> Iterator[SparkSession]:
    """The job's session (:func:`build_spark`), stopped at the end when this call started it.

    A session started here (``master: local...``, ``remote: local...``) is stopped when the block
    ends, error or not: the application leaves its master before the JVM's shutdown hooks run, so a
    ``local-cluster`` ends without the worker relaunching executors into its own shutdown (dozens of
    ERROR traces after the job's last line, which buried a failing job's own message). A session
    that was already there (spark-submit, Databricks, a notebook, a test's) and a remote server are
    left running: they belong to someone else.
    """
    spark, started_here = _build(cfg, None, delta_engine)
    try:
        yield spark
    finally:
        if started_here:
            _stop(spark)


def _stop(spark: SparkSession) -> None:
    """Stop ``spark`` and, behind a local Connect session, the classic session serving it."""
    from pyspark import SparkContext

    try:
        spark.stop()
    finally:
        server = SparkContext._active_spark_context
        if server is not None:
            server.stop()
        os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)


def _local_static_conf(master: str, cfg: SparkConfig) -> dict[str, str]:
    """Static properties of a session started on this machine."""
    java_opts = f"-Dlog4j2.configurationFile={LOG4J_CONF.as_uri()}" if LOG4J_CONF.is_file() else ""
    static = {
        "spark.driver.memory": cfg.driver_memory,
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": "false",
        "spark.sql.adaptive.enabled": "true",
        # Python workers (and local-cluster executors' workers) run this interpreter.
        "spark.pyspark.python": os.environ.get("PYSPARK_PYTHON", sys.executable),
    }
    if java_opts:
        static["spark.driver.extraJavaOptions"] = java_opts
        static["spark.executor.extraJavaOptions"] = java_opts
    if master.startswith("local-cluster"):
        # Executors are separate JVMs: give them the driver's environment for object stores.
        for name in _FORWARDED_ENV:
            if name in os.environ:
                static[f"spark.executorEnv.{name}"] = os.environ[name]
    return static


#: Variables local-cluster executors get from the driver (object-store endpoints and credentials,
#: offline model hubs, thread caps).
_FORWARDED_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ALLOW_HTTP", "AZURE_STORAGE_ACCOUNT_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "OMP_NUM_THREADS",
)


def _start_local(master: str, cfg: SparkConfig, conf: dict[str, str], delta_engine: str) -> SparkSession:
    check_java()
    # PySpark starts Python workers with $PYSPARK_PYTHON (default: whatever `python3` is on PATH);
    # they must run this interpreter, where longtail and its dependencies are installed (a venv).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(master).appName(cfg.app_name)
    for key, value in {**_local_static_conf(master, cfg), **conf}.items():
        builder = builder.config(key, value)
    if delta_engine == "native":
        builder = _with_delta_jars(builder)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:
        # Spark resolves --packages before its JVM starts: a failure there ends the Java gateway.
        if delta_engine == "native" and ("delta" in str(exc).lower() or "JAVA_GATEWAY_EXITED" in str(exc)):
            raise _delta_jars_problem(exc) from None
        raise
    spark.sparkContext.setLogLevel("ERROR")
    _wait_for_executors(spark, master)
    return spark


def _with_delta_jars(builder):
    """``builder`` with delta-spark's jars and SQL extension (``delta.engine: native``)."""
    try:
        from delta import configure_spark_with_delta_pip
    except ImportError:
        raise EnvironmentProblem(
            "delta.engine is native but delta-spark is not installed: pip install 'longtail[delta]' "
            "(or use delta.engine: delta-rs)"
        ) from None
    builder = builder.config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension").config(
        "spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog"
    )
    return configure_spark_with_delta_pip(builder)


def _delta_jars_problem(exc: Exception) -> EnvironmentProblem:
    first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return EnvironmentProblem(
        "delta.engine is native but delta-spark's jars could not be resolved (Spark fetches "
        "io.delta:delta-spark from Maven Central into ~/.ivy2 on first use; this machine could not): "
        f"{first[:300]}. Run once with network access, pass the jars with --jars, or use delta.engine: delta-rs"
    )


def _wait_for_executors(spark, master: str, timeout: float = 120.0) -> None:
    """local-cluster: wait until every executor has registered, so task slots are all there."""
    import time

    match = _LOCAL_CLUSTER.match(master)
    if not match:
        return
    wanted = int(match.group(1))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # statusTracker lists the driver too; executors are the rest.
        if len(spark.sparkContext.statusTracker().getExecutorInfos()) - 1 >= wanted:
            return
        time.sleep(0.5)
    raise EnvironmentProblem(f"spark.master={master}: only some of the {wanted} executors started in {timeout:.0f}s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _local_connect(cfg: SparkConfig, conf: dict[str, str], delta_engine: str) -> SparkSession:
    """A Spark Connect server on this machine (a classic session with the Connect plugin, on a
    free port) and a Connect session to it."""
    master = cfg.remote or "local[2]"
    port = _free_port()
    token = os.environ.setdefault("SPARK_CONNECT_AUTHENTICATE_TOKEN", uuid.uuid4().hex)
    server_conf = {
        "spark.plugins": "org.apache.spark.sql.connect.SparkConnectPlugin",
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
        "spark.connect.authenticate.token": token,
    }
    server = _start_local(master, cfg, {**conf, **server_conf}, delta_engine)
    del server  # kept alive by pyspark as the process's classic session; jobs use the Connect one
    # pyspark's own switch: SparkSession.active() (TorchDistributor, pandas UDF helpers) returns the
    # Connect session from now on.
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    return _connect(f"sc://localhost:{port}", conf)


def _connect(url: str, conf: dict[str, str]) -> SparkSession:
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    try:
        spark = ConnectSession.builder.remote(url).getOrCreate()
    except ImportError as exc:  # grpcio and friends: the pyspark[connect] dependencies
        raise EnvironmentProblem(
            f"spark.remote={url}: Spark Connect needs pyspark's connect dependencies "
            f"(pip install 'longtail[connect]'): {exc}"
        ) from None
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    for key, value in conf.items():
        _try_set(spark, key, value)
    return spark


def _conf(spark, key: str) -> str | None:
    try:
        return spark.conf.get(key, None)
    except Exception:  # noqa: BLE001 - an unknown key on some servers
        return None


def _try_set(spark: SparkSession, key: str, value: str) -> None:
    # Static properties of an existing session cannot change; runtime ones can.
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Connect warns instead of raising for static keys
            spark.conf.set(key, value)
    except Exception as exc:  # noqa: BLE001 - a static conf on a running cluster is not our error
        log.debug("spark conf %s cannot change on a running session: %s", key, exc)


#: (session, scheme) -> whether Spark's own file sources reach that scheme.
_REACH: dict[tuple[int, str], bool] = {}
_NO_FILESYSTEM = ("no filesystem for scheme", "unsupportedfilesystem", "classnotfound", "s3afilesystem")


def can_reach(spark, uri: str) -> bool:
    """Whether Spark's own Parquet reader and writer reach ``uri`` (a Hadoop filesystem for its scheme).

    Local paths always; ``s3a://``, ``abfss://``, ``gs://`` only where the cluster has the
    connector (Databricks, EMR, ``--packages org.apache.hadoop:hadoop-aws``); pip's pyspark has none.
    Where Spark cannot, longtail's own Python data sources (:mod:`longtail.core.delta_rs`,
    :mod:`longtail.core.scratch`) read and write through pyarrow instead. Probed once per session and scheme.
    """
    from longtail.core import files

    kind = files.scheme(uri)
    if kind in ("", "file"):
        return True
    key = (id(spark), kind)
    if key not in _REACH:
        probe = f"{uri.rstrip('/')}/_longtail_probe_{uuid.uuid4().hex[:8]}"
        try:
            spark.read.format("text").load(probe).schema  # analysis lists the path (Connect too)
            _REACH[key] = True
        except Exception as exc:  # noqa: BLE001 - only a missing filesystem means "cannot reach"
            text = str(exc).lower()
            _REACH[key] = not any(marker in text for marker in _NO_FILESYSTEM)
        log.debug("spark reaches %s:// itself: %s", kind, _REACH[key])
    return _REACH[key]
