"""What one ingest loaded: :class:`IngestReport` and its summary text."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class IngestReport:
    """What one ingest loaded.

    Attributes:
        format: ``amazon`` | ``movielens`` | ``files``.
        rows: rows written per table.
        skipped: bad rows skipped, per ``"<table>: <reason>"``.
        first_skipped: where the first skipped row of each reason is (file and line or row).
        duplicates: rows removed as duplicates per table (interactions: exact duplicate
            events; items and users: repeated ids, the first occurrence is kept).
        derived: tables built from the interactions because no file was given.
        seconds: wall time of the ingest.
    """

    format: str
    rows: dict[str, int]
    skipped: dict[str, int] = field(default_factory=dict)
    first_skipped: dict[str, str] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    derived: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def __str__(self) -> str:
        tables = ", ".join(
            f"{t} {n:,}" + (" (derived)" if t in self.derived else "") for t, n in self.rows.items()
        )
        dups = ", ".join(f"{t} {n:,}" for t, n in self.duplicates.items() if n) or "none"
        lines = [f"ingest ({self.format}): {tables}; duplicates removed: {dups}"]
        if self.skipped:
            lines.append(f"  skipped {self.skipped_total:,} bad rows:")
            for reason, n in self.skipped.items():
                where = self.first_skipped.get(reason)
                lines.append(f"    {reason}: {n:,}" + (f" (first: {where})" if where else ""))
        return "\n".join(lines)
