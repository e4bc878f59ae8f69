"""benchmarks/catalogue_costs.py on a tiny catalogue: the two validation passes agree, both steps train,
the user vectors agree."""
from __future__ import annotations

import json
import sys

import numpy as np
import torch
from bench_scripts import load_script


def test_the_pass_before_and_now_give_the_same_ranks():
    bench = load_script("catalogue_costs")
    g = torch.Generator().manual_seed(1)
    items, users = torch.randn(3001, 8, generator=g), torch.randn(300, 8, generator=g)
    items[7] = items[9]  # a tie: counts half in both
    targets = torch.randint(1, 3001, (300,), generator=g)
    targets[:5] = 7
    seen = torch.randint(1, 3001, (300, 4), generator=g)
    before, now = bench._before(users, items, targets, seen, item_chunk=512), bench._now(users, items, targets, seen)
    assert np.array_equal(before, now)
    assert before.min() >= 0 and before.max() < 3001 and len(np.unique(before)) > 50


def test_main_prints_every_step_and_the_share_at_scale(monkeypatch, capsys):
    from longtail.models import optim

    bench = load_script("catalogue_costs")
    # auto's threshold between the two sizes: "now" runs dense at 500 items and row-wise at 2,000.
    monkeypatch.setattr(optim, "SPARSE_ITEMS_FROM", 1000)
    monkeypatch.setattr(sys, "argv", ["catalogue_costs.py", "--items", "2000", "--small-items", "500", "--users", "64",
                                      "--steps", "2", "--dim", "8", "--more-items", "3000"])
    bench.main()
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["same_ranks"] is True
    for label in ("before", "dense", "now"):
        assert result[label]["step_ms"] > 0 and 0 < result[label]["validation_share_of_epoch"] < 1
    assert (result["dense"]["item_updates"], result["now"]["item_updates"]) == ("dense", "sparse")
    assert result["now"]["step_ms_at_scale"] >= result["now"]["step_ms"] and result["sparse_step_speedup"] > 0
    # The loop's two sizes are reused; the extra size is timed.
    at = result["now_step_ms_at_items"]
    assert (at["500"], at["2000"]) == (result["now"]["step_ms_small"], result["now"]["step_ms"]) and at["3000"] > 0
    assert result["same_user_vectors"] is True and result["user_ms_now"] > 0
