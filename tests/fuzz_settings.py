"""Settings of the generated-input tests (hypothesis; a plain module like ``suite_settings``):
a bounded, derandomized number of cases in the default run, 15x as many with
``LONGTAIL_FAULTS_FULL=1`` (as ``tests/faults/``), no example database, and Hypothesis' own
files (caches, patches of failing examples) outside the checkout."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

FULL = os.environ.get("LONGTAIL_FAULTS_FULL") == "1"
#: How many more cases the full run generates.
FULL_FACTOR = 15

if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "longtail-hypothesis")


def bounded(default: int) -> settings:
    """``default`` generated cases, derandomized so that CI sees the same ones every run;
    :data:`FULL_FACTOR` times as many, freshly drawn, with the full flag."""
    return settings(
        max_examples=default * FULL_FACTOR if FULL else default,
        deadline=None,
        derandomize=not FULL,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
