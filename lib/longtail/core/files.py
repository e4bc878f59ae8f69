"""Plain files next to the tables (models, reports, PCA maps, scratch blocks), local or object store.

One URI mapping for everything the package stores (:func:`location`): Delta tables through delta-rs
(:func:`delta_uri`, :func:`storage_options`) and side files through pyarrow (:func:`filesystem`)
resolve a warehouse path the same way, on the driver, on executors and in training processes.

==========================================  ==============================  ===========================
warehouse path                              pyarrow filesystem, path        delta-rs URI
==========================================  ==============================  ===========================
``/data/wh``, ``wh``, ``file:/data/wh``     local, absolute path            the same absolute path
``/Volumes/cat/schema/vol/wh``              local (the Volume's FUSE mount)  the same path
``dbfs:/wh``                                local, ``/dbfs/wh`` (FUSE)      ``/dbfs/wh``
``s3a://b/wh``, ``s3n://b/wh``, ``s3://b/wh``  S3, ``b/wh``                  ``s3://b/wh``
``gs://b/wh``, ``gcs://b/wh``               GCS, ``b/wh``                   ``gs://b/wh``
``abfss://c@acct.dfs.core.windows.net/wh``  Azure (account ``acct``), ``c/wh``  the same URI
==========================================  ==============================  ===========================

Credentials and endpoints come from each cloud SDK's standard environment, read the same way by
pyarrow and delta-rs in every process: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (or an
instance profile), ``AWS_REGION``, ``AWS_ENDPOINT_URL`` (an S3-compatible server: MinIO, a test
server; ``http://`` endpoints need ``AWS_ALLOW_HTTP=true`` for delta-rs); ``AZURE_STORAGE_ACCOUNT_KEY``
or a managed identity; ``GOOGLE_APPLICATION_CREDENTIALS``. On a cluster, give executors the same
variables (``spark.executorEnv.<NAME>``).
"""
from __future__ import annotations

import io
import os
import re
import urllib.parse
import uuid
from dataclasses import dataclass

from longtail.core import faults

#: Schemes of Amazon S3 and S3-compatible stores (Hadoop's ``s3a``, EMR's ``s3``, the old ``s3n``).
S3_SCHEMES = ("s3", "s3a", "s3n")
GCS_SCHEMES = ("gs", "gcs")
AZURE_SCHEMES = ("abfs", "abfss")
_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")


@dataclass(frozen=True)
class Location:
    """Where a warehouse path lives.

    Attributes:
        kind: ``local``, ``s3``, ``gcs``, ``azure`` or ``other`` (a URI pyarrow resolves itself).
        path: the path inside the filesystem (``bucket/key`` for object stores, absolute for local).
        delta: the URI delta-rs opens (``s3://``, ``gs://``, ``abfss://`` or a local path).
    """

    kind: str
    path: str
    delta: str
    netloc: str = ""

    @property
    def local(self) -> bool:
        return self.kind == "local"


def scheme(path: str) -> str:
    """The URI scheme of ``path`` (lower case), '' for a plain local path (Windows drives included)."""
    match = _URI.match(path)
    return match.group(1).lower() if match and len(match.group(1)) > 1 else ""


def location(path: str) -> Location:
    """Resolve a local path or a URI (see the module doc for the table)."""
    kind = scheme(path)
    if kind in ("", "file"):
        local = urllib.parse.unquote(urllib.parse.urlparse(path).path) if kind else path
        local = os.path.abspath(local or "/")
        return Location("local", local, local)
    if kind == "dbfs":  # Databricks' file system, mounted at /dbfs on the driver and the workers
        local = "/dbfs/" + urllib.parse.urlparse(path).path.lstrip("/")
        return Location("local", local.rstrip("/") or "/dbfs", local.rstrip("/") or "/dbfs")
    parsed = urllib.parse.urlparse(path)
    key = parsed.path.lstrip("/")
    if kind in S3_SCHEMES:
        inside = f"{parsed.netloc}/{key}".rstrip("/")
        return Location("s3", inside, f"s3://{inside}", parsed.netloc)
    if kind in GCS_SCHEMES:
        inside = f"{parsed.netloc}/{key}".rstrip("/")
        return Location("gcs", inside, f"gs://{inside}", parsed.netloc)
    if kind in AZURE_SCHEMES:
        container, _, account = parsed.netloc.partition("@")
        inside = f"{container}/{key}".rstrip("/")
        return Location("azure", inside, path, account.split(".", 1)[0])
    return Location("other", path, path)


def is_local(path: str) -> bool:
    """Whether ``path`` is on a local (or FUSE-mounted) disk."""
    return location(path).local


def delta_uri(path: str) -> str:
    """The URI delta-rs opens for ``path`` (``s3a://`` becomes ``s3://``, ``dbfs:/`` its FUSE mount)."""
    return location(path).delta


def storage_options(path: str) -> dict[str, str] | None:
    """delta-rs ``storage_options`` for ``path``: None (delta-rs reads the SDK environment itself)."""
    return None


#: pyarrow filesystems of this process, by (kind, account/endpoint): one client per store.
_FILESYSTEMS: dict[tuple[str, str], object] = {}


def filesystem(path: str):
    """``(pyarrow FileSystem, path inside it)`` for a local path or a URI (see :func:`location`)."""
    from pyarrow import fs

    where = location(path)
    if where.kind == "local":
        return fs.LocalFileSystem(), where.path
    if where.kind == "other":
        return fs.FileSystem.from_uri(path)
    key = (where.kind, where.netloc if where.kind == "azure" else _s3_endpoint() if where.kind == "s3" else "")
    store = _FILESYSTEMS.get(key)
    if store is None:
        store = _FILESYSTEMS[key] = _open_store(where)
    return store, where.path


def _s3_endpoint() -> str:
    # The AWS SDKs' variables for an S3-compatible endpoint (delta-rs reads them itself; pyarrow does not).
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


def _open_store(where: Location):
    from pyarrow import fs

    if where.kind == "s3":
        options: dict[str, object] = {}
        endpoint = _s3_endpoint()
        if endpoint:
            parsed = urllib.parse.urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            options["region"] = region
        return fs.S3FileSystem(**options)
    if where.kind == "gcs":
        return fs.GcsFileSystem()
    return fs.AzureFileSystem(account_name=where.netloc)


def absolute(path: str) -> str:
    """A local path made absolute (processes may run elsewhere); URIs unchanged."""
    return path if scheme(path) else os.path.abspath(path)


def read_bytes(path: str, missing_ok: bool = False) -> bytes | None:
    """The file's bytes; ``None`` if it does not exist and ``missing_ok``.

    Raises:
        FileNotFoundError: no file at ``path`` (unless ``missing_ok``).
    """
    from pyarrow import fs as pafs

    fs, p = filesystem(path)
    if missing_ok and fs.get_file_info(p).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(p) as handle:
        return handle.readall()


def write_bytes(path: str, data: bytes, atomic: bool = True) -> None:
    """Write ``data`` to ``path``, creating folders.

    With ``atomic`` the bytes go to a temporary file that is then renamed, so a reader never
    sees half a file (rename is atomic on local disks; object stores copy and delete).
    """
    fs, p = filesystem(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    target = f"{p}.tmp-{uuid.uuid4().hex[:12]}" if atomic else p
    try:
        with fs.open_output_stream(target) as out:
            out.write(data)
        faults.point(f"file:{p.rsplit('/', 1)[-1]}")
        if atomic:
            fs.move(target, p)
    except BaseException:
        if atomic:
            try:
                fs.delete_file(target)
            except Exception:  # noqa: BLE001 - the original error matters, not the cleanup's
                pass
        raise


def npy_bytes(array) -> bytes:
    """``array`` as the bytes of a ``.npy`` file (no pickles), for :func:`write_bytes`."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def read_npy(path: str):
    """A ``.npy`` file (local path or URI) as a numpy array; pickled objects are refused."""
    import numpy as np

    return np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)


def remove_tree(path: str, missing_ok: bool = True) -> None:
    """Delete a folder and everything in it (no error if it is absent and ``missing_ok``)."""
    from pyarrow import fs as pafs

    fs, p = filesystem(path)
    if missing_ok and fs.get_file_info(p).type == pafs.FileType.NotFound:
        return
    fs.delete_dir(p)


def remove_file(path: str) -> None:
    """Delete one file; a missing one is fine."""
    fs, p = filesystem(path)
    try:
        fs.delete_file(p)
    except FileNotFoundError:
        pass


def parquet_files(directory: str) -> list[str]:
    """Paths (as the folder's filesystem spells them) of the Parquet files under ``directory``, sorted.

    Hidden and bookkeeping files (``_SUCCESS``, ``.crc``) are left out; a missing folder has none.
    """
    from pyarrow import fs as pafs

    fs, p = filesystem(directory)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True, recursive=True))
    return sorted(
        i.path for i in infos
        if i.type == pafs.FileType.File and i.base_name.endswith(".parquet") and not i.base_name.startswith(("_", "."))
    )


def parquet_rows(directory: str) -> int:
    """Rows in all Parquet files under ``directory`` (from their footers)."""
    import pyarrow.parquet as pq

    fs, _ = filesystem(directory)
    rows = 0
    for path in parquet_files(directory):
        with fs.open_input_file(path) as handle:
            rows += pq.ParquetFile(handle).metadata.num_rows
    return rows


def read_parquet_dir(directory: str, columns: list[str]):
    """Yield one Arrow table of ``columns`` per Parquet file under ``directory``."""
    import pyarrow.parquet as pq

    fs, _ = filesystem(directory)
    for path in parquet_files(directory):
        with fs.open_input_file(path) as handle:
            yield pq.ParquetFile(handle).read(columns=columns)
