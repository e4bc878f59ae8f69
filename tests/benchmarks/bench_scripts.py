"""Loading benchmarks/ scripts in their tests (a plain module: ``conftest`` is not importable by name
once several folders have one)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name: str):
    """A benchmarks/ script as a module under a private name (benchmarks/ is a folder of scripts, not
    a package); its sibling imports (``proctree``) resolve from the end of ``sys.path``."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.append(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
