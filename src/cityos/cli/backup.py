"""`cityos backup PATH`, `cityos backup --verify PATH`, `cityos restore PATH`: a deployment's data
in one file, taken while the server serves (cityos/backup/)."""

from __future__ import annotations

import argparse
from typing import Any

from cityos.cli.common import fail, setting_option


def _database_option(parser: argparse.ArgumentParser, text: str) -> None:
    setting_option(parser, "--database", "database", f"{text}")


def register(commands: Any) -> None:
    backup = commands.add_parser(
        "backup",
        help="Copy the whole database into one file while the server serves (or --verify such a file).",
        description="Entities, history, subscriptions, keys, users, policies and the audit trail, as of the"
        " moment the backup starts. SQLite: VACUUM INTO; PostgreSQL: pg_dump --format=custom of the"
        " deployment's schema (docs/operations.md, 'Backups and restore'). The audit signing key is not"
        " in the database: keep a copy of it with the city's secrets.",
        epilog="Example: cityos backup --database city.db /backups/city-2026-12-07.db && "
        "cityos backup --verify /backups/city-2026-12-07.db --public-key audit.pub",
    )
    backup.add_argument("path", help="the file to write (never overwritten), or with --verify the file to check")
    backup.add_argument(
        "--verify",
        action="store_true",
        help="check the backup PATH instead of making one: every page reads back, and the audit chain is intact;"
        " a PostgreSQL archive is restored into a scratch database on --database's server, then dropped",
    )
    backup.add_argument(
        "--public-key",
        help="with --verify: the PEM `cityos audit pubkey` printed, so the signed checkpoints are checked too"
        " (without it: every hash and link)",
    )
    _database_option(
        backup, "SQLite file or postgresql:// URL to back up (--verify of a PostgreSQL archive: its server)"
    )
    backup.set_defaults(run=run_backup)
    restore = commands.add_parser(
        "restore",
        help="Restore a backup into an empty database (refuses one that holds anything).",
        description="Put a `cityos backup` file back: a new SQLite file, or an empty PostgreSQL database or"
        " schema. Then run `cityos db upgrade` if the backup is of an older CityOS, and start the server.",
        epilog="Example: cityos restore /backups/city-2026-12-07.db --database city.db",
    )
    restore.add_argument("path", help="the backup file")
    _database_option(restore, "SQLite file (new or empty) or postgresql:// URL (empty schema) to restore into")
    restore.set_defaults(run=run_restore)


def run_backup(args: argparse.Namespace) -> int:
    from cityos.backup import BackupError, backup, verify

    if not args.verify:
        try:
            print(backup(args.database, args.path))
        except BackupError as exc:
            return fail(str(exc))
        return 0
    public_pem = None
    if args.public_key:
        try:
            with open(args.public_key, "rb") as key_file:
                public_pem = key_file.read()
        except OSError as exc:
            return fail(f"cannot read the public key {args.public_key}: {exc}")
    try:
        report = verify(args.path, args.database, public_pem)
    except (BackupError, ValueError) as exc:
        return fail(str(exc))
    for problem in report.problems:
        print(f"FAIL {problem}")
    signed = (
        f", signed through seq {report.signed_through}" if public_pem else " (signatures not checked: no --public-key)"
    )
    print(
        f"{'OK' if report.ok else 'DAMAGED'}: {report.kind} backup, schema version {report.schema_version},"
        f" {report.entities} entities, {report.audit_records} audit records{signed}"
    )
    return 0 if report.ok else 1


def run_restore(args: argparse.Namespace) -> int:
    from cityos.backup import BackupError, restore

    try:
        print(restore(args.path, args.database))
    except BackupError as exc:
        return fail(str(exc))
    return 0
