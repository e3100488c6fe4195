"""Backups of a SQLite file: `VACUUM INTO` while the server serves, a copy back into place, a check.

`VACUUM INTO` reads the file in one read transaction of its own connection: in WAL mode that is a
snapshot which the writer never waits for, so every write acknowledged (committed) before the
backup started is in the copy, and none half-made. The copy is written beside its final name and
renamed when complete: a backup that fails leaves no file that looks whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from cityos.backup import BackupError, BackupReport
from cityos.backup.audit_check import check_store

BUSY_MS = 30_000  # a backup waits this long for another process's exclusive lock (a migration, a restore)


def copy(database: str, path: str) -> str:
    source = Path(database).expanduser()
    if not source.is_file():
        raise BackupError(f"no database file at {database}")
    target = Path(path).expanduser()
    if target.exists():
        raise BackupError(f"{path} exists already: a backup never overwrites a file")
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        with contextlib.closing(sqlite3.connect(source, isolation_level=None)) as connection:
            connection.execute(f"PRAGMA busy_timeout={BUSY_MS}")
            connection.execute("VACUUM INTO ?", (str(partial),))
        os.replace(partial, target)
    except (sqlite3.Error, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise BackupError(f"cannot back up {database} to {path}: {exc}") from exc
    return f"backed up {database} to {path} ({target.stat().st_size:,} bytes)"


def _empty(path: Path) -> bool:
    """Whether a database file holds nothing (absent, zero bytes, or no table)."""
    if not path.exists() or path.stat().st_size == 0:
        return True
    with contextlib.closing(sqlite3.connect(path)) as connection:
        tables: int = connection.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    return tables == 0


def put_back(path: str, database: str) -> str:
    source = Path(path).expanduser()
    if not source.is_file():
        raise BackupError(f"no backup file at {path}")
    _integrity(source)
    target = Path(database).expanduser()
    try:
        if not _empty(target):
            raise BackupError(
                f"{database} is not empty: restore into a new file (a restore never merges or overwrites)"
            )
        for suffix in ("-wal", "-shm"):  # an empty file's leftovers would be replayed over the copy
            Path(str(target) + suffix).unlink(missing_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    except (sqlite3.Error, OSError) as exc:
        raise BackupError(f"cannot restore {path} into {database}: {exc}") from exc
    return f"restored {path} into {database}; `cityos db status --database {database}` shows its schema version"


def _integrity(path: Path) -> list[str]:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            rows = [row[0] for row in connection.execute("PRAGMA integrity_check")]
    except sqlite3.Error as exc:
        raise BackupError(f"{path} is not a readable SQLite database: {exc}") from exc
    return [] if rows == ["ok"] else [f"integrity: {row}" for row in rows[:20]]


def check(path: str, public_pem: bytes | None) -> BackupReport:
    """Integrity of every page and index, then the audit chain, read through the store from a
    scratch copy (opening migrates an older file, and the backup itself stays as it was)."""
    from cityos.store import open_store

    source = Path(path).expanduser()
    if not source.is_file():
        raise BackupError(f"no backup file at {path}")
    report = BackupReport("sqlite", problems=_integrity(source))
    if not report.ok:
        return report
    with tempfile.TemporaryDirectory(prefix="cityos-verify-") as scratch:
        copied = os.path.join(scratch, "copy.db")
        shutil.copyfile(source, copied)
        with contextlib.closing(sqlite3.connect(copied)) as connection:
            report.schema_version = connection.execute("PRAGMA user_version").fetchone()[0]

        async def read() -> None:
            store = open_store(copied)
            await store.open()
            try:
                report.entities = await _count(copied)
                await check_store(store, report, public_pem)
            finally:
                await store.close()

        try:
            asyncio.run(read())
        except (sqlite3.Error, RuntimeError) as exc:
            report.problems.append(f"the store cannot open it: {exc}")
    return report


async def _count(path: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        count: int = connection.execute("SELECT count(*) FROM entities").fetchone()[0]
    return count
