"""benchmarks/encode.py --profile: op classes, the speed-up bound, and the profiler read on a real model."""
from __future__ import annotations

import functools

import pytest
from bench_scripts import load_script

bench = load_script("encode")


@pytest.mark.parametrize("name, cls", [
    ("aten::addmm", "linear"), ("aten::linear", "linear"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"), ("aten::bmm", "attention"),
    ("aten::_softmax", "attention"), ("aten::gelu", "other"), ("aten::native_layer_norm", "other"),
])
def test_op_class(name, cls):
    assert bench.op_class(name) == cls


def test_seconds_by_class_sums_microseconds_per_class():
    ops = [("aten::addmm", 2_000_000), ("aten::mm", 500_000), ("aten::bmm", 250_000), ("aten::gelu", 1_000_000)]
    assert bench.seconds_by_class(ops) == {"linear": 2.5, "attention": 0.25, "other": 1.0}


def test_ratio_bound_is_amdahl_with_attention_as_measured():
    fp32 = {"linear": 6.0, "attention": 2.0, "other": 2.0}
    fast = {"linear": 2.0, "attention": 2.0, "other": 1.0}
    # Linear 3x; "other" lifted to 3x too; attention stays 2 s: 10 / (8/3 + 2).
    assert bench.ratio_bound(fp32, fast) == pytest.approx(10 / (8 / 3 + 2))
    # A faster GEMM raises the bound, but attention caps it below 10 / 2.
    assert bench.ratio_bound(fp32, fast, gemm=100.0) == pytest.approx(10 / (0.08 + 2))
    assert bench.ratio_bound(fp32, fast, gemm=1e9) < 5.0


@pytest.mark.slow
def test_profile_classes_reads_the_profiler_on_minilm():
    from longtail.encoders import text as encoders

    enc = encoders.get_encoder(encoders.resolve_model_path("minilm"), "cpu", "float32")
    # Enough tokens (16 texts of ~60) that the model's arithmetic, not per-op overhead, dominates.
    texts = [f"red matte lipstick number {i}, long lasting, with shea butter and vitamin e " * 3 for i in range(16)]
    ids = enc.tokenize(texts, 128)
    got = bench.profile_classes(enc, ids, batch=16, rounds=2)
    assert set(got) == {"linear", "attention", "other"}
    # MiniLM's time is mostly its Linear layers; attention and the rest are measured, not zero.
    assert got["linear"] > max(got["attention"], got["other"]) and got["attention"] > 0 and got["other"] > 0


@pytest.mark.spark
@pytest.mark.slow
def test_profile_study_prints_each_class_and_the_bound(demo_warehouse, capsys, monkeypatch):
    wh, cfg, _, _ = demo_warehouse
    # One small Linear instead of 20 of MiniLM's widest: 21 s of the suite on a CPU whose bfloat16 is emulated.
    monkeypatch.setattr(bench, "large_gemm_ratio", functools.partial(bench.large_gemm_ratio, rows=256, repeats=2))
    bench.profile_study(wh.spark, wh, cfg, n_items=16, n_users=8, threads=1)
    out = capsys.readouterr().out
    for kind in ("items", "users"):
        rows = {line.split()[1]: line.split() for line in out.splitlines() if line.startswith(kind)}
        assert {"linear", "attention", "other", "total", "bound"} <= set(rows)
        # float32 and bfloat16 seconds were both measured for the whole model.
        assert float(rows["total"][2]) > 0 and float(rows["total"][3]) > 0
        assert "at one large Linear's" in " ".join(rows["bound"])
