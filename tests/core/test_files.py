import os

import pytest
from longtail.core.files import (
    absolute,
    filesystem,
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
