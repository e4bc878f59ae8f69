"""benchmarks/warm_start.py: the held-out cut, the copy that leaves the given warehouse alone, the summary."""
from __future__ import annotations

import numpy as np
import pytest
from bench_scripts import load_script

bench = load_script("warm_start")


def test_the_cut_holds_out_the_last_share_by_time():
    ts = np.random.default_rng(0).permutation(np.arange(1000, 3000, 2))  # 1000 times, shuffled
    cut = bench.holdout_cutoff(ts, 0.05)
    assert (ts >= cut).sum() == 50 and (ts < cut).sum() == 950


def test_the_copy_skips_model_outputs_and_id_maps_and_leaves_the_source(tmp_path):
    source = tmp_path / "wh"
    for name in ("interactions", "item_embeddings", "_encoders", "_models", "_item_ids", "models", "evaluation"):
        (source / name).mkdir(parents=True)
        (source / name / "part.parquet").write_text(name)
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    bench.copy_warehouse(str(source), str(tmp_path / "copy"))
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["_encoders", "interactions", "item_embeddings"]
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before
    with pytest.raises(SystemExit, match="local warehouse"):
        bench.copy_warehouse("s3a://bucket/wh", str(tmp_path / "other"))


def test_summary_means_over_seeds_and_the_issues_bar():
    def line(seed, warm, scratch, tw, ts):
        return {"seed": seed, "model": "m", "ndcg_ratio": warm / scratch, "time_ratio": tw / ts, "epoch_time_ratio": 0.2,
                "warm": {"full_ndcg10": warm, "train_seconds": tw, "epochs_run": 6},
                "scratch": {"full_ndcg10": scratch, "train_seconds": ts, "epochs_run": 30}}

    out = bench.summary([line(42, 0.050, 0.050, 20, 100), line(43, 0.049, 0.050, 30, 100)])
    assert out["seeds"] == [42, 43] and out["warm_full_ndcg10"] == pytest.approx(0.0495)
    assert out["ndcg_ratio"] == pytest.approx(0.99) and out["within_1pct"]
    assert out["time_ratio"] == pytest.approx(0.25) and out["at_most_30pct_time"]
    assert not bench.summary([line(42, 0.045, 0.050, 40, 100)])["within_1pct"]
