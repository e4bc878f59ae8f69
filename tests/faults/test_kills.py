"""Jobs killed at their commits: every table stays readable, and rerunning the same command
converges to the tables an uninterrupted run writes (ids included).

Kill points are the commit points a stage passes (``commit:<table>``: its files written, the
commit not made; ``committed:<table>``: the commit made, nothing after it), recorded from an
uninterrupted run. The stages run once, in pipeline order, each on a copy of what the ones before
it wrote (:data:`stages.PIPELINE`): each output is the next stage's input and the reference its
own kill cases converge to.

A kill is a real ``kill -9``: a child process runs the stage as a Spark Connect client of the
suite's own JVM (no JVM start of its own) and SIGKILLs itself at the point, with no rollback,
``finally`` or cleanup of any kind; it leaves uncommitted files, manifests and cached data behind.
The default run (CI) kills every stage that writes tables once, between two of its commits where
it has two. ``LONGTAIL_FAULTS_FULL=1`` kills every stage at every point, and also runs the
in-process kills (:class:`longtail.core.faults.Killed` raised at every point: no rollback, but
``finally`` blocks run) (the figures in docs/reliability.md); ``LONGTAIL_FAULT_REPORT=path``
appends each case as JSON.
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

pytestmark = [pytest.mark.spark, pytest.mark.slow]
FULL = os.environ.get("LONGTAIL_FAULTS_FULL") == "1"
ROOT = Path(__file__).resolve().parents[2]
#: Cases per stage parametrised up front; a stage with fewer points skips the rest (full run only).
MAX_POINTS = 12


def _report(**case) -> None:
    target = os.environ.get("LONGTAIL_FAULT_REPORT")
    if target:
        with open(target, "a") as out:
            out.write(json.dumps({"suite": "kill", **case}) + "\n")


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    """Raw files, and per stage: the warehouse it runs on (``before``), the snapshot of an
    uninterrupted run (``reference``) and the commit points it passed (``points``)."""
    base = tmp_path_factory.mktemp("kills")
    raw = base / "raw"
    stages.write_raw(raw)
    before = base / "empty"
    before.mkdir()
    world = {"base": base, "raw": raw, "stages": {}}
    for stage in stages.PIPELINE:
        after = base / f"after-{stage}"
        shutil.copytree(before, after)
        seen: list[str] = []
        faults.install(lambda name: seen.append(name) if name.startswith(("commit:", "committed:")) else None)
        try:
            stages.run_stage(stage, Warehouse(spark, str(after)), raw)
        finally:
            faults.install(None)
        world["stages"][stage] = {"before": before, "reference": stages.snapshot(str(after)), "points": seen}
        before = after
    return world


def _fresh(world, stage: str, name: str) -> str:
    root = world["base"] / f"{stage}-{name}".replace(":", "_")
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(world["stages"][stage]["before"], root)
    return str(root)


def _points(world, stage: str) -> list[str]:
    """Every point in the full run; else one: between two commits where the stage has two."""
    points = world["stages"][stage]["points"]
    return points if FULL else points[(len(points) - 1) // 2:][:1]


def _point(world, stage: str, index: int) -> str:
    points = _points(world, stage)
    if index >= len(points):
        pytest.skip(f"{stage} has {len(points)} kill points")
    return points[index]


def _rerun_and_compare(spark, world, stage: str, root: str, point: str, kind: str) -> None:
    """Check the killed warehouse is readable, rerun the stage, compare with the reference."""
    unreadable = stages.unreadable(root, spark)
    stages.run_stage(stage, Warehouse(spark, root), world["raw"])
    after, reference = stages.snapshot(root), world["stages"][stage]["reference"]
    differing = sorted(t for t in set(after) | set(reference) if after.get(t) != reference.get(t))
    _report(stage=stage, point=point, kind=kind, unreadable=unreadable, not_converged=differing)
    assert unreadable == [], unreadable
    assert differing == [], differing


_CHILD = """
import sys
from pathlib import Path
from longtail.core.config import SparkConfig
from longtail.core.session import build_spark
from longtail.core.tables import Warehouse
from tests.faults import stages
spark = build_spark(SparkConfig(remote=sys.argv[4]))
stages.run_stage(sys.argv[1], Warehouse(spark, sys.argv[2]), Path(sys.argv[3]))
print("finished without being killed")
"""


@pytest.mark.parametrize("stage, index", [(s, i) for s in stages.PIPELINE for i in range(MAX_POINTS if FULL else 1)])
def test_kill_9_at_a_commit_then_rerun_converges(spark, connect_server, world, stage, index):
    point = _point(world, stage, index)
    root = _fresh(world, stage, f"kill9-{point}")
    url, connect_env = connect_server
    env = {**os.environ, **connect_env, faults.ENV: point, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.run([sys.executable, "-c", _CHILD, stage, root, str(world["raw"]), url], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == -9, f"{point} not reached or the child failed:\n{child.stderr[-3000:]}"
    _rerun_and_compare(spark, world, stage, root, point, "kill -9")


if FULL:  # kill -9 covers every stage in the default run; these add every point's in-process kill

    @pytest.mark.parametrize("stage, index", [(s, i) for s in stages.PIPELINE for i in range(MAX_POINTS)])
    def test_in_process_kill_at_a_commit_then_rerun_converges(spark, world, stage, index):
        point = _point(world, stage, index)
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
        _rerun_and_compare(spark, world, stage, root, point, "in-process")


def test_similar_items_failing_mid_stage_changes_no_table_and_reruns_are_idempotent(spark, world):
    """A failure inside ``similar-items`` with its rows written but not committed (an error, so the
    job's own cleanup runs) leaves every table as it was; two reruns both give the uninterrupted
    run's tables (the ``run_date`` partition replaced, never appended to)."""
    stage = "similar_items"
    root = _fresh(world, stage, "mid-stage-error")
    before = stages.snapshot(root)

    def fail(name: str) -> None:
        if name == f"commit:{stage}":
            raise RuntimeError("injected failure in the middle of similar-items")

    faults.install(fail)
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            stages.run_stage(stage, Warehouse(spark, root), world["raw"])
    finally:
        faults.install(None)
    assert stages.snapshot(root) == before
    assert stages.unreadable(root, spark) == []
    for _ in range(2):
        stages.run_stage(stage, Warehouse(spark, root), world["raw"])
        assert stages.snapshot(root) == world["stages"][stage]["reference"]
