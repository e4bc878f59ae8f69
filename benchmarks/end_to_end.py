"""A data engineer's first real run, timed: ``longtail ingest`` then ``longtail run`` on a catalogue.

Runs the two commands exactly as a user would (subprocesses of the installed ``longtail``
module, the default config plus any ``--set``), and prints one line per stage: seconds, rows
per second, and the peak resident memory of the driver (the Python process and its JVM) and
of the largest Python worker seen during that stage, then the whole.

    python benchmarks/end_to_end.py --data DIR [--warehouse W] [--set KEY=VALUE ...]

``DIR`` holds ``interactions.csv(.gz)`` and ``items.jsonl(.gz)`` in the ``files`` format (the
Amazon Beauty copy in ``../shared/data/amazon_beauty_2014`` is). Absolute times depend on the
machine; the stage split is what the table in ``benchmarks/README.md`` reports.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from proctree import cmdline, descendants, is_spark_worker, rss

STAGE_LINE = re.compile(r"^\[(?:\d+/\d+|0)\] (?P<stage>[^:]+): (?P<rest>.*)$")


def _rss_and_kind(pid: int) -> tuple[int, str]:
    """Resident bytes of a process, and ``worker`` for PySpark Python workers, else ``driver``."""
    command = cmdline(pid)
    if not command:
        return 0, "gone"
    return rss(pid), "worker" if is_spark_worker(command) else "driver"


class MemorySampler(threading.Thread):
    """Polls the process tree of one command; peak driver and worker RSS per stage label."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.stage = pid, every, "start-up"
        self.peaks: dict[str, dict[str, int]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            driver, worker = 0, 0
            for p in [self.pid, *descendants(self.pid)]:
                rss, kind = _rss_and_kind(p)
                if kind == "worker":
                    worker = max(worker, rss)
                elif kind == "driver":
                    driver += rss
            peak = self.peaks.setdefault(self.stage, {"driver": 0, "worker": 0})
            peak["driver"], peak["worker"] = max(peak["driver"], driver), max(peak["worker"], worker)
            self.done.wait(self.every)


def run_command(args: list[str], label: str) -> list[dict]:
    """Run one ``longtail`` command; returns its stages (name, seconds, summary line, memory peaks)."""
    proc = subprocess.Popen([sys.executable, "-m", "longtail.cli", *args], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    sampler = MemorySampler(proc.pid)
    sampler.stage = label
    sampler.start()
    stages, started = [], time.perf_counter()
    for line in proc.stderr:
        match = STAGE_LINE.match(line.strip())
        if match and match["rest"] == "running":
            sampler.stage = match["stage"]
        elif match:
            seconds = re.search(r"\(([\d.]+)s\)$", match["rest"])
            stages.append({"stage": match["stage"], "seconds": float(seconds[1]) if seconds else None,
                           "line": match["rest"]})
    out = proc.stdout.read()
    proc.wait()
    sampler.done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"longtail {' '.join(args)} failed with status {proc.returncode}:\n{out[-2000:]}")
    if not stages:  # a single-stage command prints no stage lines: the command is the stage
        stages = [{"stage": label, "seconds": time.perf_counter() - started, "line": out.strip().splitlines()[0]}]
    for s in stages:
        s["memory"] = sampler.peaks.get(s["stage"], {"driver": 0, "worker": 0})
    return stages


ROWS = {  # what "rows" means per stage, for rows/s
    "ingest": "interactions", "sequences": "interactions", "encode": "items+users", "neighbors": "users",
    "train": "users", "evaluate": "users", "evaluate popularity": "users", "score": "users",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="folder with interactions.csv(.gz) and items.jsonl(.gz)")
    parser.add_argument("--warehouse", help="warehouse folder (default: a temporary one, removed after)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    interactions = next(iter(sorted(args.data.glob("interactions.*"))), None)
    items = next(iter(sorted(args.data.glob("items.*"))), None)
    if interactions is None:
        raise SystemExit(f"{args.data}: no interactions.* file")
    tmp = None if args.warehouse else tempfile.TemporaryDirectory(prefix="longtail-e2e-")
    warehouse = args.warehouse or os.path.join(tmp.name, "warehouse")
    common = ["--set", f"warehouse={warehouse}", *[a for o in args.overrides for a in ("--set", o)]]
    ingest = ["ingest", "--format", "files", "--interactions", str(interactions)] + (["--items", str(items)] if items else [])
    started = time.perf_counter()
    stages = run_command([*common, *ingest], "ingest") + run_command([*common, "run"], "run")
    total = time.perf_counter() - started
    counts = _counts(warehouse)
    print(f"{'stage':<22}{'seconds':>9}{'rows/s':>11}{'driver MiB':>12}{'worker MiB':>12}  summary")
    for s in stages:
        parts = ROWS.get(s["stage"], "").split("+")
        if s["stage"] == "encode" and "users not encoded" in s["line"]:
            parts = ["items"]  # `run` skips the user texts when the model reads no similar users
        rows = sum(counts.get(part, 0) for part in parts)
        rate = f"{rows / s['seconds']:,.0f}" if rows and s["seconds"] else "-"
        mem = s["memory"]
        print(f"{s['stage']:<22}{s['seconds'] or 0:>9.1f}{rate:>11}{mem['driver'] / 2**20:>12,.0f}"
              f"{mem['worker'] / 2**20:>12,.0f}  {s['line'][:90]}")
    print(f"{'whole (with start-ups)':<22}{total:>9.1f}")
    if tmp is not None:
        tmp.cleanup()


def _counts(warehouse: str) -> dict[str, int]:
    """Rows of the input tables, read with delta-rs (no Spark session needed)."""
    from deltalake import DeltaTable

    out = {}
    for table, key in (("interactions", "interactions"), ("items", "items"), ("user_sequences", "users")):
        try:
            out[key] = sum(a.num_rows for a in DeltaTable(f"{warehouse}/{table}").to_pyarrow_dataset().to_batches())
        except Exception:  # noqa: BLE001 - a stage that did not run has no table: no rate
            out[key] = 0
    return out


if __name__ == "__main__":
    main()
