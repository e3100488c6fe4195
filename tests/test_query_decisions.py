"""store/sqlite_query.py `_few`: a side filter's selectivity is counted once per DECISION_AGE per
connection and reused; another connection, or an older answer, counts again."""

from __future__ import annotations

import sqlite3
import time

import pytest

from cityos.store import sqlite_query


def table(rows: int) -> sqlite3.Connection:
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE t (pk INTEGER, v INTEGER)")
    connection.executemany("INSERT INTO t VALUES (?, ?)", [(n, n) for n in range(rows)])
    return connection


def test_a_decision_is_reused_per_connection_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_query, "_decisions", {})
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    broad, narrow = table(sqlite_query.SELECTIVE + 10), table(5)
    assert not sqlite_query._few(broad, "t", "x.v >= ?", [0])
    assert sqlite_query._few(narrow, "t", "x.v >= ?", [0])  # same filter, another connection
    broad.execute("DELETE FROM t WHERE pk > 3")
    assert not sqlite_query._few(broad, "t", "x.v >= ?", [0])  # reused: a plan choice only
    clock[0] += sqlite_query.DECISION_AGE
    assert sqlite_query._few(broad, "t", "x.v >= ?", [0])  # counted again
