"""`cityos db upgrade|status`: versioned schema migrations of a PostgreSQL database or SQLite file.

PostgreSQL: the server only checks the schema version (and refuses to start on an old one); changing
a production schema is an explicit, separate step, run once per deployment before the workers start.
SQLite: the server upgrades the file it opens (store/sqlite_schema.py); these commands show the
pending steps and apply them ahead of the start, e.g. right after `cityos backup`.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from cityos.cli.common import fail, setting_option
from cityos.store import is_postgres


def register(commands: Any) -> None:
    """Add the db command to the `cityos` parser's subcommands."""
    parser = commands.add_parser(
        "db",
        help="Manage the database schema (versioned migrations).",
        description="Apply or inspect the versioned schema migrations of a PostgreSQL database or a SQLite"
        " file (docs/operations.md, 'Upgrades'). The server applies a SQLite file's pending steps itself"
        " when it opens it; it refuses a PostgreSQL database that is not current.",
        epilog="Example: cityos db upgrade --database postgresql://cityos@db.example.org/cityos",
    )
    actions = parser.add_subparsers(dest="db_action", required=True, metavar="{upgrade,status}")
    upgrade = actions.add_parser(
        "upgrade",
        help="Apply every pending migration, in one transaction.",
        description="Bring the database's schema to this CityOS's version; safe to run again (nothing to do) "
        "and from several hosts at once (an advisory lock serialises them).",
        epilog="Example: cityos db upgrade --database postgresql://postgres@127.0.0.1/cityos",
    )
    status = actions.add_parser(
        "status",
        help="Print the schema version of the database and of this CityOS; exit 1 if they differ.",
        description="Report the applied schema version and the pending migrations, changing nothing.",
        epilog="Example: cityos db status --database postgresql://postgres@127.0.0.1/cityos",
    )
    for command, run in ((upgrade, run_upgrade), (status, run_status)):
        setting_option(command, "--database", "database", "a SQLite file or postgresql:// URL")
        command.set_defaults(run=run)


def _postgres_url(args: argparse.Namespace) -> str | None:
    database: str = args.database
    return database if is_postgres(database) else None


def run_upgrade(args: argparse.Namespace) -> int:
    url = _postgres_url(args)
    if url is None:
        return _upgrade_sqlite(args.database)
    from cityos.store.postgres import LATEST, redact, upgrade

    async def run() -> list[Any]:
        import asyncpg

        connection = await asyncpg.connect(url)
        try:
            return await upgrade(connection)
        finally:
            await connection.close()

    try:
        applied = asyncio.run(run())
    except Exception as exc:  # connection, driver and version errors alike: report, do not trace back
        return fail(f"cannot upgrade {redact(url)}: {type(exc).__name__}: {exc}")
    for migration in applied:
        print(f"applied {migration.version}: {migration.description}")
    print(f"{redact(url)} is at schema version {LATEST}" + ("" if applied else " (nothing to do)"))
    return 0


def run_status(args: argparse.Namespace) -> int:
    url = _postgres_url(args)
    if url is None:
        return _status_sqlite(args.database)
    from cityos.store.postgres import LATEST, MIGRATIONS, redact, schema_version

    async def run() -> int:
        import asyncpg

        connection = await asyncpg.connect(url)
        try:
            return await schema_version(connection)
        finally:
            await connection.close()

    try:
        current = asyncio.run(run())
    except Exception as exc:  # connection and driver errors alike: report, do not trace back
        return fail(f"cannot read {redact(url)}: {type(exc).__name__}: {exc}")
    print(f"{redact(url)}: schema version {current}; this CityOS: {LATEST}")
    for migration in MIGRATIONS:
        if migration.version > current:
            print(f"  pending {migration.version}: {migration.description}")
    return 0 if current == LATEST else 1


def _upgrade_sqlite(path: str) -> int:
    from cityos.store import open_store
    from cityos.store.sqlite_schema import LATEST, status

    found = status(path)
    if found is None:
        return fail(f"no database file at {path} (`cityos serve` makes a new one at the current version)")
    pending = found[1]

    async def run() -> None:
        store = open_store(path)
        await store.open()  # applies the pending steps (store/sqlite_schema.py upgrade)
        await store.close()

    try:
        asyncio.run(run())
    except Exception as exc:  # a newer file, a locked or damaged one: report, do not trace back
        return fail(f"cannot upgrade {path}: {type(exc).__name__}: {exc}")
    for migration in pending:
        print(f"applied {migration.version}: {migration.description}")
    print(f"{path} is at schema version {LATEST}" + ("" if pending else " (nothing to do)"))
    return 0


def _status_sqlite(path: str) -> int:
    from cityos.store.sqlite_schema import LATEST, status

    try:
        found = status(path)
    except Exception as exc:  # not a database, unreadable: report, do not trace back
        return fail(f"cannot read {path}: {type(exc).__name__}: {exc}")
    if found is None:
        return fail(f"no database file at {path}")
    current, pending = found
    print(f"{path}: schema version {current}; this CityOS: {LATEST}")
    for migration in pending:
        print(f"  pending {migration.version}: {migration.description}")
    if current > LATEST:
        print("  the file is newer than this CityOS: upgrade CityOS")
    return 0 if current == LATEST else 1
