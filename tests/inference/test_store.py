"""Model folders: saved whole (a rename on local disks, file by file on object stores) and loaded back."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from longtail.core import files
from longtail.core.config import TrainConfig
from longtail.inference.store import load_model_dir, save_model_dir
from longtail.models import build_model

HP = dataclasses.asdict(TrainConfig(hidden=8, max_len=6, layers=1, heads=1, seed=7))
N_ITEMS = 20


@pytest.mark.parametrize("where", ["local", "s3"])
def test_saved_model_folder_loads_back_and_leaves_no_temporary_folder(where, request, tmp_path):
    root = f"{request.getfixturevalue('s3_bucket')}/wh" if where == "s3" else str(tmp_path / "wh")
    module = build_model("sasrec", N_ITEMS, HP)
    config = {"model": "sasrec", "version": "v1", "n_items": N_ITEMS, "llm_dim": 0, "max_len": 6, "hyperparameters": HP}
    item_ids = json.dumps([""] + [f"i{k}" for k in range(1, N_ITEMS + 1)]).encode()
    save_model_dir(f"{root}/_models/sasrec/v1", module, config, item_ids, {"best_epoch": 1})

    loaded = load_model_dir(f"{root}/_models/sasrec/v1")
    assert loaded.name == "sasrec" and loaded.version == "v1" and loaded.item_ids[1] == "i1"
    for name, value in module.state_dict().items():
        torch.testing.assert_close(loaded.module.state_dict()[name], value)
    assert json.loads(files.read_bytes(f"{root}/_models/sasrec/v1/metrics.json")) == {"best_epoch": 1}
    fs, base = files.filesystem(f"{root}/_models/sasrec")
    from pyarrow.fs import FileSelector

    assert [i.base_name for i in fs.get_file_info(FileSelector(base))] == ["v1"]  # no *.tmp-* folder left
