"""`longtail train --warm-start`: resumes the latest version on a grown catalogue, refuses another architecture."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from longtail.cli import main
from longtail.core import schemas as S
from longtail.core.config import TrainConfig
from longtail.core.errors import ConfigError
from longtail.core.tables import Warehouse
from longtail.inference.store import OPTIMIZER_FILE, load_model
from longtail.stages.train import run_train
from longtail.stages.train.data import EpochRows
from longtail.stages.train.prepare import FINGERPRINTS, _with_changes
from longtail.stages.train.warm_start import architecture_differences, find_previous
from tiny_walks import write_text_tables, write_walks

OLD_ITEMS, ALL_ITEMS = 120, 130
N_USERS, HIDDEN, LLM_DIM = 240, 8, 12
SETTINGS = {  # tiny, and a learnable walk (steps of 3) learnt in a few epochs
    "hidden": HIDDEN, "max_len": 12, "dropout": 0.0, "layers": 1, "heads": 1, "batch_size": 32, "lr": 0.02,
    "negatives": 32, "seed": 7, "epochs": 6, "patience": 6,
    "exposure_tolerance": 0.0,  # no serving calibration: not what these tests are about, and it costs full passes
}
TINY = TrainConfig(**SETTINGS, warm_start=True)


def _write_sequences(spark, wh: Warehouse, n_items: int) -> None:
    """Users walk the first ``n_items`` items in steps of 3; item_stats knows exactly those items."""
    write_walks(spark, wh, np.random.default_rng(0), N_USERS, n_items, lengths=(6, 12))


@pytest.fixture(scope="module")
def grown_wh(spark, tmp_path_factory):
    """Text for all 130 items; sequences over the first 120. Yields (warehouse, the version trained on them)."""
    wh = Warehouse(spark, str(tmp_path_factory.mktemp("warm") / "warehouse"))
    write_text_tables(spark, wh, np.random.default_rng(1), ALL_ITEMS, HIDDEN, LLM_DIM)
    _write_sequences(spark, wh, OLD_ITEMS)
    lines: list[str] = []
    first = run_train(wh, "llmesr_sasrec", TINY, progress=lines.append)
    # train.warm_start with no version yet: from scratch, and it says so (a scheduled first run works).
    assert first.warm_start_from is None
    assert any("no trained version of llmesr_sasrec" in line and "from scratch" in line for line in lines)
    assert os.path.isfile(os.path.join(first.path, OPTIMIZER_FILE))  # for the next warm start
    _write_sequences(spark, wh, ALL_ITEMS)  # 10 new items, appended after the old idxs
    return wh, first


def _cli(wh: Warehouse, *extra: str, **settings) -> list[str]:
    args = ["train", "--model", "llmesr_sasrec", *extra, "--set", f"warehouse={wh.root}", "--set", f"encode.pca_dim={HIDDEN}"]
    for key, value in {**SETTINGS, **settings}.items():
        args += ["--set", f"train.{key}={value}"]
    return args


@pytest.mark.spark
def test_warm_start_resumes_with_new_items_through_the_cli(grown_wh, capsys):
    wh, first = grown_wh
    assert main(_cli(wh, "--warm-start", epochs=2)) == 0
    assert f"warm start from version {first.version}" in capsys.readouterr().out
    model = load_model(wh, "llmesr_sasrec")
    metrics = json.loads(Path(model.path, "metrics.json").read_text())
    info = metrics["warm_start"]
    assert {k: info[k] for k in ("from_version", "carried_items", "new_items", "dropped_items", "optimizer")} == {
        "from_version": first.version, "carried_items": OLD_ITEMS, "new_items": ALL_ITEMS - OLD_ITEMS,
        "dropped_items": 0, "optimizer": True}
    assert info["train_users"] == N_USERS and 0 < info["changed_users"] <= N_USERS and info["replay"] == 0.2
    # New items have rows of their own, after the old ones, ids kept.
    assert model.item_ids[1:] == [f"i{i}" for i in range(1, ALL_ITEMS + 1)]
    assert model.item_vectors().shape[0] == ALL_ITEMS + 1
    # It resumed: its first validation is already near the previous best, far above where a
    # from-scratch run stood after its first epoch.
    scratch = json.loads(Path(first.path, "metrics.json").read_text())["history"]
    warm_first = metrics["history"][0]["valid_ndcg10"]
    assert warm_first >= 0.8 * first.valid_ndcg10, (warm_first, first.valid_ndcg10)
    assert warm_first > scratch[0]["valid_ndcg10"] + 0.25 * (first.valid_ndcg10 - scratch[0]["valid_ndcg10"])


@pytest.mark.spark
def test_another_architecture_is_refused_with_one_line(grown_wh, capsys):
    wh, _ = grown_wh
    before = wh.read(S.MODELS).count()
    assert main(_cli(wh, "--warm-start", layers=2, heads=2)) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]
    assert len(err) == 1 and err[0].startswith("longtail train: error: train.warm_start:"), err
    assert "another architecture" in err[0] and "train.layers 1 there, 2 here" in err[0]
    assert "train.heads 1 there, 2 here" in err[0]
    assert wh.read(S.MODELS).count() == before


@pytest.mark.spark
def test_a_named_version_is_continued_instead_of_the_newest(grown_wh):
    wh, first = grown_wh
    newer = run_train(wh, "llmesr_sasrec", dataclasses.replace(TINY, epochs=1))
    assert newer.warm_start_from is not None and newer.version != first.version
    pinned = run_train(wh, "llmesr_sasrec", dataclasses.replace(TINY, epochs=1, warm_start_version=first.version))
    assert pinned.warm_start_from == first.version  # not the newest (newer's)
    with pytest.raises(ConfigError, match="train.warm_start_version: model llmesr_sasrec has no version 'nope'"):
        find_previous(wh, "llmesr_sasrec", dict(dataclasses.asdict(TINY), warm_start_version="nope"))


def test_epochs_of_a_warm_start_train_the_changed_rows_and_a_fresh_share_of_the_others():
    changed = np.zeros(100, dtype=bool)
    changed[[3, 50, 97]] = True
    rows = EpochRows(changed, replay=0.1, cloze=False)
    assert rows.subset and rows.rows == 3 + 10
    first, second = rows.ids(np.random.default_rng(1)), rows.ids(np.random.default_rng(2))
    for ids in (first, second):
        assert len(ids) == 13 == len(set(ids)) and {3, 50, 97} <= set(ids)
    assert set(first) != set(second)  # another replayed sample each epoch
    cloze = EpochRows(changed, replay=0.1, cloze=True).ids(np.random.default_rng(1))
    assert len(cloze) == 26 and {3, 103, 50, 150} <= set(cloze)  # each row once masked, once at its end
    # replay 1, or nothing unchanged: every row, the plain shuffle of a from-scratch epoch.
    assert sorted(EpochRows(changed, 1.0, False).ids(np.random.default_rng(1))) == list(range(100))
    everything = EpochRows(np.ones(5, dtype=bool), 0.0, False)
    assert not everything.subset and np.array_equal(everything.ids(np.random.default_rng(4)),
                                                    np.random.default_rng(4).permutation(5))
    assert EpochRows(changed, 0.0, False).rows == 3 + 1  # at least one replayed row: no epoch is empty


@pytest.mark.spark
def test_users_whose_history_changed_are_marked_against_the_previous_fingerprints(spark, tmp_path):
    wh = Warehouse(spark, str(tmp_path / "wh"))
    users = spark.createDataFrame([(1, 11), (2, 22), (3, 33)], "user_idx int, fingerprint long")
    before = str(tmp_path / "before")
    spark.createDataFrame([(1, 11), (2, 99), (4, 44)], "user_idx int, fingerprint long").write.parquet(before)
    marked = {r.user_idx: r.changed for r in _with_changes(wh, users, before).collect()}
    assert marked == {1: False, 2: True, 3: True}  # same history / another history / a new user
    assert {r.changed for r in _with_changes(wh, users, None).collect()} == {True}


@pytest.mark.spark
def test_a_warm_start_counts_the_changed_users_and_keeps_fingerprints_for_the_next(grown_wh):
    wh, first = grown_wh
    assert os.path.isdir(os.path.join(first.path, FINGERPRINTS))  # saved by the first (warm_start on) run
    result = run_train(wh, "llmesr_sasrec", dataclasses.replace(TINY, epochs=1, warm_start_version=first.version,
                                                                warm_start_replay=0.25))
    info = json.loads(Path(result.path, "metrics.json").read_text())["warm_start"]
    # The walks were rewritten over 130 items: most histories changed, not necessarily all.
    assert 0 < info["changed_users"] <= info["train_users"] and info["replay"] == 0.25
    # A carried version trains on at the warm-start share of the rate; its first run (from scratch) at the rate.
    assert info["lr"] == pytest.approx(TINY.lr * TINY.warm_start_lr_factor) and TINY.warm_start_lr_factor < 1
    assert json.loads(Path(result.path, "metrics.json").read_text())["history"][0]["lr"] == pytest.approx(info["lr"])
    assert json.loads(Path(first.path, "metrics.json").read_text())["history"][0]["lr"] == pytest.approx(TINY.lr)
    seen = json.loads(Path(result.path, "metrics.json").read_text())["sequences_per_epoch"]
    unchanged = info["train_users"] - info["changed_users"]
    assert seen == info["changed_users"] + (max(1, round(0.25 * unchanged)) if unchanged else 0)
    assert os.path.isdir(os.path.join(result.path, FINGERPRINTS))


def test_architecture_keys_per_model():
    base = dataclasses.asdict(TINY)
    assert architecture_differences("llmesr_sasrec", base, dict(base, dropout=0.3, lr=1.0, epochs=9)) == []
    assert architecture_differences("llmesr_sasrec", base, dict(base, semantic_view=False)) == [
        "train.semantic_view True there, False here"]
    # GRU4Rec has no attention heads or positions; a plain model no views.
    assert architecture_differences("gru4rec", base, dict(base, heads=4, max_len=50, view_gate="popularity")) == []
    assert architecture_differences("sasrec", base, dict(base, max_len=50)) == ["train.max_len 12 there, 50 here"]
    # Keys a model saved before they existed read as the builder's default.
    old = {k: v for k, v in base.items() if k not in ("similarity", "view_gate")}
    assert architecture_differences("llmesr_sasrec", old, base) == []


@pytest.mark.spark
@pytest.mark.slow
def test_warm_start_with_two_processes(grown_wh):
    wh, _ = grown_wh
    cfg = dataclasses.replace(TINY, mode="local", processes=2, epochs=1)
    result = run_train(wh, "llmesr_sasrec", cfg)
    assert result.warm_start_from is not None and result.processes == 2
    metrics = json.loads(Path(result.path, "metrics.json").read_text())
    assert metrics["warm_start"]["optimizer"] and metrics["history"][0]["valid_ndcg10"] > 0


def test_a_run_that_carried_a_version_stops_on_the_warm_start_patience():
    from longtail.stages.train.worker import _patience

    hp = {"patience": 5, "warm_start_patience": 2}
    assert _patience({"hp": hp, "warm_start": {"from_version": "v1"}}) == 2
    assert _patience({"hp": hp, "warm_start": None}) == 5  # a first run: nothing carried, the usual patience
    assert _patience({"hp": {**hp, "warm_start_patience": None}, "warm_start": {"from_version": "v1"}}) == 5
