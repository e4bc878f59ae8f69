"""The notebooks run as plain scripts on the demo warehouse and save their plots."""
from __future__ import annotations

import runpy
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.mark.parametrize(
    "notebook, plots",
    [
        ("quickstart.py", []),
        ("longtail_analysis.py", ["popularity_curve.png", "head_tail_shares.png"]),
        ("model_report.py", ["segments_sampled.png", "segments_full.png", "tail_items_by_protocol.png",
                             "exposure_by_popularity_decile.png"]),
    ],
)
def test_notebook_runs_and_saves_plots(demo_warehouse, monkeypatch, notebook, plots):
    wh = demo_warehouse[0]
    monkeypatch.setenv("LONGTAIL_WAREHOUSE", wh.root)
    source = (NOTEBOOKS / notebook).read_text()
    assert source.startswith("# Databricks notebook source")
    runpy.run_path(str(NOTEBOOKS / notebook), run_name="__main__")
    for name in plots:
        png = Path(wh.root) / "_reports" / "plots" / name
        assert png.is_file() and png.stat().st_size > 1000, png
