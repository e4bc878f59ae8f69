"""Starting the training processes: one in the driver, N on the driver, or a Spark barrier stage."""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import uuid

from longtail.core.config import TrainConfig
from longtail.core.errors import EnvironmentProblem
from longtail.core.session import default_parallelism
from longtail.stages.train.worker import train_worker


def new_version(model_name: str, cfg: TrainConfig) -> str:
    """A sortable, unique version: UTC time to the millisecond + a short hash."""
    now = dt.datetime.now(dt.timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"
    text = f"{model_name}|{json.dumps(dataclasses.asdict(cfg), sort_keys=True)}|{uuid.uuid4().hex}"
    return f"{stamp}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def check_task_slots(spark, processes: int) -> None:
    """Fail fast when a barrier stage of ``processes`` tasks cannot be scheduled at once.

    Spark would otherwise retry the barrier stage every 15 s for about 10 minutes.

    Raises:
        EnvironmentProblem: naming the slots found and how they were counted.
    """
    cpus = max(1, int(spark.conf.get("spark.task.cpus", "1") or "1"))
    parallelism = default_parallelism(spark)  # a classic session and Spark Connect alike
    slots = parallelism // cpus
    if slots < processes:
        raise EnvironmentProblem(
            f"train.mode=cluster needs {processes} concurrent task slots for one barrier stage, but "
            f"Spark has {slots} (spark.master={spark.conf.get('spark.master', '?')}, default parallelism {parallelism}, "
            f"spark.task.cpus={cpus}); lower train.processes or add executors"
        )


def threads_per_process(spark, cfg: TrainConfig, world: int) -> int | None:
    """Torch threads for each process: None (torch's default) in ``single`` mode."""
    # Processes on one machine share its cores; more threads than cores only thrash.
    if cfg.mode == "single":
        return None
    if cfg.mode == "local":
        return max(1, (os.cpu_count() or 1) // world)
    return max(1, int(spark.conf.get("spark.task.cpus", "1") or "1"))


def launch(spark, cfg: TrainConfig, params: dict) -> str:
    """Run :func:`~longtail.stages.train.worker.train_worker` as ``cfg.mode`` says; returns the saved model's path."""
    if cfg.mode == "single":
        return train_worker(params)
    from pyspark.ml.torch.distributor import TorchDistributor

    try:
        distributor = TorchDistributor(
            num_processes=cfg.processes, local_mode=cfg.mode == "local", use_gpu=cfg.use_gpu
        )
    except RuntimeError as exc:  # GPU settings TorchDistributor refuses
        raise EnvironmentProblem(f"train.use_gpu={cfg.use_gpu}, mode {cfg.mode}: {exc}") from None
    return distributor.run(train_worker, params)
