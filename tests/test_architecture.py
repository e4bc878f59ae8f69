"""The layering docs/architecture.md promises, checked on the source (no imports run)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lib" / "longtail"
STAGES = ("ingest", "sequences", "encode", "neighbors", "train", "evaluate", "score", "similar_items")


def _imports(path: Path) -> set[str]:
    """Every module a file imports, top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _files(*parts: str) -> list[Path]:
    root = PACKAGE.joinpath(*parts)
    return sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]


def _stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["longtail", "stages"] and parts[2] in STAGES else None


@pytest.mark.parametrize("stage", STAGES)
def test_stages_never_import_other_stages(stage):
    for path in _files("stages", stage):
        others = {_stage_of(m) for m in _imports(path)} - {None, stage}
        assert not others, f"{path.relative_to(PACKAGE)} imports stage(s) {sorted(others)}"


@pytest.mark.parametrize("library", ["core", "models", "ranking", "encoders", "inference"])
def test_core_and_libraries_never_import_stages_or_entry_points(library):
    for path in _files(library):
        bad = {m for m in _imports(path) if m.startswith(("longtail.stages", "longtail.cli", "longtail.pipeline"))}
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"


def test_core_stands_alone():
    for path in _files("core"):
        outside = {m for m in _imports(path) if m.startswith("longtail.") and not m.startswith("longtail.core")}
        assert not outside, f"{path.relative_to(PACKAGE)} imports {sorted(outside)}"


@pytest.mark.parametrize("library", ["models", "ranking"])
def test_pure_libraries_do_not_need_spark(library):
    for path in _files(library):
        spark = {m for m in _imports(path) if m.startswith("pyspark")}
        assert not spark, f"{path.relative_to(PACKAGE)} imports {sorted(spark)}"


@pytest.mark.parametrize("part", ["stages", "inference", "encoders", "models", "ranking"])
def test_no_spark_context_rdds_or_broadcasts_outside_core(part):
    # Spark Connect (Databricks serverless and shared clusters) has none of them; core/session.py
    # and core/tables.py use the SparkContext only where it exists.
    import re

    # Not F.broadcast (a join hint, fine on Connect) nor torch.distributed's broadcast.
    banned = re.compile(r"\.sparkContext\b|\.rdd\b|\b(?:sc|sparkContext|spark)\.broadcast\(|\._(?:jvm|jsc|jdf)\b")
    for path in _files(part):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            assert not banned.search(code), f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
