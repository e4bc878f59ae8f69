"""Plain files next to the tables (models, reports, PCA maps, scratch blocks), local or object store.

Every path may be a local path, a ``file:`` URI or an object-store URI (``s3a://``, ``abfss://``,
...); pyarrow's filesystems do the I/O so that driver and executors use the same code.
"""
from __future__ import annotations

import os
import uuid

from longtail.core import faults


def filesystem(path: str):
    """``(pyarrow FileSystem, path inside it)`` for a local path or a URI."""
    from pyarrow import fs

    if "://" in path or path.startswith("file:"):
        return fs.FileSystem.from_uri(path)
    return fs.LocalFileSystem(), os.path.abspath(path)


def absolute(path: str) -> str:
    """A local path made absolute (processes may run elsewhere); URIs unchanged."""
    return path if "://" in path else os.path.abspath(path)


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
