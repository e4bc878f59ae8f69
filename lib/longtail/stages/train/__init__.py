"""``longtail train``: Spark writes the training data, torch processes train (TorchDistributor + DDP).

1. :mod:`~longtail.stages.train.prepare` checks the inputs and writes the run folder
   ``<warehouse>/_train/<version>/`` (users, shards per process, item index, LLM tables);
2. :mod:`~longtail.stages.train.launch` runs :mod:`~longtail.stages.train.worker` in the
   driver (``single``), in N processes on the driver (``local``: gloo on CPU) or as a Spark
   barrier stage (``cluster``: one process per task / GPU, NCCL on GPU);
3. rank 0 validates (:mod:`~longtail.stages.train.validation`), early-stops and saves the
   best model to ``<warehouse>/_models/<model>/<version>/`` (:mod:`longtail.inference.store`);
4. the driver registers it in the ``models`` table and removes the run folder.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Callable

from longtail.core.config import TrackingConfig, TrainConfig
from longtail.core.errors import ConfigError
from longtail.core.files import absolute, read_bytes, remove_tree
from longtail.core.progress import epoch_lines
from longtail.core.tracking import check as check_tracking
from longtail.core.tracking import log_training
from longtail.inference.store import register_model
from longtail.models import check_model_name
from longtail.stages.train.launch import (
    check_task_slots,
    launch,
    new_version,
    threads_per_process,
)
from longtail.stages.train.prepare import prepare_training_data
from longtail.stages.train.schedule import LearningRate
from longtail.stages.train.warm_start import find_previous, keep_fingerprints, previous_fingerprints
from longtail.stages.train.warm_start import stage as stage_warm_start

#: Training shards per process; files are always a multiple of the number of processes.
SHARDS_PER_PROCESS = 2


@dataclass(frozen=True)
class TrainResult:
    """What :func:`run_train` did; ``str()`` is the CLI's summary."""

    model: str
    version: str
    path: str
    best_epoch: int
    valid_ndcg10: float
    valid_hr10: float
    epochs_run: int
    seconds_per_epoch: float
    sequences_per_second: float
    processes: int
    mode: str
    train_users: int
    #: The serving exposure adjustment chosen on validation: the item bias (``hubness`` or
    #: ``popularity``, ``train.exposure_adjustment``) and its penalty (0 when off).
    exposure_adjustment: str = "popularity"
    exposure_penalty: float = 0.0
    #: The version a warm start continued (``train.warm_start``); None: trained from scratch.
    warm_start_from: str | None = None

    def __str__(self) -> str:
        warm = f"; warm start from version {self.warm_start_from}" if self.warm_start_from else ""
        return (
            f"trained {self.model} version {self.version}: best epoch {self.best_epoch} of "
            f"{self.epochs_run}, validation NDCG@10 {self.valid_ndcg10:.4f} HR@10 {self.valid_hr10:.4f}; "
            f"{self.seconds_per_epoch:.2f} s/epoch ({self.sequences_per_second:.0f} sequences/s) on "
            f"{self.processes} process(es), mode {self.mode}, {self.train_users} training users; "
            f"{self.exposure_adjustment} penalty {self.exposure_penalty:g}{warm}; saved to {self.path}"
        )


def run_train(
    wh, model_name: str, cfg: TrainConfig, *, valid_negatives: int = 100, threads: int | None = None,
    tracking: TrackingConfig | None = None, progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``model_name`` on the warehouse's tables and register it in ``models``.

    Args:
        wh: the :class:`~longtail.core.tables.Warehouse` (its session runs the Spark part).
        model_name: a registered model name (``sasrec``, ..., ``llmesr_bert4rec``).
        cfg: the ``train`` section (hyperparameters, ``mode``, ``processes``, ``seed``).
        valid_negatives: sampled unseen items per validation user (``evaluate.negatives``).
        threads: torch threads per process; None: torch's default in ``single`` mode, the
            machine's cores split between processes in ``local`` mode, ``spark.task.cpus``
            in ``cluster`` mode. (On a busy machine, more threads than free cores make
            torch spin: 1 is then much faster.)
        tracking: the ``tracking`` section: with ``mlflow`` on, the run (parameters, per-epoch
            history, model files, version) is logged to MLflow after training, on the driver.
        progress: called with one line per epoch while training runs (any mode), e.g. ``print``.

    Returns:
        The :class:`TrainResult`.

    Raises:
        ModelNotFoundError: unknown model name (lists the valid ones).
        TableNotFoundError, SchemaError: an input table is missing or has wrong columns.
        InputError: no training users, items without embeddings, idxs out of range.
        ConfigError: the PCA width differs from ``train.hidden``, bad mode/processes; with
            ``train.warm_start``, the newest version has another architecture or text encoder
            (:mod:`~longtail.stages.train.warm_start`; with no version yet it trains from scratch).
        EnvironmentProblem: too few Spark task slots for a cluster run.
    """
    check_model_name(model_name)
    _check_config(cfg)
    if tracking is not None:
        check_tracking(tracking, wh.root)  # before hours of training, not after
    world = 1 if cfg.mode == "single" else cfg.processes
    if cfg.mode == "cluster":
        check_task_slots(wh.spark, world)
    # Before any Spark work: a version of another architecture is refused in seconds.
    hp = dataclasses.asdict(cfg)  # the hyperparameters as the workers, the version check and MLflow read them
    previous = find_previous(wh, model_name, hp, progress) if cfg.warm_start else None
    version = new_version(model_name, cfg)
    root = absolute(wh.root)
    run_dir = f"{root}/_train/{version}"
    model_dir = f"{root}/_models/{model_name}/{version}"
    try:
        prepared = prepare_training_data(wh, model_name, cfg, run_dir, world * SHARDS_PER_PROCESS, world,
                                         previous_fingerprints=previous_fingerprints(previous))
        warm = (stage_warm_start(previous, run_dir, prepared, cfg.warm_start_replay, progress,
                                 lr=LearningRate.from_hp(hp, carried=True).base_rate)
                if previous is not None else None)
        params = {
            "model": model_name, "version": version, "run_dir": run_dir, "model_dir": model_dir,
            "hp": hp, "world": world, "valid_negatives": valid_negatives,
            "threads": threads or cfg.threads or threads_per_process(wh.spark, cfg, world), **prepared,
            "driver_progress": progress is not None, "warm_start": warm,
        }
        with epoch_lines(run_dir, cfg.epochs, progress):
            path = launch(wh.spark, cfg, params)
        if path != model_dir:  # pragma: no cover - a broken worker
            raise RuntimeError(f"training returned {path!r}, expected {model_dir!r}")
        metrics = json.loads(read_bytes(f"{model_dir}/metrics.json"))
        if cfg.warm_start:  # before the version is registered: a registered version is complete
            keep_fingerprints(wh, run_dir, model_dir)
        _register(wh, model_name, version, model_dir, metrics)
    finally:
        remove_tree(run_dir)
    if tracking is not None:
        log_training(tracking, wh.root, model_name, version, model_dir, hp,
                     {"processes": world, "mode": cfg.mode, "train_users": int(prepared["train_users"])})
    calibration = metrics.get("exposure_calibration") or {}
    return TrainResult(
        model=model_name, version=version, path=model_dir, best_epoch=int(metrics["best_epoch"]),
        valid_ndcg10=float(metrics["valid_ndcg10"]), valid_hr10=float(metrics["valid_hr10"]),
        epochs_run=int(metrics["epochs_run"]), seconds_per_epoch=float(metrics["seconds_per_epoch"]),
        sequences_per_second=float(metrics["sequences_per_second"]), processes=world, mode=cfg.mode,
        train_users=int(prepared["train_users"]),
        exposure_adjustment=str(calibration.get("kind", cfg.exposure_adjustment)),
        exposure_penalty=float(calibration.get("penalty", 0.0)),
        warm_start_from=warm["from_version"] if warm else None,
    )


def _check_config(cfg: TrainConfig) -> None:
    for key in ("processes", "epochs", "batch_size", "max_len", "hidden", "layers", "heads"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"config key train.{key}: must be at least 1, got {getattr(cfg, key)}")
    if cfg.hidden % cfg.heads:
        raise ConfigError(f"config key train.heads: {cfg.heads} does not divide train.hidden {cfg.hidden}")


def _register(wh, model_name: str, version: str, model_dir: str, metrics: dict) -> None:
    # A model folder no table row points at would never be used: remove it if registering fails.
    try:
        register_model(wh, model_name, version, model_dir, metrics)
    except BaseException:
        remove_tree(model_dir)
        raise


__all__ = ["SHARDS_PER_PROCESS", "TrainResult", "run_train"]
