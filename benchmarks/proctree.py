"""The process tree of a benchmark, read from /proc (Linux): descendants, resident memory, command
line and CPU time. Shared by the scripts that measure Spark's JVM and Python workers beside the
driver (``end_to_end.py``, ``scale.py``, ``encode.py``); imported as a sibling module when a script
runs as ``python benchmarks/NAME.py``.
"""
from __future__ import annotations

import os


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (field 0 is the state)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, itself excluded."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            children.setdefault(int(_stat_fields(entry)[1]), []).append(int(entry))
        except OSError:
            continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def rss(pid: int) -> int:
    """Resident bytes of a process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0


def cmdline(pid: int) -> str:
    """The command line of a process ("" when it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_spark_worker(command: str) -> bool:
    """Whether a command line is a PySpark Python worker (or its daemon)."""
    return "pyspark.daemon" in command or "pyspark.worker" in command


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 when it is gone)."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
