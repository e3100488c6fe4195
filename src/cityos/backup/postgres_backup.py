"""Backups of a PostgreSQL deployment: the `pg_dump` and `pg_restore` invocations CityOS wraps.

    pg_dump --format=custom --no-owner --no-privileges --schema=SCHEMA --file=PATH URL
    pg_restore --no-owner --no-privileges --exit-on-error --single-transaction --use-list=LIST --dbname=URL PATH

The dump is one repeatable-read snapshot of the deployment's schema (the one its URL's search_path
names first, `public` by default): every write committed before it started is in it; it takes only
ACCESS SHARE locks, so the server goes on reading and writing. PostGIS is not in the dump (an
extension of the database, in `public`): a restore creates it when the database lacks it. The
restore leaves out the schema's own CREATE when the schema exists (an empty `public`), and refuses a
schema that holds any table. URL query parameters that libpq does not know (asyncpg's server
settings, such as search_path) are passed to the tools as `options=-c name=value`.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from cityos.backup import BackupError, BackupReport
from cityos.backup.audit_check import check_store

MAGIC = b"PGDMP"  # the first bytes of a custom-format archive
LIBPQ_PARAMETERS = {
    "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "connect_timeout", "options",
    "application_name", "sslmode", "sslcert", "sslkey", "sslrootcert", "sslcrl", "sslpassword",
    "target_session_attrs", "service", "channel_binding", "gssencmode", "keepalives",
}  # fmt: skip
TOOL_TIMEOUT = 24 * 3600  # seconds: a dump or restore of a large city takes long, but not for ever


def is_archive(path: str) -> bool:
    try:
        with open(path, "rb") as archive:
            return archive.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def libpq_url(url: str) -> str:
    """The URL as libpq (pg_dump, pg_restore) reads it: other parameters become server options."""
    parts = urlsplit(url)
    kept: list[tuple[str, str]] = []
    options: list[str] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in LIBPQ_PARAMETERS:
            kept.append((name, value))
        else:
            options.append(f"-c {name}={value.replace(' ', '')}")
    if options:
        kept.append(("options", " ".join(options)))
    return urlunsplit(parts._replace(scheme="postgresql", query=urlencode(kept, quote_via=quote)))


def _run(command: list[str], what: str) -> str:
    if shutil.which(command[0]) is None:
        raise BackupError(f"{command[0]} is not installed (Debian: apt-get install postgresql-client)")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackupError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise BackupError(f"{what}: {command[0]} exited with {done.returncode}: {' | '.join(lines[-3:])}")
    return done.stdout


async def _fetch(url: str, sql: str, *args: object) -> object:
    import asyncpg

    connection = await asyncpg.connect(url, timeout=30)
    try:
        return await connection.fetchval(sql, *args)
    finally:
        await connection.close()


def _current_schema(url: str) -> str:
    schema = asyncio.run(_fetch(url, "SELECT current_schema()"))
    if not isinstance(schema, str):
        raise BackupError("the database URL's search_path names no existing schema")
    return schema


def dump(url: str, path: str) -> str:
    from cityos.store.postgres import redact

    target = Path(path).expanduser()
    if target.exists():
        raise BackupError(f"{path} exists already: a backup never overwrites a file")
    try:
        schema = _current_schema(url)
    except (OSError, Exception) as exc:
        if isinstance(exc, BackupError):
            raise
        raise BackupError(f"cannot reach {redact(url)}: {type(exc).__name__}: {exc}") from exc
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    command = ["pg_dump", "--format=custom", "--no-owner", "--no-privileges", f"--schema={schema}"]
    try:
        _run([*command, f"--file={partial}", libpq_url(url)], f"cannot back up {redact(url)}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return f"backed up schema {schema} of {redact(url)} to {path} ({target.stat().st_size:,} bytes)"


def _archive_schema(listing: str) -> str:
    match = re.search(r"^\d+; \d+ \d+ TABLE (\S+) schema_version ", listing, re.MULTILINE)
    if match is None:
        raise BackupError("the archive holds no CityOS schema (no schema_version table)")
    return match.group(1)


def load(path: str, url: str) -> str:
    from cityos.store.postgres import redact

    if not is_archive(path):
        raise BackupError(f"{path} is not a pg_dump custom-format archive")
    listing = _run(["pg_restore", "--list", path], f"cannot read {path}")
    schema = _archive_schema(listing)

    async def prepare() -> bool:
        """Whether the schema exists; refuses one with tables; makes PostGIS as migration 1 does."""
        import asyncpg

        connection = await asyncpg.connect(url, timeout=30)
        try:
            tables = await connection.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = $1", schema)
            if tables:
                raise BackupError(
                    f"schema {schema} of {redact(url)} holds {tables} tables: restore into an empty database"
                )
            await connection.execute(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'postgis') THEN"
                " CREATE EXTENSION postgis SCHEMA public; END IF; END $$"
            )
            exists: bool = await connection.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema
            )
            return exists
        finally:
            await connection.close()

    try:
        exists = asyncio.run(prepare())
    except BackupError:
        raise
    except Exception as exc:  # connection and driver errors alike: one line
        raise BackupError(f"cannot use {redact(url)}: {type(exc).__name__}: {exc}") from exc
    entries = listing.splitlines()
    if exists:
        entries = [line for line in entries if not re.match(rf"^\d+; \d+ \d+ SCHEMA - {re.escape(schema)} ", line)]
    with tempfile.NamedTemporaryFile("w", prefix="cityos-restore-", suffix=".list") as chosen:
        chosen.write("\n".join(entries) + "\n")
        chosen.flush()
        command = ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"]
        _run([*command, f"--use-list={chosen.name}", f"--dbname={libpq_url(url)}", path], f"cannot restore {path}")
    return f"restored {path} into schema {schema} of {redact(url)}"


def check(path: str, server_url: str, public_pem: bytes | None) -> BackupReport:
    """Restore the archive into a scratch database on `server_url`'s server (dropped after), then
    read it through the store: its schema version, its entities, its audit chain."""
    from cityos.store import open_store
    from cityos.store.postgres import LATEST, redact

    listing = _run(["pg_restore", "--list", path], f"cannot read {path}")  # the archive's table of contents
    schema = _archive_schema(listing)
    report = BackupReport("postgresql")
    scratch = f"cityos_verify_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(server_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "search_path"]
    query.append(("search_path", f"{schema},public"))
    scratch_url = urlunsplit(parts._replace(path=f"/{scratch}", query=urlencode(query)))
    try:
        asyncio.run(_fetch(server_url, f'CREATE DATABASE "{scratch}"'))
    except Exception as exc:  # no server, no CREATEDB right: one line
        raise BackupError(
            f"cannot make a scratch database on {redact(server_url)} to restore into: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        try:
            load(path, scratch_url)
        except BackupError as exc:
            report.problems.append(str(exc))
            return report

        async def read() -> None:
            version = await _fetch(scratch_url, "SELECT coalesce(max(version), 0) FROM schema_version")
            report.schema_version = int(version) if isinstance(version, int) else 0
            entities = await _fetch(scratch_url, "SELECT count(*) FROM entities")
            report.entities = int(entities) if isinstance(entities, int) else 0
            if report.schema_version != LATEST:
                report.problems.append(
                    f"schema version {report.schema_version}, this CityOS's is {LATEST}: the audit chain is"
                    " checked by the CityOS that made it (restore, then `cityos db upgrade`)"
                )
                return
            store = open_store(scratch_url)
            await store.open()
            try:
                await check_store(store, report, public_pem)
            finally:
                await store.close()

        asyncio.run(read())
    finally:
        asyncio.run(_fetch(server_url, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))
    return report
