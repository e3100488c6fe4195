"""The store's AfterCommit (store/base.py) on both back-ends: a change listener's call runs once
its write has committed, once per committed change, never for a change undone (an operation a
listener refuses, an atomic write that fails, a batch SQLite runs again one savepoint per
entity). The console map's kept layer counts follow committed changes by it (mapdata/layout.py)."""

from __future__ import annotations

from typing import Any

import pytest

from cityos.entities import update
from cityos.errors import AlreadyExists, NgsiLdError
from cityos.store.base import AfterCommit, EntityChange, EntityLookup
from test_store_contract import Backend, backend, make, prop, value_of  # noqa: F401 (the `backend` fixture)


def test_after_commit_runs_for_committed_changes_only(backend: Backend) -> None:  # noqa: F811
    store, run = backend.store, backend.run
    called: list[tuple[str, Any]] = []
    calls_during_write: list[int] = []

    def listener(change: EntityChange, lookup: EntityLookup) -> list[AfterCommit]:
        n = value_of(change.after, "n") if change.after is not None else None
        if n == 99:
            raise AlreadyExists("rejected by a listener")
        calls_during_write.append(len(called))
        return [AfterCommit(lambda: called.append((change.entity_id, n)))]

    store.set_change_listener(listener, None, name="test")
    try:
        run(store.mutate("", [("urn:x:1", update.create(make("urn:x:1", "T", n=prop(1))))], atomic=True))
        assert called == [("urn:x:1", 1)] and calls_during_write == [0]  # after, not during, the write
        called.clear()
        operations = [
            ("urn:x:2", update.create(make("urn:x:2", "T", n=prop(2)))),
            ("urn:x:1", update.merge("urn:x:1", make("urn:x:1", "T", n=prop(99)))),  # refused by the listener
            ("urn:x:1", update.create(make("urn:x:1", "T", n=prop(5)))),  # exists: refused by the store
            ("urn:x:3", update.create(make("urn:x:3", "T", n=prop(3)))),
        ]
        results = run(store.mutate("", operations, atomic=False))
        assert [r.error is None for r in results] == [True, False, False, True]
        assert called == [("urn:x:2", 2), ("urn:x:3", 3)]  # once each, though SQLite ran the batch twice
        called.clear()
        failing = [
            ("urn:x:4", update.create(make("urn:x:4", "T", n=prop(4)))),
            ("urn:x:2", update.create(make("urn:x:2", "T", n=prop(6)))),  # exists: the whole write fails
        ]
        with pytest.raises(NgsiLdError):
            run(store.mutate("", failing, atomic=True))
        assert called == [] and run(store.get_entity("", "urn:x:4")) is None
        run(store.mutate("", [("urn:x:3", update.delete("urn:x:3"))], atomic=True))
        assert called == [("urn:x:3", None)]
    finally:
        store.set_change_listener(None, None, name="test")
