"""The whole pipeline: `demo` end to end, progress lines, summary, and a failing stage named."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from longtail.cli import main
from longtail.core.config import Config
from longtail.pipeline import StageError, run_pipeline
from pyspark.sql import functions as F

pytestmark = pytest.mark.spark


@pytest.mark.slow
def test_demo_runs_every_stage_and_writes_the_contract_tables(demo_warehouse):
    wh, cfg, result, progress = demo_warehouse
    for stage in ("synthetic catalogue", "sequences", "encode", "neighbors", "train", "similar-items", "evaluate", "score"):
        assert f"{stage}: " in progress, stage
    for table in ("interactions", "items", "user_sequences", "item_stats", "user_stats", "item_embeddings",
                  "user_embeddings", "similar_users", "models", "evaluation", "recommendations",
                  "recommendation_runs", "similar_items"):
        assert wh.exists(table), table
    recs = wh.read("recommendations")
    per_user = recs.groupBy("user_id").agg(F.count("*").alias("n"), F.max("rank").alias("max_rank"))
    assert per_user.where((F.col("n") != cfg.score.top_k) | (F.col("max_rank") != cfg.score.top_k)).count() == 0
    report = json.loads((Path(wh.root) / "_reports" / f"evaluation-{cfg.train.model}.json").read_text())
    assert set(report["protocols"]) == {"sampled", "full"}
    summary = str(result)
    assert "tail item" in summary and cfg.train.model in summary and "popularity" in summary


def test_a_failing_stage_is_named(warehouse):
    # Nothing ingested: the first stage fails, naming itself and the missing table.
    with pytest.raises(StageError, match=r"stage sequences failed: .*interactions"):
        run_pipeline(warehouse, Config().replace(warehouse=warehouse.root), out=io.StringIO())


def test_run_through_the_cli_exits_non_zero_naming_the_stage(tmp_path, capsys, spark):
    assert main(["run", "--set", f"warehouse={tmp_path / 'empty'}"]) == 2
    err = capsys.readouterr().err
    assert "longtail run: error: stage sequences failed" in err


@pytest.mark.parametrize(("model", "alpha", "reads"), [
    ("llmesr_sasrec", 0.1, True), ("llmesr_gru4rec", 0.0, False), ("sasrec", 0.1, False),
])
def test_run_computes_similar_users_only_for_the_distillation(model, alpha, reads):
    from longtail.core.config import TrainConfig
    from longtail.pipeline import reads_similar_users

    assert reads_similar_users(TrainConfig(model=model, alpha=alpha)) is reads
