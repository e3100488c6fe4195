"""A SQLite file made by the previous version (tests/data/v0.1.0, CityOS v0.1.0 at commit bde8196)
is upgraded by `cityos db upgrade` and answers as it did: entities, history (long values kept once),
subscription, policy, key, and an intact, still signed audit chain. `cityos db status` tells what is
pending on both back-ends."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from backends import POSTGRES, admin, cli_env, db_rows
from cityos.app import create_app
from cityos.settings import Settings
from cityos.store.postgres import LATEST as POSTGRES_LATEST
from cityos.store.sqlite_schema import LATEST

OLD = Path(__file__).parent / "data" / "v0.1.0"


def cityos(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cityos", *args], env=cli_env(), capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def old_file(tmp_path: Path) -> str:
    copy = tmp_path / "cityos.db"
    shutil.copyfile(OLD / "cityos.db", copy)
    return str(copy)


def test_the_file_of_v0_1_0_is_upgraded(old_file: str) -> None:
    before = cityos("db", "status", "--database", old_file)
    assert before.returncode == 1, before.stderr
    assert f"schema version 5; this CityOS: {LATEST}" in before.stdout and "pending 6:" in before.stdout
    assert db_rows(old_file, "SELECT count(*) FROM temporal_values") == [(24,)]  # the long texts, once each

    upgraded = cityos("db", "upgrade", "--database", old_file)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "applied 6:" in upgraded.stdout and f"schema version {LATEST}" in upgraded.stdout
    again = cityos("db", "upgrade", "--database", old_file)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert cityos("db", "status", "--database", old_file).returncode == 0
    assert db_rows(old_file, "PRAGMA user_version") == [(LATEST,)]

    verified = cityos("backup", "--verify", old_file, "--public-key", str(OLD / "audit.pub"))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "7 entities" in verified.stdout and "signed through seq 0" not in verified.stdout, verified.stdout

    with TestClient(create_app(Settings(database=old_file))) as client:
        entities = client.get("/ngsi-ld/v1/entities", params={"type": "WeatherObserved,OffStreetParking"}).json()
        assert len(entities) == 7
        history = client.get("/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:WeatherObserved:w3").json()
        assert len(history["temperature"]) == 24 and len(history["description"]) == 23
        assert history["description"][0]["value"].startswith("a long text value")
        assert client.get("/ngsi-ld/v1/subscriptions/urn:ngsi-ld:Subscription:cold").status_code == 200
    assert db_rows(old_file, "SELECT kind, name FROM credentials") == [("key", "admin")]
    assert db_rows(old_file, "SELECT id FROM policy_versions") == [
        ("public-reads-weather",)
    ]  # served with --auth required


def test_status_on_both_back_ends(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        assert cityos("db", "status", "--database", db_url + ".missing").returncode == 1
        with TestClient(create_app(Settings(database=db_url))):
            pass  # a new file is made at the current version
    done = cityos("db", "status", "--database", db_url)
    assert done.returncode == 0, done.stdout + done.stderr
    current = LATEST if not db_url.startswith("postgresql") else POSTGRES_LATEST
    assert f"schema version {current}; this CityOS: {current}" in done.stdout


def test_postgres_migration_20_puts_the_pk_in_the_value_indexes(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Migration 20 on a schema at 19 that holds q values: the numeric value index then includes
    the pk, and a q's pks read from it alone are those of the table (a map tile's q, grid.py); the
    text index stays as it was (deduplicated: an INCLUDE column would turn that off)."""
    if not db_url.startswith("postgresql"):
        pytest.skip("a PostgreSQL migration")
    import asyncpg

    from cityos.store.postgres import schema

    name = f"mig20_{os.getpid()}"
    at_19 = tuple(m for m in schema.MIGRATIONS if m.version <= 19)
    rows = [(i, "n", float(i), None) for i in range(1, 301)] + [(i, "s", None, f"t{i % 7}") for i in range(1, 301)]

    async def run() -> dict[str, Any]:
        await admin(f'DROP SCHEMA IF EXISTS "{name}" CASCADE; CREATE SCHEMA "{name}"')
        connection = await asyncpg.connect(POSTGRES, server_settings={"search_path": f'"{name}", public'}, timeout=5)
        try:
            monkeypatch.setattr(schema, "MIGRATIONS", at_19)
            assert [m.version for m in await schema.upgrade(connection)][-1] == 19
            await connection.execute(
                "INSERT INTO entities (tenant, id, doc, types, attrs, modified_at)"
                " SELECT '', 'urn:x:' || i, '{}', '{T}', '{n,s}', '2026' FROM generate_series(1, 300) i"
            )
            await connection.executemany("INSERT INTO attr_values (pk, attr, num, txt) VALUES ($1, $2, $3, $4)", rows)
            monkeypatch.undo()
            applied = [m.version for m in await schema.upgrade(connection)]
            await connection.execute("VACUUM ANALYZE attr_values")
            found: dict[str, Any] = {"applied": applied, "version": await schema.schema_version(connection)}
            definitions = (
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = 'attr_values'"
            )
            found["indexes"] = {r[0]: r[1] for r in await connection.fetch(definitions, name)}
            async with connection.transaction():  # each index alone
                await connection.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
                for key, sql in {
                    "num": "SELECT pk FROM attr_values WHERE attr = 'n' AND num > 250",
                    "txt": "SELECT pk FROM attr_values WHERE attr = 's' AND txt = 't3'",
                }.items():
                    found[key] = sorted(r[0] for r in await connection.fetch(sql))
                    found[key + " plan"] = "\n".join(r[0] for r in await connection.fetch("EXPLAIN " + sql))
            return found
        finally:
            await connection.close()
            await admin(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')

    found = asyncio.run(run())
    assert found["applied"] == list(range(20, schema.LATEST + 1)) and found["version"] == schema.LATEST
    assert "(attr, num) INCLUDE (pk) WHERE (num IS NOT NULL)" in found["indexes"]["attr_values_num"]
    assert "(attr, txt) WHERE (txt IS NOT NULL)" in found["indexes"]["attr_values_txt"]
    assert found["num"] == list(range(251, 301))
    assert found["txt"] == [i for i in range(1, 301) if i % 7 == 3]
    assert "Index Only Scan using attr_values_num" in found["num plan"]
