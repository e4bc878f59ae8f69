"""Lane: the package as users install it. ``pip install .`` builds a wheel that carries the embedded
config and works outside the checkout; its dependencies leave torch to the runtime (a range, so
Databricks ML and CUDA images keep theirs) and put optional parts in extras."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

from deploy.lanes import DEMO_TABLES, check_demo_tables, demo_settings, environment, run

pytestmark = pytest.mark.slow


def test_wheel_carries_the_config_and_declares_extras(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "longtail/conf/local.yaml" in names and "longtail/conf/log4j2.properties" in names
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    torch = [r for r in requires if r.startswith("torch")]
    assert torch and "==" not in torch[0] and "extra" not in torch[0], torch
    core = [r for r in requires if "extra ==" not in r]
    assert not any(r.startswith(("matplotlib", "delta-spark", "mlflow", "faiss")) for r in core), core
    extras = {line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Provides-Extra:")}
    assert {"delta", "connect", "mlflow", "ann", "notebooks", "test"} <= extras


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """A virtual environment with the wheel installed (dependencies from this interpreter's site-packages)."""
    where = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(where)], check=True, timeout=300)
    python = where / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300, env=installed_environment())
    return where


def installed_environment() -> dict[str, str]:
    """The lanes' environment without ``PYTHONPATH``: a checkout on it (``PYTHONPATH=lib``, a common
    development setup) would shadow the installed wheel, and these tests are about the wheel."""
    env = environment()
    env.pop("PYTHONPATH", None)
    return env


def test_installed_wheel_loads_its_embedded_config_outside_the_checkout(venv, tmp_path):
    python = venv / "bin" / "python"
    where = run([str(python), "-c", "import json, longtail, longtail.core.config as c; "
                 "print(json.dumps([longtail.__file__, str(c.DEFAULT_CONF), c.DEFAULT_CONF.is_file(), "
                 "c.load_config(None) == c.Config()]))"],
                cwd=tmp_path, env=installed_environment())
    module, conf, conf_exists, same = json.loads(where.stdout)
    assert module.startswith(str(venv)) and conf.startswith(str(venv)) and conf_exists and same  # not the checkout
    assert "demo" in run([str(venv / "bin" / "longtail"), "--help"], cwd=tmp_path, env=installed_environment()).stdout


@pytest.mark.deploy
def test_installed_wheel_runs_the_demo_outside_the_checkout(venv, tmp_path):
    warehouse = tmp_path / "warehouse"
    done = run([str(venv / "bin" / "longtail"), *demo_settings(), "--set", "train.model=sasrec",
                "--set", "spark.driver_memory=1g", "demo"], cwd=tmp_path, env=installed_environment())
    assert "longtail pipeline summary" in done.stdout
    # ./warehouse, the embedded default, in the working folder; a plain backbone reads no similar users,
    # so neither user texts nor neighbours are computed.
    check_demo_tables(str(warehouse), tables=tuple(t for t in DEMO_TABLES if t not in ("similar_users", "user_embeddings")))
