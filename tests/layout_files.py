"""Opening a SQLite file written by an older CityOS (tests/data/*-layout-*): the app over a copy of
it, and rows read straight from a file."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.settings import Settings


def app_over_copy(old: Path, folder: Path) -> Iterator[TestClient]:
    """The app over a copy (in `folder`) of the old file in `old`, with its audit key."""
    for name in ("cityos.db", "cityos.db.audit-key"):
        shutil.copy(old / name, folder / name)
    with TestClient(create_app(Settings(database=str(folder / "cityos.db")))) as client:
        yield client


def rows(database: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database) as db:
        return db.execute(sql).fetchall()
