"""Backups of a whole deployment, taken while it serves, and their restore and verification.

One file holds everything the database holds: entities, history, subscriptions and their outbox,
API keys and users, policies, the audit trail with its signed checkpoints. SQLite: `VACUUM INTO`
from a read transaction of its own (a snapshot: every write committed before it started is in
the copy, and the writer is never blocked). PostgreSQL: `pg_dump --format=custom` of the
deployment's schema (a repeatable-read snapshot too). The audit trail's signing key lives outside
the database (audit/signing.key_path) and is not in a backup: keep it with the city's secrets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cityos.store import is_postgres


class BackupError(RuntimeError):
    """A backup, restore or verification that cannot be done; its message says why, in one line."""


@dataclass(slots=True)
class BackupReport:
    """What `cityos backup --verify` found."""

    kind: str  # "sqlite" or "postgresql"
    schema_version: int = 0
    entities: int = 0
    audit_records: int = 0
    signed_through: int = 0  # the highest audit seq a checkpoint vouches for (0: no key given, or none)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def backup(database: str, path: str) -> str:
    """Copy `database` into the new file `path`; returns a one-line summary."""
    if is_postgres(database):
        from cityos.backup.postgres_backup import dump

        return dump(database, path)
    from cityos.backup.sqlite_backup import copy

    return copy(database, path)


def restore(path: str, database: str) -> str:
    """Restore the backup `path` into the empty `database` (refused if it holds anything)."""
    if is_postgres(database):
        from cityos.backup.postgres_backup import load

        return load(path, database)
    from cityos.backup.sqlite_backup import put_back

    return put_back(path, database)


def verify(path: str, database: str, public_pem: bytes | None) -> BackupReport:
    """Check a backup: it reads back whole, and its audit chain is intact (and signed, with the key).
    A PostgreSQL archive is restored into a scratch database on the server `database` names."""
    from cityos.backup.postgres_backup import is_archive

    if is_archive(path):
        from cityos.backup.postgres_backup import check

        return check(path, database, public_pem)
    from cityos.backup.sqlite_backup import check as check_file

    return check_file(path, public_pem)


__all__ = ["BackupError", "BackupReport", "backup", "restore", "verify"]
