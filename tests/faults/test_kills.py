"""Jobs killed at their commits: every table stays readable, and rerunning the same command
converges to the tables an uninterrupted run writes (ids included).

Kill points are the commit points a stage passes (``commit:<table>``: its files written, the
commit not made; ``committed:<table>``: the commit made, nothing after it), recorded from an
uninterrupted run. In-process kills raise :class:`longtail.core.faults.Killed` there (no
rollback, as with kill -9); a few real ``kill -9`` runs (a subprocess SIGKILLs itself at the
point) leave uncommitted files and manifests behind as well. The default run (CI) kills
``ingest``, ``sequences`` and ``score`` once between two of their commits, and ``sequences`` once with a
real kill -9 (``encode`` and ``train`` only in the full run, for CI time);
``LONGTAIL_FAULTS_FULL=1`` kills at every point, and three stages with kill -9 (the figures in
docs/reliability.md); ``LONGTAIL_FAULT_REPORT=path`` appends each case as JSON.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from longtail.core import faults
from longtail.core.tables import Warehouse

from tests.faults import stages

pytestmark = pytest.mark.spark
FULL = os.environ.get("LONGTAIL_FAULTS_FULL") == "1"
ROOT = Path(__file__).resolve().parents[2]
FAST_STAGES = ["ingest", "sequences", "score"]
SLOW_STAGES = ["encode", "train"]


def _report(**case) -> None:
    target = os.environ.get("LONGTAIL_FAULT_REPORT")
    if target:
        with open(target, "a") as out:
            out.write(json.dumps({"suite": "kill", **case}) + "\n")


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    """Raw files, and a template warehouse per stage holding what the stage needs."""
    base = tmp_path_factory.mktemp("kills")
    raw = base / "raw"
    stages.write_raw(raw)
    templates = {"ingest": base / "empty"}
    templates["ingest"].mkdir()
    for stage in ("ingest", "sequences"):
        after = base / f"after-{stage}"
        shutil.copytree(templates[stage], after)
        stages.run_stage(stage, Warehouse(spark, str(after)), raw)
        nxt = {"ingest": "sequences", "sequences": "score"}[stage]
        templates[nxt] = after
    templates["encode"] = templates["train"] = templates["score"]
    return {"base": base, "raw": raw, "templates": templates, "references": {}}


def _fresh(world, stage: str, name: str) -> str:
    root = world["base"] / f"{stage}-{name}".replace(":", "_")
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(world["templates"][stage], root)
    return str(root)


def _reference(spark, world, stage: str):
    """(snapshot, points) of an uninterrupted run of ``stage``."""
    if stage not in world["references"]:
        root = _fresh(world, stage, "reference")
        seen: list[str] = []
        faults.install(lambda name: seen.append(name) if name.startswith(("commit:", "committed:")) else None)
        try:
            stages.run_stage(stage, Warehouse(spark, root), world["raw"])
        finally:
            faults.install(None)
        world["references"][stage] = (stages.snapshot(root), seen)
    return world["references"][stage]


def _chosen(points: list[str]) -> list[str]:
    if FULL:
        return points
    return [points[len(points) // 2]]  # between two commits


def _kill_then_rerun(spark, world, stage: str, point: str) -> dict:
    reference, _ = _reference(spark, world, stage)
    root = _fresh(world, stage, point)

    def kill(name: str) -> None:
        if name == point:
            raise faults.Killed(name)

    faults.install(kill)
    try:
        with pytest.raises(faults.Killed):
            stages.run_stage(stage, Warehouse(spark, root), world["raw"])
    finally:
        faults.install(None)
    unreadable = stages.unreadable(root, spark)
    stages.run_stage(stage, Warehouse(spark, root), world["raw"])
    after = stages.snapshot(root)
    differing = sorted(t for t in set(after) | set(reference) if after.get(t) != reference.get(t))
    case = {"stage": stage, "point": point, "kind": "in-process", "unreadable": unreadable, "not_converged": differing}
    _report(**case)
    return case


def _cases(stage_names):
    # Resolved at run time from the recorded points: index into first/middle/last (or all).
    return [(s, i) for s in stage_names for i in range(12 if FULL else 1)]


def _run_case(spark, world, stage, index):
    _, points = _reference(spark, world, stage)
    chosen = _chosen(points)
    if index >= len(chosen):
        pytest.skip(f"{stage} has {len(chosen)} kill points")
    case = _kill_then_rerun(spark, world, stage, chosen[index])
    assert case["unreadable"] == [], case
    assert case["not_converged"] == [], case


@pytest.mark.slow
@pytest.mark.parametrize("stage, index", _cases(FAST_STAGES + (SLOW_STAGES if FULL else [])))
def test_killed_stage_leaves_readable_tables_and_its_rerun_converges(spark, world, stage, index):
    _run_case(spark, world, stage, index)


# --------------------------------------------------------------------------- real kill -9

_CHILD = """
import sys
from pathlib import Path
from longtail.core.config import SparkConfig
from longtail.core.session import build_spark
from longtail.core.tables import Warehouse
from tests.faults import stages
spark = build_spark(SparkConfig(master="local[1]", app_name="kill-9", driver_memory="1g", shuffle_partitions=2))
stages.run_stage(sys.argv[1], Warehouse(spark, sys.argv[2]), Path(sys.argv[3]))
print("finished without being killed")
"""


KILL_9 = [
    ("sequences", "commit:user_sequences"),  # id maps grown, outputs written but not committed
    ("ingest", "committed:items"),  # between its commits: interactions and items new, users old
    ("score", "committed:recommendations"),  # the partition replaced, its run row not appended
]


@pytest.mark.slow
@pytest.mark.parametrize("stage, point", KILL_9 if FULL else KILL_9[:1])
def test_kill_9_between_commits_then_rerun_converges(spark, world, stage, point):
    reference, _ = _reference(spark, world, stage)
    root = _fresh(world, stage, f"kill9-{point}")
    env = {**os.environ, faults.ENV: point, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.run([sys.executable, "-c", _CHILD, stage, root, str(world["raw"])], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == -9, child.stderr[-3000:]
    unreadable = stages.unreadable(root, spark)
    stages.run_stage(stage, Warehouse(spark, root), world["raw"])
    after = stages.snapshot(root)
    differing = sorted(t for t in set(after) | set(reference) if after.get(t) != reference.get(t))
    _report(stage=stage, point=point, kind="kill -9", unreadable=unreadable, not_converged=differing)
    assert unreadable == [] and differing == []
