"""benchmarks/user_vectors.py on a tiny interaction file: the histories it reads, and every variant
giving the same vectors."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from bench_scripts import load_script


def _write(path, rows):
    path.write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))


def test_histories_are_by_time_without_the_last_two_items(tmp_path):
    bench = load_script("user_vectors")
    csv = tmp_path / "i.csv"
    # u1 bought a, b, c, d (out of order in the file), u2 only two items: no history left.
    _write(csv, [("u1", "c", 3), ("u1", "a", 1), ("u2", "a", 1), ("u1", "b", 2), ("u1", "d", 4), ("u2", "e", 2)])
    values, offsets, items = bench.read_histories(str(csv))
    assert items == 5 and offsets.tolist() == [0, 2] and values.tolist() == [2, 3]  # a, b by time


@pytest.mark.parametrize("batch_users", [0, 7])
def test_main_gives_the_same_vectors_every_way(tmp_path, monkeypatch, capsys, batch_users):
    from longtail.models import histories

    bench = load_script("user_vectors")
    saved = histories.ENCODE_SHORT
    shorts = set()  # encode_histories reads the module's ENCODE_SHORT per call: the variants reach it
    group = histories.length_groups
    monkeypatch.setattr(histories, "length_groups", lambda *a, short=None: (shorts.add(short), group(*a, short=short))[1])
    rng = np.random.default_rng(0)
    csv = tmp_path / "i.csv"
    _write(csv, [(f"u{u}", f"i{rng.integers(40)}", t) for u in range(30) for t in range(int(rng.integers(4, 12)))])
    monkeypatch.setattr(sys, "argv", ["user_vectors.py", "--interactions", str(csv), "--repeats", "1",
                                      "--models", "llmesr_sasrec", "gru4rec", "--set", "train.hidden=16",
                                      "--set", "encode.pca_dim=16", "--batch-users", str(batch_users)])
    bench.main()
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["users"] == 30 and result["hidden"] == 16 and result["batch_users"] == batch_users
    assert histories.ENCODE_SHORT == saved  # the put-back variants are undone
    assert shorts == {saved, 1 << 30}
    for name in ("llmesr_sasrec", "gru4rec"):
        assert all(result[name][f"{v}_s"] > 0 for v in bench.VARIANTS)
        assert {"without_last_only_ratio", "without_length_classes_ratio", "speedup"} <= set(result[name])
        assert result[name]["max_abs_diff"] < 1e-5 * max(1.0, result[name]["max_abs_value"])
