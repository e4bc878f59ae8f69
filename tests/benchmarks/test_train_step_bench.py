"""benchmarks/train_step.py on a tiny catalogue: the reverted costs compute the same loss, every variant
runs and the attributes come back."""
from __future__ import annotations

import dataclasses
import json
import sys

import torch
from bench_scripts import load_script
from longtail.models import layers


def test_the_costs_put_back_compute_the_same_loss_and_are_restored():
    bench = load_script("train_step")
    cfg, model = bench._model(300, 8, seed=0)
    model.eval()  # no dropout: the two paths must agree to rounding
    model.loss_group_rows = cfg.batch_size
    batches = bench._batches(dataclasses.replace(cfg, batch_size=64, length_buckets=2), 300, 8, seed=0)
    batch = max(batches, key=lambda b: b["seqs"].shape[1])  # the one with the longest history
    now = model.loss(batch)
    saved = (layers.dropout, layers.SHORT_HISTORY, layers.sampled_softmax)
    with bench.reverted("fast_dropout", "length_groups", "folded_loss"):
        assert layers.SHORT_HISTORY > 10**6 and layers.sampled_softmax is not saved[2]
        before = model.loss(batch)
    assert (layers.dropout, layers.SHORT_HISTORY, layers.sampled_softmax) == saved
    assert torch.allclose(now, before, atol=1e-5)
    assert int((batch["seqs"] != 0).sum(dim=1).max()) > layers.SHORT_HISTORY  # the length groups were exercised


def test_main_prints_every_variant(monkeypatch, capsys):
    bench = load_script("train_step")
    monkeypatch.setattr(sys, "argv", ["train_step.py", "--items", "300", "--steps", "2", "--hidden", "8"])
    bench.main()
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in bench.VARIANTS:
        assert result[f"{name}_ms_per_step"] > 0
    assert result["speedup"] > 0 and "without_length_groups_ratio" in result
