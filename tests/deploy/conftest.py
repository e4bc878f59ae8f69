"""The deployment lanes' shared fixtures: a demo on Spark Connect over two executors, the built wheel."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from deploy.lanes import REPO, cluster_demo


@pytest.fixture(scope="session")
def connect_cluster_warehouse(tmp_path_factory):
    """A warehouse `longtail demo` wrote on Spark Connect over two executors (cluster training)."""
    warehouse = str(tmp_path_factory.mktemp("connect-cluster") / "warehouse")
    return warehouse, cluster_demo(warehouse, "spark.remote")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory):
    """``longtail-*.whl`` built from a copy of the project's sources (the checkout stays clean).

    No build isolation: the tests run without network, so the installed setuptools builds it.
    """
    src = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "lib", src / "lib", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), str(src)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    (built,) = out.glob("longtail-*.whl")
    return built
