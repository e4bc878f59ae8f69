"""Fault injection for the fault suite (``tests/faults/``): named points where a test kills the job.

Production code calls :func:`point` at the moments that matter for recovery (just before and
just after each Delta commit, before a side file is renamed into place). Nothing happens unless
a test asked for it:

- ``LONGTAIL_FAULT=<name>[@<n>]`` in the environment of a process (set only by the fault suite):
  the ``n``-th time (default 1) the process passes point ``<name>`` it kills itself with
  SIGKILL, as ``kill -9`` would, with no cleanup, rollback or ``finally`` of any kind.
- :func:`install`: an in-process hook, called with each point's name (tests that simulate a kill
  by raising :class:`Killed`, which :meth:`Warehouse.job` lets through without rolling back).

Point names: ``commit:<table>`` (files written, commit not made), ``committed:<table>`` (commit
made, the job not told), ``file:<name>`` (a side file written, not yet renamed into place).
"""
from __future__ import annotations

import os
import signal
from typing import Callable

ENV = "LONGTAIL_FAULT"

_hook: Callable[[str], None] | None = None
_seen: dict[str, int] = {}


class Killed(BaseException):
    """A simulated kill -9 (in-process tests): no rollback, no cleanup by the job."""


def install(hook: Callable[[str], None] | None) -> None:
    """Call ``hook(name)`` at every point (None removes it)."""
    global _hook
    _hook = hook
    _seen.clear()


def point(name: str) -> None:
    """A place where a test may kill the job (see the module doc)."""
    if _hook is not None:
        _hook(name)
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    target, _, nth = wanted.partition("@")
    if target != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
