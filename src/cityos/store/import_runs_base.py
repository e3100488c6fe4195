"""The storage contract of import runs (ingest/runs.py): one row per run of `cityos import` /
`cityos demo` (and what a server loads itself), newest first, with its counts and its first rejects.
Only the newest KEEP runs are kept. Back-ends: sqlite_import_runs.py, postgres/import_runs.py."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

KEEP = 1000  # runs kept; older ones go when a new one is saved


@dataclass(slots=True)
class ImportRun:
    id: str
    kind: str  # gtfs, gtfs-rt, csv, demo, ...
    source: str  # a file name or a URL (without credentials)
    tenant: str
    started_at: str
    finished_at: str | None = None
    status: str = "running"  # running, finished, failed
    stored: int = 0  # entities (or instances) written
    rejected: int = 0  # rows, entities or feed items refused, in all
    rejects: list[dict[str, str]] = field(default_factory=list)  # the first ones: {"where", "reason"}
    message: str = ""  # a summary, or why the run failed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImportRun:
        return cls(**{k: data[k] for k in cls.__slots__ if k in data})


class ImportRunStore(Protocol):
    async def save_import_run(self, run: ImportRun) -> None:
        """Insert a run, or replace the one with its id (a run is saved when it starts and when it
        ends); the oldest beyond KEEP go."""

    async def list_import_runs(self, limit: int, offset: int = 0) -> list[ImportRun]:
        """Runs, newest first."""

    async def get_import_run(self, run_id: str) -> ImportRun | None:
        """One run; None if there is none."""
