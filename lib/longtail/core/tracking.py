"""MLflow tracking of training and evaluation runs (the ``mlflow`` extra; ``tracking.mlflow``, off by default).

Everything is logged on the driver after the work is done, from what the stage saved (a model's
``metrics.json`` and files, an evaluation report), never from inside the torch processes:

- ``train``: one MLflow run ``train <model> <version>`` with the hyperparameters (``train`` section),
  the per-epoch history (loss, seconds, validation figures; step = epoch), the best figures, the
  model folder as artifacts under ``model/`` and tags ``longtail.model``/``longtail.model_version``;
  with ``tracking.register`` also a model-registry version named after the model.
- ``evaluate``: one run ``evaluate <model> <version>`` with every figure of the report as a metric
  (``<protocol>.<segment>.<metric>``, ``catalog.<metric>``) and the report JSON as an artifact.

Where it goes (:func:`tracking_uri`): ``tracking.uri`` when set; Databricks' tracking server when
running on Databricks; else a local file store in ``<warehouse>/_mlruns``.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from longtail.core import files
from longtail.core.config import TrackingConfig
from longtail.core.errors import ConfigError, EnvironmentProblem


def _mlflow():
    try:
        import mlflow
    except ImportError:
        raise EnvironmentProblem(
            "tracking.mlflow is on but MLflow is not installed: pip install 'longtail[mlflow]' "
            "(or set tracking.mlflow: false)"
        ) from None
    return mlflow


def check(tracking: TrackingConfig, warehouse: str) -> None:
    """Fail before any work when tracking is on and cannot work (no MLflow, no place for a store).

    Raises:
        EnvironmentProblem: MLflow is not installed. ConfigError: no ``tracking.uri`` for an
            object-store warehouse outside Databricks.
    """
    if tracking.mlflow:
        _mlflow()
        tracking_uri(tracking, warehouse)


def tracking_uri(tracking: TrackingConfig, warehouse: str) -> str:
    """``tracking.uri``; ``databricks`` on Databricks; else ``file:`` of ``<warehouse>/_mlruns``."""
    if tracking.uri:
        return tracking.uri
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):  # set by every Databricks runtime
        return "databricks"
    where = files.location(warehouse)
    if not where.local:
        raise ConfigError(
            f"config key tracking.uri: needed with the warehouse on an object store ({warehouse}): "
            "a tracking server (http://...) or a database (sqlite:///...)"
        )
    return f"file://{where.path}/_mlruns"


class _Run:
    """An MLflow run in the configured store and experiment (a context manager)."""

    def __init__(self, tracking: TrackingConfig, warehouse: str, name: str) -> None:
        self.mlflow = _mlflow()
        uri = tracking_uri(tracking, warehouse)
        if uri.startswith("file:"):
            # MLflow 3 keeps its file store only on request; it is the local default here.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.mlflow.set_tracking_uri(uri)
        self.mlflow.set_experiment(tracking.experiment)
        self.name = name

    def __enter__(self):
        return self.mlflow.start_run(run_name=self.name)

    def __exit__(self, *exc: Any) -> None:
        self.mlflow.end_run("FAILED" if exc[0] is not None else "FINISHED")


def log_training(
    tracking: TrackingConfig, warehouse: str, model: str, version: str, model_dir: str, hyperparameters: dict,
    extra_params: dict | None = None,
) -> str | None:
    """Log a finished training run from its model folder; returns the MLflow run id (None when off)."""
    if not tracking.mlflow:
        return None
    metrics = json.loads(files.read_bytes(f"{model_dir}/metrics.json"))
    with _Run(tracking, warehouse, f"train {model} {version}") as run:
        mlflow = _mlflow()
        mlflow.set_tags({"longtail.stage": "train", "longtail.model": model, "longtail.model_version": version,
                         "longtail.model_dir": model_dir})
        params = {**_flat(hyperparameters, "train."), **(extra_params or {})}
        mlflow.log_params({k: _param(v) for k, v in params.items()})
        for entry in metrics.get("history", []):
            step = int(entry.get("epoch", 0))
            values = {k: float(v) for k, v in entry.items() if k != "epoch" and _number(v)}
            if values:
                mlflow.log_metrics(values, step=step)
        mlflow.log_metrics({f"best.{k}": float(v) for k, v in metrics.items() if k != "history" and _number(v)})
        _log_folder(mlflow, model_dir, "model")
        if tracking.register:
            mlflow.register_model(f"runs:/{run.info.run_id}/model", model, tags={"longtail.model_version": version})
        return run.info.run_id


def log_evaluation(
    tracking: TrackingConfig, warehouse: str, model: str, version: str, report: dict, report_path: str | None = None
) -> str | None:
    """Log an evaluation report's figures (and the report file); returns the run id (None when off)."""
    if not tracking.mlflow:
        return None
    with _Run(tracking, warehouse, f"evaluate {model} {version}") as run:
        mlflow = _mlflow()
        mlflow.set_tags({"longtail.stage": "evaluate", "longtail.model": model, "longtail.model_version": version})
        mlflow.log_param("k", report.get("k"))
        figures: dict[str, float] = {}
        for protocol, block in (report.get("protocols") or {}).items():
            for segment, values in (block or {}).items():
                if isinstance(values, dict):
                    figures.update({f"{protocol}.{segment}.{m}": v for m, v in values.items() if _number(v)})
        figures.update({f"catalog.{m}": v for m, v in (report.get("catalog") or {}).items() if _number(v)})
        mlflow.log_metrics({_metric_name(k): float(v) for k, v in figures.items()})
        mlflow.log_dict(report, f"evaluation-{model}.json")
        return run.info.run_id


def _log_folder(mlflow, folder: str, artifact_path: str) -> None:
    """Log every file of ``folder`` (local or object store) as artifacts under ``artifact_path``."""
    from pyarrow import fs as pafs

    fs, base = files.filesystem(folder)
    with tempfile.TemporaryDirectory() as tmp:
        for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
            if info.type == pafs.FileType.File:
                rel = info.path[len(base.rstrip("/")) + 1:]
                target = os.path.join(tmp, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with fs.open_input_stream(info.path) as src, open(target, "wb") as out:
                    out.write(src.readall())
        mlflow.log_artifacts(tmp, artifact_path)


def _flat(values: dict, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _param(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _metric_name(name: str) -> str:
    # MLflow metric names allow letters, digits and _-./ and spaces; '@' (hr@10) is not among them.
    return name.replace("@", "_at_")
