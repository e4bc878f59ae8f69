"""MLflow tracking: off by default; when on, train and evaluate runs land in a local file store."""
from __future__ import annotations

import json
import sys

import pytest
from longtail.core.config import Config, TrackingConfig, load_config
from longtail.core.errors import ConfigError, EnvironmentProblem
from longtail.core.tracking import check, log_evaluation, log_training, tracking_uri

import mlflow  # noqa: E402,F401 - in the test extra: a missing mlflow is a broken install, not a skip


def _client(uri):
    import mlflow.tracking

    return mlflow.tracking.MlflowClient(tracking_uri=uri)


def _runs(uri, experiment="longtail"):
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id]) if exp else []


def test_off_by_default_and_nothing_is_logged(tmp_path):
    assert load_config(None).tracking == TrackingConfig() and not Config().tracking.mlflow
    assert log_training(TrackingConfig(), str(tmp_path), "m", "v", str(tmp_path), {}) is None
    assert log_evaluation(TrackingConfig(), str(tmp_path), "m", "v", {}) is None
    assert not (tmp_path / "_mlruns").exists()


def test_where_runs_go(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    on = TrackingConfig(mlflow=True)
    assert tracking_uri(on, str(tmp_path / "wh")) == f"file://{tmp_path}/wh/_mlruns"
    assert tracking_uri(TrackingConfig(mlflow=True, uri="http://mlflow:5000"), "s3a://b/wh") == "http://mlflow:5000"
    with pytest.raises(ConfigError, match="tracking.uri"):
        check(on, "s3a://bucket/wh")
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    assert tracking_uri(on, "/Volumes/main/longtail/wh") == "databricks"


def test_missing_mlflow_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(EnvironmentProblem, match=r"longtail\[mlflow\]"):
        check(TrackingConfig(mlflow=True), str(tmp_path))


def test_training_run_has_parameters_epochs_model_and_version(tmp_path):
    model_dir = tmp_path / "wh" / "_models" / "sasrec" / "v1"
    model_dir.mkdir(parents=True)
    (model_dir / "weights.pt").write_bytes(b"w")
    history = [{"epoch": e, "loss": 1.0 / e, "seconds": 0.5, "valid_ndcg10": 0.1 * e} for e in (1, 2, 3)]
    (model_dir / "metrics.json").write_text(json.dumps({"best_epoch": 3, "valid_ndcg10": 0.3, "history": history}))
    cfg = TrackingConfig(mlflow=True)
    run_id = log_training(cfg, str(tmp_path / "wh"), "sasrec", "v1", str(model_dir), {"epochs": 3, "lr": 0.001})
    uri = tracking_uri(cfg, str(tmp_path / "wh"))
    client = _client(uri)
    run = client.get_run(run_id)
    assert run.data.params["train.epochs"] == "3" and run.data.tags["longtail.model_version"] == "v1"
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.0, 0.5, 1.0 / 3]
    assert run.data.metrics["best.valid_ndcg10"] == 0.3
    assert {a.path for a in client.list_artifacts(run_id, "model")} == {"model/metrics.json", "model/weights.pt"}


@pytest.mark.spark
@pytest.mark.slow
def test_train_and_evaluate_log_to_a_local_store(demo_warehouse):
    from longtail.stages.evaluate import run_evaluate
    from longtail.stages.train import run_train

    wh, cfg, _, _ = demo_warehouse
    tracking = TrackingConfig(mlflow=True, experiment="longtail-tests")
    lines = []
    train_cfg = cfg.replace(**{"train.epochs": 2}).train
    result = run_train(wh, "sasrec", train_cfg, tracking=tracking, progress=lines.append)
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    report = run_evaluate(wh, "popularity", cfg.evaluate, tracking=tracking)
    client, runs = _runs(tracking_uri(tracking, wh.root), "longtail-tests")
    by_stage = {r.data.tags["longtail.stage"]: r for r in runs}
    train = by_stage["train"]
    assert train.data.tags["longtail.model_version"] == result.version
    assert len(client.get_metric_history(train.info.run_id, "loss")) == result.epochs_run
    assert any(a.path == "model/weights.pt" for a in client.list_artifacts(train.info.run_id, "model"))
    evaluation = by_stage["evaluate"]
    assert evaluation.data.metrics["full.overall.hr_at_10"] == report.report["protocols"]["full"]["overall"]["hr@10"]
