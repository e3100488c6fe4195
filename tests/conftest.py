"""Shared fixtures: a real database per test (a SQLite file, or a fresh schema in a real PostgreSQL:
`db_url` is parametrised over both back-ends), the ASGI app in-process, and a real server process.

CITYOS_TEST_BACKENDS (default "sqlite,postgres") picks the back-ends; CITYOS_TEST_POSTGRES names the
server (default postgresql://postgres@127.0.0.1:5432/test). Without a reachable server the postgres
cases are skipped, unless CITYOS_TEST_REQUIRE_POSTGRES=1 (set by .ci/run), when they fail.
`-k sqlite` / `-k postgres` select one back-end. module_db_url is the same for data a module loads
once. PostgreSQL schemas are reused between tests, reset to exactly what migration made
(backends.PostgresSchemas; CITYOS_TEST_SCHEMA_POOL=0 gives every test a new one). Tests about SQLite
itself are marked backends.sqlite_only / module_sqlite_only.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from backends import BACKENDS, POSTGRES, PostgresSchemas, admin
from cityos.app import create_app
from cityos.settings import Settings
from cityos.store.sqlite_written import WrittenDocuments
from notify_helpers import cityos_serving

# every document the SQLite writer hands on from its cache is compared with a fresh decode: a test
# whose code changed a written entity in place fails there (store/sqlite_written.py)
WrittenDocuments.check = True

CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.9.jsonld"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files marked `slow` first, longest first, the rest in their order: with `make test`'s `--dist loadfile
    --no-loadscope-reorder`, a worker takes the next file in this order, so a two-minute file started
    last no longer keeps the others waiting (xdist's own order, most tests first, put the slowest
    files, which have few tests, at the very end). The order is the same in every worker, as xdist needs."""
    seconds: dict[Path, float] = {}
    for item in items:
        mark = item.get_closest_marker("slow")
        if mark is not None:
            seconds[item.path] = mark.kwargs.get("seconds", 60)
    items.sort(key=lambda item: -seconds.get(item.path, 0))  # stable: each file's tests keep their order


DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def postgres_skip_reason() -> str | None:
    """Why the PostgreSQL cases cannot run here (None: they can); puts PostGIS in the database."""
    reason: str | None
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        reason = "asyncpg is not installed (pip install -e '.[dev]')"
    else:
        try:
            # the pytest workers start together: CREATE EXTENSION IF NOT EXISTS is not safe against a
            # concurrent one on a fresh database (a unique violation), so they take turns
            asyncio.run(
                admin("BEGIN; SELECT pg_advisory_xact_lock(20261207); CREATE EXTENSION IF NOT EXISTS postgis; COMMIT;")
            )
            reason = None
        except (OSError, TimeoutError) as exc:
            reason = f"no PostgreSQL server reachable at {POSTGRES} ({exc})"
    if reason is not None and os.environ.get("CITYOS_TEST_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"CITYOS_TEST_REQUIRE_POSTGRES=1 but {reason}")
    return reason


@pytest.fixture(scope="session")
def postgres_schemas(postgres_skip_reason: str | None) -> Iterator[PostgresSchemas]:
    """The session's migrated test schemas (see backends.PostgresSchemas), dropped at its end."""
    if postgres_skip_reason is not None:
        pytest.skip(postgres_skip_reason)
    schemas = PostgresSchemas()
    try:
        yield schemas
    finally:
        schemas.close()


@pytest.fixture
def fresh_postgres(postgres_schemas: PostgresSchemas) -> Iterator[str]:
    """The URL of an empty, migrated schema of this test's own in the test server (new, or reset to
    exactly what migration made after an earlier test)."""
    url = postgres_schemas.acquire()
    try:
        yield url
    finally:
        postgres_schemas.release(url)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database setting of one test: a SQLite file, or a fresh migrated PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "city.db")
    url: str = request.getfixturevalue("fresh_postgres")
    return url


@pytest.fixture(scope="module", params=BACKENDS)
def module_db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """As db_url, for data loaded once and shared by a module's tests: a SQLite file, or a migrated
    PostgreSQL schema of the module's own."""
    if request.param == "sqlite":
        yield str(tmp_path_factory.mktemp("module") / "city.db")
        return
    schemas: PostgresSchemas = request.getfixturevalue("postgres_schemas")
    url = schemas.acquire()
    try:
        yield url
    finally:
        schemas.release(url, reuse=False)  # a module's data can be large: a new schema costs less than a reset


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(database=db_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The app in-process over the test's database (lifespan included)."""
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as test_client:
        yield test_client


@pytest.fixture
def server(db_url: str) -> Iterator[str]:
    """A real `cityos serve` process on 127.0.0.1; yields its base URL and stops it by pid."""
    with cityos_serving(db_url) as base:
        yield base
