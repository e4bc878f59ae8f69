"""``longtail vacuum``: delete what no table version or kept model needs, older than the retention.

What goes (``vacuum`` section of the config: ``retention_hours``, ``keep_models``):

- **table files** no current version references: files a commit removed more than the
  retention ago, and files never committed at all (a killed or refused write's) older than the
  retention (delta-rs ``VACUUM FULL``; native Delta's ``VACUUM``). Files the current version of
  every table reads are never touched, nor files removed within the retention (time travel, a
  job's rollback and writes still in progress rely on them).
- **scratch**: entries of ``_tmp/`` (neighbor blocks, staged commit manifests) and ``_train/``
  (training run folders) whose newest file is older than the retention.
- **models**: ``_models/<model>/*.tmp-*`` folders (a killed save) and version folders that are
  not among the latest ``keep_models`` registered versions of their model (by ``trained_at`` in
  the ``models`` table), once older than the retention. A version folder no ``models`` row names
  (a killed ``train``) counts as not kept. The latest ``keep_models`` versions always stay.

Reports (``_reports/``) and PCA maps (``_pca/``) stay. ``dry_run`` lists without deleting.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from longtail.core import schemas
from longtail.core.config import VacuumConfig
from longtail.core.files import filesystem, remove_tree

SCRATCH = ("_tmp", "_train")
MODELS = "_models"


@dataclass
class VacuumReport:
    """What ``vacuum`` deleted (or, with ``dry_run``, would delete)."""

    dry_run: bool
    retention_hours: float
    #: table -> files deleted.
    table_files: dict[str, int] = field(default_factory=dict)
    scratch: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        files = sum(self.table_files.values())
        busy = ", ".join(f"{t} {n}" for t, n in sorted(self.table_files.items()) if n)
        return (
            f"vacuum (retention {self.retention_hours:g} h): {verb} {files} table files"
            f"{f' ({busy})' if busy else ''}, {len(self.scratch)} scratch folders, "
            f"{len(self.models)} model folders"
        )


def run_vacuum(wh, cfg: VacuumConfig, dry_run: bool = False) -> VacuumReport:
    """Vacuum every table, the scratch folders and old model versions of the warehouse ``wh``."""
    report = VacuumReport(dry_run, cfg.retention_hours)
    cutoff = time.time() - cfg.retention_hours * 3600
    for name in _entries(wh.root):
        if wh.exists(name):
            report.table_files[name] = _vacuum_table(wh, name, cfg.retention_hours, dry_run)
    for folder in SCRATCH:
        for entry in _entries(f"{wh.root}/{folder}"):
            path = f"{wh.root}/{folder}/{entry}"
            if _newest(path) < cutoff:
                report.scratch.append(path)
    report.models = _old_models(wh, cfg.keep_models, cutoff)
    if not dry_run:
        for path in [*report.scratch, *report.models]:
            _remove(path)
    return report


def _vacuum_table(wh, name: str, hours: float, dry_run: bool) -> int:
    path = wh.path(name)
    if wh.engine == "native":
        from delta.tables import DeltaTable as NativeTable

        if dry_run:
            return 0
        NativeTable.forPath(wh.spark, path).vacuum(float(hours))
        return 0
    from deltalake import DeltaTable

    removed = DeltaTable(path).vacuum(
        retention_hours=math.ceil(hours), dry_run=dry_run, enforce_retention_duration=False, full=True
    )
    return len(removed)


def _old_models(wh, keep: int, cutoff: float) -> list[str]:
    """Model folders to delete (see the module doc)."""
    root = f"{wh.root}/{MODELS}"
    registered: dict[str, list[str]] = {}
    if wh.exists(schemas.MODELS):
        rows = wh.read(schemas.MODELS).select("model", "model_version", "trained_at").collect()
        latest: dict[tuple[str, str], object] = {}
        for r in rows:
            key = (r["model"], r["model_version"])
            latest[key] = max(latest.get(key, r["trained_at"]), r["trained_at"])
        for (model, version), _ in sorted(latest.items(), key=lambda kv: kv[1], reverse=True):
            registered.setdefault(model, []).append(version)
    doomed = []
    for model in _entries(root):
        kept = set(registered.get(model, [])[:keep])
        for entry in _entries(f"{root}/{model}"):
            path = f"{root}/{model}/{entry}"
            if entry in kept or _newest(path) >= cutoff:
                continue
            doomed.append(path)
    return doomed


def _entries(folder: str) -> list[str]:
    from pyarrow import fs as pafs

    fs, base = filesystem(folder)
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    return sorted(i.base_name for i in infos)


def _newest(path: str) -> float:
    """Newest modification time (seconds) of a file, or of anything in a folder."""
    from pyarrow import fs as pafs

    fs, base = filesystem(path)
    info = fs.get_file_info(base)
    times = [info.mtime.timestamp()] if info.mtime is not None else []
    if info.type == pafs.FileType.Directory:
        times += [i.mtime.timestamp() for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))
                  if i.mtime is not None]
    return max(times, default=0.0)


def _remove(path: str) -> None:
    from pyarrow import fs as pafs

    fs, base = filesystem(path)
    if fs.get_file_info(base).type == pafs.FileType.Directory:
        remove_tree(path)
    else:
        fs.delete_file(base)
