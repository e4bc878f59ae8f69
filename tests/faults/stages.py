"""Tiny stage runs for the kill suite: raw inputs, each stage on them, and table snapshots.

A snapshot is every Delta table of a warehouse read with delta-rs (no Spark), rows sorted,
without the columns that differ between two runs of the same command anyway (wall-clock times,
a training run's version and path); record tables (append-only) as sets of rows, so a rerun's
second identical record is not a difference (readers take the latest).
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from deltalake import DeltaTable

RUN_DATE = dt.date(2026, 1, 15)
VOLATILE = {"generated_at", "started_at", "finished_at", "evaluated_at", "trained_at", "model_version", "path",
            "seconds_per_epoch"}
RECORD_TABLES = {"recommendation_runs", "evaluation", "models"}
#: Every stage that writes tables, in pipeline order: each runs on what the ones before it wrote.
PIPELINE = ("ingest", "sequences", "encode", "neighbors", "train", "similar_items", "evaluate", "score")
#: The model ``train`` trains and ``similar_items``, ``evaluate`` and ``score`` serve.
MODEL = "sasrec"


def write_raw(folder: Path) -> tuple[str, str]:
    """interactions.csv and items.csv: 40 users, 24 items, a few interactions each (deterministic)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id,item_id,timestamp,rating"]
    for u in range(40):
        for j in range(4 + u % 5):
            item = (u * 7 + j * 5) % 24
            lines.append(f"u{u:02d},i{item:02d},{1_400_000_000 + u * 1000 + j * 10},{1 + (u + j) % 5}")
    inter = folder / "interactions.csv"
    inter.write_text("\n".join(lines) + "\n")
    items = folder / "items.csv"
    rows = ["item_id,title,description,categories,brand"]
    rows += [f'i{i:02d},"Item {i}, nr {i}","A ""thing""\nnumber {i}",cat{i % 4}|all,brand{i % 3}' for i in range(24)]
    items.write_text("\n".join(rows) + "\n")
    return str(inter), str(items)


def run_stage(name: str, wh, raw: Path):
    """Run one stage the way its CLI command does, on the tiny inputs."""
    if name == "ingest":
        from longtail.core.config import IngestConfig
        from longtail.stages.ingest import run_ingest

        inter, items = str(raw / "interactions.csv"), str(raw / "items.csv")
        return run_ingest(wh.spark, wh, "files", inter, items, None, IngestConfig())
    if name == "sequences":
        from longtail.core.config import SequencesConfig
        from longtail.stages.sequences import run_sequences

        return run_sequences(wh, SequencesConfig(k_core=2))
    if name == "encode":
        from longtail.core.config import EncodeConfig
        from longtail.stages.encode import run_encode

        return run_encode(wh, EncodeConfig(batch_size=16, max_tokens=32, pca_dim=8, device="cpu"), users=True)
    if name == "neighbors":
        from longtail.core.config import NeighborsConfig
        from longtail.stages.neighbors import run_neighbors

        return run_neighbors(wh, NeighborsConfig(top_n=3))
    if name == "train":
        from longtail.core.config import TrainConfig
        from longtail.stages.train import run_train

        cfg = TrainConfig(hidden=8, max_len=8, dropout=0.1, layers=1, heads=1, batch_size=16, epochs=2,
                          patience=2, seed=7)
        return run_train(wh, MODEL, cfg, valid_negatives=10, threads=1)
    if name == "similar_items":
        from longtail.core.config import SimilarItemsConfig
        from longtail.stages.similar_items import run_similar_items

        return run_similar_items(wh, MODEL, SimilarItemsConfig(top_k=3, hubness_queries=50), run_date=RUN_DATE)
    if name == "evaluate":
        from longtail.core.config import EvaluateConfig
        from longtail.stages.evaluate import run_evaluate

        return run_evaluate(wh, MODEL, EvaluateConfig(negatives=10, k=3, recall_at=5))
    if name == "score":
        from longtail.core.config import ScoreConfig
        from longtail.stages.score import run_score

        return run_score(wh, MODEL, ScoreConfig(), run_date=RUN_DATE, top_k=3)
    raise ValueError(name)


def tables(root: str) -> list[str]:
    return sorted(n for n in os.listdir(root) if DeltaTable.is_deltatable(os.path.join(root, n)))


def snapshot(root: str) -> dict[str, list]:
    """Every table's rows (see the module doc)."""
    out = {}
    for name in tables(root):
        rows = DeltaTable(os.path.join(root, name)).to_pyarrow_table().to_pylist()
        rows = [tuple(sorted((k, _plain(v)) for k, v in r.items() if k not in VOLATILE)) for r in rows]
        if name in RECORD_TABLES:
            rows = list(set(rows))
        out[name] = sorted(rows, key=repr)
    return out


def unreadable(root: str, spark=None) -> list[str]:
    """Tables that delta-rs (and Spark, when given) cannot read whole."""
    bad = []
    for name in tables(root):
        try:
            DeltaTable(os.path.join(root, name)).to_pyarrow_table()
            if spark is not None:
                from longtail.core.tables import Warehouse

                Warehouse(spark, root).read(name).count()
        except Exception as exc:  # noqa: BLE001 - any failure to read counts
            bad.append(f"{name}: {type(exc).__name__}: {exc}")
    return bad


def _plain(value):
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    if isinstance(value, float):
        return round(value, 5)
    return value
