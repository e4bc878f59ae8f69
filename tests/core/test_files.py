import os

import pytest
from longtail.core.files import (
    absolute,
    delta_uri,
    filesystem,
    location,
    read_bytes,
    remove_tree,
    write_bytes,
)


def test_write_then_read_creates_folders_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "a" / "b" / "report.json"
    write_bytes(str(target), b"first")
    write_bytes(str(target), b"second")  # replaces
    assert read_bytes(str(target)) == b"second"
    assert os.listdir(target.parent) == ["report.json"]


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "m.bin"
    write_bytes(str(target), b"old")
    with pytest.raises(TypeError):
        write_bytes(str(target), "not bytes")  # type: ignore[arg-type]
    assert read_bytes(str(target)) == b"old"
    assert os.listdir(tmp_path) == ["m.bin"]


def test_missing_files_and_folders(tmp_path):
    assert read_bytes(str(tmp_path / "nope"), missing_ok=True) is None
    with pytest.raises(FileNotFoundError):
        read_bytes(str(tmp_path / "nope"))
    remove_tree(str(tmp_path / "nope"))  # absent: nothing to do
    with pytest.raises(FileNotFoundError):
        remove_tree(str(tmp_path / "nope"), missing_ok=False)
    write_bytes(str(tmp_path / "d" / "x"), b"1", atomic=False)
    remove_tree(str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()


def test_paths_and_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute("wh") == str(tmp_path / "wh")
    assert absolute("s3a://bucket/wh") == "s3a://bucket/wh"
    fs, path = filesystem("wh/t")
    assert path == str(tmp_path / "wh" / "t") and fs.type_name == "local"
    fs, path = filesystem(f"file://{tmp_path}/wh")
    assert path == f"{tmp_path}/wh" and fs.type_name == "local"


@pytest.mark.parametrize(
    "uri, kind, inside, delta",
    [
        ("s3a://bucket/wh/t", "s3", "bucket/wh/t", "s3://bucket/wh/t"),
        ("s3://bucket/wh/", "s3", "bucket/wh", "s3://bucket/wh"),
        ("s3n://bucket/wh", "s3", "bucket/wh", "s3://bucket/wh"),
        ("gs://bucket/wh", "gcs", "bucket/wh", "gs://bucket/wh"),
        ("abfss://box@acct.dfs.core.windows.net/wh", "azure", "box/wh", "abfss://box@acct.dfs.core.windows.net/wh"),
        ("dbfs:/mnt/wh", "local", "/dbfs/mnt/wh", "/dbfs/mnt/wh"),
        ("/Volumes/main/longtail/warehouse", "local", "/Volumes/main/longtail/warehouse",
         "/Volumes/main/longtail/warehouse"),
        ("file:///tmp/wh", "local", "/tmp/wh", "/tmp/wh"),
    ],
)
def test_one_uri_mapping_for_tables_and_side_files(uri, kind, inside, delta):
    where = location(uri)
    assert (where.kind, where.path, where.delta) == (kind, inside, delta)
    assert delta_uri(uri) == delta
    assert absolute(uri) == uri or kind == "local"


def test_side_files_on_an_s3_server(s3_bucket):
    # s3a:// is Hadoop's name for S3; pyarrow alone refuses it ("Unrecognized filesystem type").
    root = f"{s3_bucket}/warehouse"
    write_bytes(f"{root}/_models/m/v1/weights.pt", b"weights")
    write_bytes(f"{root}/_reports/r.json", b"{}")
    assert read_bytes(f"{root}/_models/m/v1/weights.pt") == b"weights"
    assert read_bytes(f"{root}/_models/m/v1/missing", missing_ok=True) is None
    fs, path = filesystem(f"{root}/_reports")
    assert fs.type_name == "s3" and path.endswith("/warehouse/_reports")
    remove_tree(f"{root}/_models")
    assert read_bytes(f"{root}/_models/m/v1/weights.pt", missing_ok=True) is None
    assert read_bytes(f"{root}/_reports/r.json") == b"{}"


def test_delta_tables_and_side_files_meet_in_the_same_bucket(s3_bucket):
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    table = f"{s3_bucket}/warehouse/t"
    write_deltalake(delta_uri(table), pa.table({"a": [1, 2, 3]}))
    from pyarrow.fs import FileSelector

    fs, path = filesystem(table)
    assert any(i.base_name.endswith(".parquet") for i in fs.get_file_info(FileSelector(path)))
    assert DeltaTable(delta_uri(table)).version() == 0
