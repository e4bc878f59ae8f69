"""benchmarks/similar_items.py: the JSON line's figures per source, from the evaluation's block."""
from __future__ import annotations

from bench_scripts import load_script

bench = load_script("similar_items")


def test_summary_flattens_each_source_into_its_hr_tail_hr_coverage_and_tail_share():
    block = {"run_date": "2000-01-01", "k": 10, "sources": {
        "blend": {"overall": {"hr@10": 0.3}, "tail_item": {"hr@10": 0.2}, "items": 5, "coverage": 0.9, "tail_share": 0.7},
    }}
    assert bench.summary(block, 10) == {"blend": {"hr@10": 0.3, "tail_hr@10": 0.2, "coverage": 0.9, "tail_share": 0.7}}
