"""Bad inputs and bad settings through the CLI: one clear line on stderr naming what is wrong,
exit status 2, and no table changed (every table's version is the same before and after).

The cases are the rows of docs/reliability.md; ``LONGTAIL_FAULT_REPORT=path`` appends each as JSON.
"""
from __future__ import annotations

import json
import os
import shutil

import pytest
from longtail.cli import main
from longtail.core.tables import Warehouse

from tests.faults import stages

pytestmark = pytest.mark.spark

# (name, CLI arguments after the warehouse, what the one line must say)
CASES = [
    ("unknown key", ["sequences", "--set", "sequences.kcore=3"], "config key sequences.kcore: unknown"),
    ("wrong type", ["sequences", "--set", "sequences.k_core=many"], "sequences.k_core: expected an integer"),
    ("score.item_chunk=0", ["score", "--set", "score.item_chunk=0"], "score.item_chunk: must be >= 1, got 0"),
    ("evaluate.k=0", ["evaluate", "--set", "evaluate.k=0"], "evaluate.k: must be >= 1"),
    ("evaluate.k > negatives", ["evaluate", "--set", "evaluate.k=200"], "evaluate.k: 200 is more than"),
    ("pca_dim != hidden (llmesr)", ["train", "--model", "llmesr_sasrec", "--set", "encode.pca_dim=32"],
     "encode.pca_dim: 32 differs from train.hidden=128"),
    ("train.heads not dividing hidden", ["train", "--set", "train.heads=3"], "train.heads"),
    ("vacuum retention 0", ["vacuum", "--set", "vacuum.retention_hours=0"], "vacuum.retention_hours: must be >= 1"),
    ("--top-k 0", ["score", "--model", "popularity", "--top-k", "0"], "--top-k 0: must be between 1 and 1000"),
    ("--top-k huge", ["score", "--model", "popularity", "--top-k", "100000000"], "--top-k 100000000"),
    ("--top-k > catalogue", ["score", "--model", "popularity", "--top-k", "500"],
     "--top-k 500: larger than the whole rankable catalogue"),
    ("unknown model", ["score", "--model", "nope"], "nope"),
    ("missing input file", ["ingest", "--format", "files", "--interactions", "{raw}/nope.csv"], "nope.csv: not found"),
    ("CSV without a required column", ["ingest", "--format", "files", "--interactions", "{raw}/no_item.csv"],
     "no_item.csv: missing column 'item_id'"),
    ("bad CSV rows", ["ingest", "--format", "files", "--interactions", "{raw}/bad_rows.csv"],
     "bad_rows.csv line 3: unparseable timestamp"),
    ("k-core leaves nothing", ["sequences", "--set", "sequences.k_core=500"], "no interactions left"),
]


@pytest.fixture(scope="module")
def prepared(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("bad-inputs")
    raw = base / "raw"
    stages.write_raw(raw)
    (raw / "no_item.csv").write_text("user_id,item,timestamp\nu1,i1,1400000000\n")
    (raw / "bad_rows.csv").write_text("user_id,item_id,timestamp\nu1,i1,1400000000\nu2,i2,soon\n")
    root = base / "warehouse"
    root.mkdir()
    for stage in ("ingest", "sequences"):
        stages.run_stage(stage, Warehouse(spark, str(root)), raw)
    return raw, root


def _versions(root) -> dict[str, int]:
    from deltalake import DeltaTable

    return {t: DeltaTable(os.path.join(root, t)).version() for t in stages.tables(str(root))}


@pytest.mark.slow
@pytest.mark.parametrize("name, args, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line_and_changes_no_table(prepared, capsys, name, args, expected):
    raw, root = prepared
    before = _versions(root)
    files_before = sorted(p for p in os.listdir(root) if p != "_tmp")  # scratch is vacuum's
    argv = [a.replace("{raw}", str(raw)) for a in args]
    status = main([*argv, "--set", f"warehouse={root}", "--set", "spark.shuffle_partitions=2"])
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if ": error: " in line]  # beside progress lines
    after = _versions(root)
    case = {"suite": "bad input", "case": name, "status": status, "lines": len(err),
            "message": err[-1] if err else "", "tables_changed": sorted(t for t in after if after[t] != before.get(t))}
    if os.environ.get("LONGTAIL_FAULT_REPORT"):
        with open(os.environ["LONGTAIL_FAULT_REPORT"], "a") as out:
            out.write(json.dumps(case) + "\n")
    assert status == 2, err
    assert len(err) == 1 and "Traceback" not in stderr and stderr.strip().splitlines()[-1] == err[0], stderr
    assert expected in err[0] and err[0].startswith(f"longtail {argv[0]}: error: ")
    assert case["tables_changed"] == [] and after == before
    assert sorted(p for p in os.listdir(root) if p != "_tmp") == files_before
    shutil.rmtree(os.path.join(root, "_tmp"), ignore_errors=True)
