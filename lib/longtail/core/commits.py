"""Delta commits that keep Delta's concurrency contract on the delta-rs engine.

Every write is an optimistic transaction: it names the table version its job *read* and what it
read there (``reads``: partition predicates, ``{}`` for the whole table, none for a blind
append). Before it commits, the commits other writers made since that version are checked for
the conflicts Delta defines (``docs/reliability.md``):

- **concurrent append / delete** (Delta's ``ConcurrentAppendException`` /
  ``ConcurrentDeleteReadException``): another commit added or removed data in a partition this
  transaction read (an overwrite reads what it replaces; a job that read the table reads all
  of it);
- **metadata or protocol changed** (``MetadataChangedException``): another commit changed the
  schema, partitioning or protocol;
- **concurrent delete-delete** is a case of the first: what an overwrite removes, it has read.

A conflict fails the write with :class:`~longtail.core.errors.ConflictError` naming the commit;
nothing is committed. Without one the write is *retried* against the newer version, which is
always safe for blind appends and for writes to partitions nobody else touched (two ``score``
runs of different ``run_date``\\ s, 4 writers appending to one table).

How: delta-rs makes the commit itself. Blind appends use delta-rs's own conflict checker and
retries against the snapshot of the version read (``CommitProperties.max_commit_retries``).
A transaction that read something commits against the latest snapshot with
``max_commit_retries=0``, i.e. at exactly the next version or not at all (put-if-absent), after
checking every commit up to that snapshot; losing the race re-checks the new commits. The
checks read the commit files in ``_delta_log`` directly (delta-rs's Python API has no read
predicates to give its checker).

Every commit carries ``longtail.job`` / ``longtail.write`` / ``longtail.table`` in its
``commitInfo`` (and ``readVersion``, ``isBlindAppend``): a job tells its own commits from others'
(a job never conflicts with itself) and :func:`revert` undoes exactly the commits of a job.
No Spark here: plain processes can commit files written by anyone (the fault suite does).
"""
from __future__ import annotations

import json
import logging
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from longtail.core.delta_rs import partition_string
from longtail.core.errors import ConflictError
from longtail.core.files import filesystem

log = logging.getLogger(__name__)

JOB_KEY = "longtail.job"
WRITE_KEY = "longtail.write"
TABLE_KEY = "longtail.table"
#: Lost races before a write gives up (each one means another writer committed in between).
MAX_ATTEMPTS = 200
#: delta-rs's own retries for a blind append (each re-checks the winning commit).
BLIND_RETRIES = 200
_LOST_RACE = re.compile(r"Failed to commit transaction: \d+\s*$")
_DELTA_RS_CONFLICT = ("a concurrent transaction", "Metadata changed", "Protocol changed", "Concurrent transaction")


@dataclass(frozen=True)
class Intent:
    """One write to commit (plain values: built on the driver, or in a test's own process).

    Attributes:
        table, path: name (for messages) and folder or URI of the table.
        adds: ``deltalake.transaction.AddAction`` fields of the files written.
        mode: ``append`` or ``overwrite``.
        schema_json: the table's Delta/Spark schema JSON after the write.
        partition_by: partition columns after the write.
        replace: ``{column: value}`` of the one partition an overwrite replaces (empty: all).
        read_version: the version the job read (None: the table did not exist for it).
        reads: predicates of what the job read, ``{}`` for the whole table; empty for a blind append.
        job, write: ids tagged onto the commit.
        schema_mode: ``merge`` (add columns first), ``overwrite`` (replace schema/partitioning) or None.
    """

    table: str
    path: str
    adds: list[dict[str, Any]]
    mode: str
    schema_json: str
    partition_by: list[str]
    replace: dict[str, str | None] = field(default_factory=dict)
    read_version: int | None = None
    reads: list[dict[str, str | None]] = field(default_factory=list)
    job: str = ""
    write: str = ""
    schema_mode: str | None = None

    @property
    def blind(self) -> bool:
        return self.mode == "append" and not self.reads and self.schema_mode is None

    def all_reads(self) -> list[dict[str, str | None]]:
        """What the transaction read: its ``reads`` plus, for an overwrite, what it replaces."""
        if self.mode == "overwrite":
            return [*self.reads, dict(self.replace)]
        return list(self.reads)


# --------------------------------------------------------------------------- the log


def log_entry(path: str, version: int) -> list[dict[str, Any]]:
    """The actions of commit ``version`` (empty if its file is gone, e.g. cleaned up)."""
    fs, base = filesystem(path)
    try:
        with fs.open_input_stream(f"{base}/_delta_log/{version:020d}.json") as handle:
            text = handle.readall().decode("utf-8")
    except (FileNotFoundError, OSError):
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def commit_info(actions: list[dict[str, Any]]) -> dict[str, Any]:
    for action in actions:
        if "commitInfo" in action:
            return action["commitInfo"]
    return {}


def latest_version(path: str) -> int | None:
    """The table's latest version, None when it is not a Delta table."""
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(path):
        return None
    return DeltaTable(path).version()


def versions_of(path: str, job: str, since: int = -1) -> list[int]:
    """Versions after ``since`` committed by ``job``."""
    latest = latest_version(path)
    if latest is None:
        return []
    return [v for v in range(since + 1, latest + 1) if commit_info(log_entry(path, v)).get(JOB_KEY) == job]


def _matches(values: dict[str, Any], predicate: dict[str, str | None]) -> bool:
    return all(values.get(column) == value for column, value in predicate.items())


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{c}={v}" for c, v in values.items()) or "the table"


def find_conflict(path: str, since: int, upto: int, job: str, reads: list[dict[str, str | None]]) -> str | None:
    """The first commit in ``(since, upto]`` by another job that conflicts with a transaction
    that read ``reads`` at ``since``, as a sentence; None when there is none."""
    for version in range(since + 1, upto + 1):
        actions = log_entry(path, version)
        info = commit_info(actions)
        if info.get(JOB_KEY) == job and job:
            continue
        who = info.get("operation", "a commit")
        if info.get(JOB_KEY):
            who += f" by longtail {info.get(TABLE_KEY, '')} job {info[JOB_KEY]}".replace("  ", " ")
        for action in actions:
            if "metaData" in action or "protocol" in action:
                return f"commit {version} ({who}) changed the table's schema, partitioning or protocol"
            change = action.get("add") or action.get("remove")
            if change is None or not change.get("dataChange", True):
                continue
            values = change.get("partitionValues") or {}
            for predicate in reads:
                if _matches(values, predicate):
                    verb = "added" if "add" in action else "removed"
                    return (f"commit {version} ({who}) {verb} data in {_describe(values) if predicate else 'the table'}, "
                            f"which this write read at version {since}")
    return None


# --------------------------------------------------------------------------- committing


def commit(intent: Intent, before: Callable[[], None] | None = None) -> int:
    """Commit ``intent``'s files in one Delta commit; return the version it got.

    Args:
        intent: the write.
        before: called just before each commit attempt (fault injection in tests).

    Raises:
        ConflictError: another writer's commit conflicts (see the module doc), or the table
            was deleted or created by someone else in between; nothing is committed.
    """
    from deltalake import DeltaTable

    before = before or (lambda: None)
    if not DeltaTable.is_deltatable(intent.path):
        if intent.read_version is not None:
            raise ConflictError(f"table {intent.table}: deleted by another writer since this job read version "
                                f"{intent.read_version}; nothing committed, rerun the command")
        before()
        if _create(intent):
            return 0
        # Created by someone else meanwhile: a write to a table that now has data it never saw.
        intent = _replace(intent, read_version=-1)
    if intent.blind:
        return _commit_blind(intent, before)
    return _commit_checked(intent, before)


def _replace(intent: Intent, **changes: Any) -> Intent:
    from dataclasses import replace

    return replace(intent, **changes)


def _properties(intent: Intent, retries: int, read_version: int | None):
    from deltalake.transaction import CommitProperties

    metadata: dict[str, Any] = {JOB_KEY: intent.job, WRITE_KEY: intent.write, TABLE_KEY: intent.table,
                                "isBlindAppend": intent.blind}
    if read_version is not None and read_version >= 0:
        metadata["readVersion"] = read_version
    return CommitProperties(custom_metadata=metadata, max_commit_retries=retries)


def _adds(intent: Intent):
    from deltalake.transaction import AddAction

    return [AddAction(**a) for a in intent.adds]


def _create(intent: Intent) -> bool:
    """Create the table with the files; False when another writer created it first."""
    from deltalake import Schema
    from deltalake.transaction import create_table_with_add_actions

    try:
        create_table_with_add_actions(
            intent.path, Schema.from_json(intent.schema_json), _adds(intent), mode="error",
            partition_by=intent.partition_by, commit_properties=_properties(intent, 0, None),
        )
        return True
    except Exception as exc:  # noqa: BLE001 - delta-rs says "already exists" in several ways
        text = str(exc).lower()
        if "exist" in text or _LOST_RACE.search(str(exc)):
            return False
        raise


def _commit_blind(intent: Intent, before: Callable[[], None]) -> int:
    """A blind append: delta-rs checks the winning commits and retries (its own conflict checker)."""
    from deltalake import DeltaTable, Schema

    version = intent.read_version if intent.read_version is not None and intent.read_version >= 0 else None
    table = DeltaTable(intent.path, version=version) if version is not None else DeltaTable(intent.path)
    before()
    try:
        table.create_write_transaction(
            _adds(intent), "append", Schema.from_json(intent.schema_json), intent.partition_by,
            commit_properties=_properties(intent, BLIND_RETRIES, table.version()),
        )
    except Exception as exc:  # noqa: BLE001
        _raise_conflict(intent, exc, table.version())
        raise
    return _version_of_write(intent.path, intent.write, table.version())


def _commit_checked(intent: Intent, before: Callable[[], None]) -> int:
    """A transaction that read something: check, then commit at exactly the next version."""
    from deltalake import DeltaTable

    checked = intent.read_version if intent.read_version is not None else -1
    reads = intent.all_reads()
    for attempt in range(MAX_ATTEMPTS):
        table = DeltaTable(intent.path)
        latest = table.version()
        conflict = find_conflict(intent.path, checked, latest, intent.job, reads)
        if conflict:
            raise ConflictError(
                f"table {intent.table}: concurrent write: {conflict}; nothing of this write was committed, "
                "rerun the command"
            )
        checked = latest
        before()
        try:
            _commit_at(table, intent)
            return latest + 1 if intent.schema_mode is None else _version_of_write(intent.path, intent.write, latest)
        except Exception as exc:  # noqa: BLE001
            if not _LOST_RACE.search(str(exc)):
                _raise_conflict(intent, exc, latest)
                raise
        time.sleep(random.uniform(0.0, min(0.5, 0.01 * (attempt + 1))))
    raise ConflictError(f"table {intent.table}: {MAX_ATTEMPTS} commit attempts lost to other writers; "
                        "nothing committed, rerun the command")


def _commit_at(table, intent: Intent) -> None:
    """One commit attempt against ``table``'s snapshot, at its next version only."""
    from deltalake import DeltaTable, Schema
    from deltalake.transaction import create_table_with_add_actions

    schema = Schema.from_json(intent.schema_json)
    props = _properties(intent, 0, table.version())
    if intent.mode == "overwrite" and not intent.replace and table.metadata().partition_columns != intent.partition_by:
        # create_write_transaction keeps the old partition columns (a corrupt table when they
        # change); a create-or-replace commit swaps metadata and files at once.
        create_table_with_add_actions(intent.path, schema, _adds(intent), mode="overwrite",
                                      partition_by=intent.partition_by, commit_properties=props)
    elif intent.mode == "overwrite":
        filters = [(c, "=", v) for c, v in intent.replace.items()] or None
        table.create_write_transaction(_adds(intent), "overwrite", schema, intent.partition_by, filters,
                                       commit_properties=props)
    else:
        known = {f.name for f in table.schema().fields}
        new_fields = [f for f in schema.fields if f.name not in known]
        if new_fields:
            # An append commit cannot change the schema: the merged columns come first, in a
            # commit of the same job (taken back with the job if the append fails).
            table.alter.add_columns(new_fields, commit_properties=props)
            table = DeltaTable(intent.path)
            props = _properties(intent, 0, table.version())
        table.create_write_transaction(_adds(intent), "append", schema, intent.partition_by, commit_properties=props)


def _raise_conflict(intent: Intent, exc: Exception, read_version: int) -> None:
    text = str(exc)
    if any(marker in text for marker in _DELTA_RS_CONFLICT) or _LOST_RACE.search(text):
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise ConflictError(
            f"table {intent.table}: concurrent write since version {read_version}: {first}; "
            "nothing of this write was committed, rerun the command"
        ) from None


def _version_of_write(path: str, write: str, since: int) -> int:
    latest = latest_version(path) or 0
    for version in range(latest, since, -1):
        if commit_info(log_entry(path, version)).get(WRITE_KEY) == write:
            return version
    return latest


# --------------------------------------------------------------------------- undoing a job


def revert(path: str, table: str, base: int | None, job: str) -> str | None:
    """Undo the commits ``job`` made to the table after version ``base`` (None: it created it).

    Never erases another writer's commit: with no other commit since ``base`` the table is
    restored to ``base`` (delta-rs RESTORE; a commit racing it is checked by delta-rs); with
    others that touched none of the partitions this job changed, only this job's files are
    removed and the ones it removed are added back; otherwise the table is left as it is.

    Returns:
        None when the table is back to its data at ``base`` (or there was nothing to undo),
        else a sentence saying why it was left as it is.
    """
    from deltalake import DeltaTable

    from longtail.core.files import remove_tree

    latest = latest_version(path)
    if latest is None:
        return None
    start = -1 if base is None else base
    entries = {v: log_entry(path, v) for v in range(start + 1, latest + 1)}
    ours = [v for v, a in entries.items() if commit_info(a).get(JOB_KEY) == job]
    if not ours:
        return None
    others = [v for v in entries if v not in ours]
    if base is None:
        if others:
            return f"created by this job, but commits {others} by other writers followed; left as it is"
        remove_tree(path)
        return None
    if not others:
        from deltalake.transaction import CommitProperties

        # Restored from the snapshot checked above: a commit racing in after it is not undone
        # (delta-rs checks the RESTORE against it like any other commit).
        DeltaTable(path, version=latest).restore(base, commit_properties=CommitProperties(
            custom_metadata={JOB_KEY: job, TABLE_KEY: table, "longtail.revert": True}, max_commit_retries=50))
        return None
    touched = _touched(entries, ours)
    if touched is None:
        return f"this job changed its schema, and commits {others} by other writers followed; left as it is"
    conflict = find_conflict(path, base, latest, job, touched)
    if conflict:
        return f"{conflict.replace(f'read at version {base}', 'this job changed')}; left as it is"
    return _undo_files(path, table, base, latest, job, touched)


def _touched(entries: dict[int, list[dict]], ours: list[int]) -> list[dict[str, str | None]] | None:
    """The partitions this job's commits changed ({} for an unpartitioned table); None when a
    commit of the job changed metadata (only a RESTORE undoes that)."""
    touched: list[dict[str, str | None]] = []
    for version in ours:
        for action in entries[version]:
            if "metaData" in action or "protocol" in action:
                return None
            change = action.get("add") or action.get("remove")
            if change is not None:
                values = dict(change.get("partitionValues") or {})
                if values not in touched:
                    touched.append(values)
    return touched


def _undo_files(path: str, table: str, base: int, latest: int, job: str, touched: list[dict]) -> str | None:
    """Remove the files active now and add back those active at ``base``, in ``touched`` only."""
    import pyarrow as pa
    from deltalake import DeltaTable
    from deltalake.transaction import AddAction, RemoveAction

    def files(version: int) -> dict[str, dict[str, Any]]:
        actions = pa.table(DeltaTable(path, version=version).get_add_actions(flatten=True)).to_pylist()
        out = {}
        for row in actions:
            values = {k[len("partition."):]: v for k, v in row.items() if k.startswith("partition.")}
            values = {k: partition_string(v) for k, v in values.items()}
            if any(_matches(values, t) for t in touched):
                out[row["path"]] = {**row, "_values": values}
        return out

    then, now = files(base), files(latest)
    now_ms = int(time.time() * 1000)
    actions: list[Any] = [
        RemoveAction(p, True, now_ms, r["size_bytes"], r["_values"]) for p, r in now.items() if p not in then
    ]
    actions += [
        AddAction(p, r["size_bytes"], r["_values"], r["modification_time"] if isinstance(r["modification_time"], int)
                  else now_ms, True, json.dumps({"numRecords": r.get("num_records")}))
        for p, r in then.items() if p not in now
    ]
    if not actions:
        return None
    dt = DeltaTable(path)
    intent = Intent(table, path, [], "append", json.dumps(json.loads(dt.schema().to_json())),
                    list(dt.metadata().partition_columns), read_version=latest, reads=touched, job=job,
                    write=f"revert-{job}")
    checked = latest
    for _ in range(MAX_ATTEMPTS):
        dt = DeltaTable(path)
        conflict = find_conflict(path, checked, dt.version(), job, touched)
        if conflict:
            return f"{conflict}; left as it is"
        checked = dt.version()
        try:
            dt.create_write_transaction(actions, "append", dt.schema(), intent.partition_by,
                                        commit_properties=_properties(intent, 0, checked))
            return None
        except Exception as exc:  # noqa: BLE001
            if not _LOST_RACE.search(str(exc)):
                raise
    return "lost every commit attempt to other writers; left as it is"
