"""benchmarks/user_vectors.py on a tiny interaction file: the histories it reads, and the two variants
giving the same vectors."""
from __future__ import annotations

import json
import sys

import numpy as np
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


def test_main_gives_the_same_vectors_both_ways(tmp_path, monkeypatch, capsys):
    bench = load_script("user_vectors")
    rng = np.random.default_rng(0)
    csv = tmp_path / "i.csv"
    _write(csv, [(f"u{u}", f"i{rng.integers(40)}", t) for u in range(30) for t in range(int(rng.integers(4, 12)))])
    monkeypatch.setattr(sys, "argv", ["user_vectors.py", "--interactions", str(csv), "--repeats", "1",
                                      "--models", "llmesr_sasrec", "gru4rec", "--set", "train.hidden=16",
                                      "--set", "encode.pca_dim=16"])
    bench.main()
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["users"] == 30 and result["hidden"] == 16
    for name in ("llmesr_sasrec", "gru4rec"):
        assert result[name]["before_s"] > 0 and result[name]["now_s"] > 0
        assert result[name]["max_abs_diff"] < 1e-5 * max(1.0, result[name]["max_abs_value"])
