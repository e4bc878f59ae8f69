"""The learning-rate schedule (``train.lr_warmup_steps``, ``train.lr_decay``) and the weight average
(``train.weight_average``): pure, and in a run."""

import dataclasses
import json
import os

import pytest

from longtail.core.tables import Warehouse
from longtail.inference.store import load_model
from longtail.stages.train import run_train
from longtail.stages.train.data import UserTable
from longtail.stages.train.prepare import prepare_training_data
from longtail.stages.train.schedule import LearningRate
from longtail.stages.train.validation import ValidationSet
from tests.stages.test_train import N_ITEMS, TINY, _write_inputs


class _Optimizer:
    def __init__(self):
        self.param_groups = [{"lr": None}, {"lr": None}]


def test_warmup_rises_linearly_to_the_base_rate_then_holds():
    schedule, opt = LearningRate(base=0.01, warmup_steps=4), _Optimizer()
    rates = []
    for _ in range(6):
        schedule.step(opt)
        rates.append(opt.param_groups[0]["lr"])
        assert opt.param_groups[1]["lr"] == rates[-1]  # every group alike
    assert rates == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01])


def test_plateau_decays_after_patience_validations_without_improvement_and_waits_again():
    schedule = LearningRate(base=1.0, factor=0.5, patience=2)
    asked = [schedule.wants_decay(improved) for improved in (True, False, True, False)]
    assert asked == [False, False, False, False]  # an improvement resets the wait
    assert schedule.wants_decay(False)  # the second validation in a row without one
    schedule.decay()
    assert schedule.rate == 0.5
    assert [schedule.wants_decay(False) for _ in range(2)] == [False, True]
    schedule.decay()
    assert schedule.rate == 0.25


def test_the_defaults_keep_the_rate_constant():
    hp = {"lr": 0.001, "lr_warmup_steps": 0, "lr_decay": "none", "lr_decay_factor": 0.5, "lr_decay_patience": 1}
    schedule, opt = LearningRate.from_hp(hp), _Optimizer()
    assert not any(schedule.wants_decay(False) for _ in range(5))
    schedule.step(opt)
    assert opt.param_groups[0]["lr"] == 0.001
    plateau = LearningRate.from_hp({**hp, "lr_decay": "plateau"})
    assert plateau.wants_decay(False) and plateau.factor == 0.5


@pytest.mark.spark
@pytest.mark.slow
def test_a_run_decays_its_rate_on_every_plateau_of_its_validations(spark, tmp_path):
    wh = Warehouse(spark, str(tmp_path / "warehouse"))
    _write_inputs(spark, wh)
    cfg = dataclasses.replace(TINY, alpha=0.0, epochs=6, patience=6, lr_warmup_steps=3, lr_decay="plateau",
                              lr_decay_factor=0.5, lr_decay_patience=1)
    result = run_train(wh, "sasrec", cfg)
    history = json.loads(open(os.path.join(result.path, "metrics.json")).read())["history"]
    # Replay the rule on the recorded validations: every epoch that did not beat the best so far
    # halves the rate (patience 1), and the run recorded exactly those decays.
    best, rate, expected = -1.0, cfg.lr, []
    for entry in history:
        if entry["valid_ndcg10"] > best:
            best = entry["valid_ndcg10"]
            expected.append(None)
        else:
            rate *= 0.5
            expected.append(rate)
    assert [e.get("lr_after") for e in history] == pytest.approx(expected)
    # Each epoch records the rate of its first step: a third of lr (the warm-up's first of 3 steps), then
    # the rate after the decays so far.
    decays = [e.get("lr_after") is not None for e in history]
    firsts = [cfg.lr / 3] + [cfg.lr * 0.5 ** sum(decays[:i]) for i in range(1, len(history))]
    assert [e["lr"] for e in history] == pytest.approx(firsts)


def test_a_run_that_carried_a_version_starts_at_the_warm_start_share_of_the_rate():
    from longtail.stages.train.worker import _carried

    hp = {"lr": 1e-3, "warm_start_lr_factor": 0.5, "lr_decay": "plateau", "lr_decay_factor": 0.5, "lr_decay_patience": 1}
    carried = LearningRate.from_hp(hp, carried=_carried({"warm_start": {"from_version": "v1"}}))
    assert carried.rate == pytest.approx(5e-4)
    assert LearningRate.from_hp(hp, carried=_carried({"warm_start": None})).rate == pytest.approx(1e-3)
    carried.decay()  # a plateau decay compounds with the warm-start share
    assert carried.rate == pytest.approx(2.5e-4)


@pytest.mark.spark
@pytest.mark.slow
def test_a_run_with_weight_averaging_trains_the_same_steps_and_validates_and_saves_the_average(
        spark, tmp_path):
    wh = Warehouse(spark, str(tmp_path / "warehouse"))
    _write_inputs(spark, wh)
    cfg = dataclasses.replace(TINY, alpha=0.0, epochs=6, patience=6, lr=0.01, negatives=32, validate="full")
    runs = {}
    for decay in (0.0, 0.9):
        result = run_train(wh, "sasrec", dataclasses.replace(cfg, weight_average=decay))
        runs[decay] = (result, json.loads(open(os.path.join(result.path, "metrics.json")).read()))
    (_, plain_metrics), (averaged, averaged_metrics) = runs[0.0], runs[0.9]
    plain_history, averaged_history = plain_metrics["history"], averaged_metrics["history"]
    # 0.9 capped to two epochs of steps: 3 per epoch (48 users at batch 16), so the last 6 steps
    assert plain_metrics["weight_average"] == 0.0 and averaged_metrics["weight_average"] == pytest.approx(1 - 1 / 6)
    # The average only watches: the same seeded steps give the same losses epoch by epoch ...
    assert [h["loss"] for h in averaged_history] == pytest.approx([h["loss"] for h in plain_history], rel=1e-5)
    # ... while validation ranks with other weights than the last step's.
    assert [h["valid_ndcg10"] for h in averaged_history] != pytest.approx([h["valid_ndcg10"] for h in plain_history])
    # The saved weights are the validated average: reloaded, they score the validation users as at the best epoch,
    # and they learned the walk (random: the validation item in the top 10 of the 130 items for 10/130 of users).
    run_dir = str(tmp_path / "run")
    prepare_training_data(wh, "sasrec", cfg, run_dir, n_shards=1, world=1)
    validation = ValidationSet.build(UserTable.load(f"{run_dir}/users"), N_ITEMS, cfg.max_len, cfg.seed, 100)
    model = load_model(wh, "sasrec", version=averaged.version)
    ndcg, hr = validation.evaluate(model.module, protocols=("full",))["full"]
    assert ndcg == pytest.approx(averaged.valid_ndcg10, abs=1e-12)
    assert hr > 3 * 10 / N_ITEMS


def test_the_average_spans_at_most_two_epochs_of_steps():
    from longtail.stages.train.worker import average_decay

    assert average_decay(0.0, 175) == 0.0  # off
    assert average_decay(0.995, 175) == 0.995  # Beauty at batch 128: 200 steps, within 350
    assert average_decay(0.995, 4) == pytest.approx(1 - 1 / 8)  # a tiny catalogue: the last 8 steps, not 200
    assert average_decay(0.995, 0) == 0.5
