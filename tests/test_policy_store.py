"""The storage side of access policies, on both back-ends: versioned policy rows, the access
prefilter pushed into the query SQL (counts and paging right under a policy), and on PostgreSQL
the change reaching the other workers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cityos.auth.principal import ANONYMOUS, Principal
from cityos.entities import update
from cityos.errors import AlreadyExists
from cityos.policy.decision import AccessPrefilter
from cityos.policy.enforce import restrict
from cityos.policy.service import PolicyService
from cityos.store.base import EntityQuery, StoreEvent
from test_policy_engine import EXPAND, OPERATOR, PUBLIC_PARKING, D, authorizer, parking, vehicle
from test_store_contract import Backend, postgres_backend, postgres_workers, sqlite_backend


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, postgres_skip_reason: str | None) -> Iterator[Backend]:
    if request.param == "sqlite":
        with sqlite_backend(tmp_path / "policies.db") as opened:
            yield opened
    else:
        with postgres_backend(postgres_skip_reason) as opened:
            yield opened


def load(backend: Backend, count: int) -> None:
    operations = []
    for number in range(count):
        for entity in (parking(number), vehicle(number, x=number % 20, y=5)):
            operations.append((entity["id"], update.create(entity)))
    backend.run(backend.store.mutate("city", operations, atomic=True))


def test_policy_versions_and_history(backend: Backend) -> None:
    store, run = backend.store, backend.run
    assert run(store.load_policies()) == (0, [])
    created = run(store.change_policy("create", "p1", {"id": "p1", "n": 1}, by="key:admin"))
    assert created is not None and created.version == 1 and created.changed_by == "key:admin"
    with pytest.raises(AlreadyExists):
        run(store.change_policy("create", "p1", {"id": "p1", "n": 9}, by="key:admin"))
    run(store.change_policy("create", "p2", {"id": "p2"}, by="key:admin", source="file"))
    replaced = run(store.change_policy("replace", "p1", {"id": "p1", "n": 2}, by="key:other"))
    assert replaced is not None and replaced.version == 3
    assert run(store.change_policy("replace", "nope", {"id": "nope"}, by="x")) is None
    assert run(store.change_policy("delete", "nope", None, by="x")) is None
    version, rows = run(store.load_policies())
    assert version == 3 and [(r.id, r.version, r.document, r.source) for r in rows] == [
        ("p1", 3, {"id": "p1", "n": 2}, "api"),
        ("p2", 2, {"id": "p2"}, "file"),
    ]
    deleted = run(store.change_policy("delete", "p1", None, by="key:admin"))
    assert deleted is not None and deleted.version == 4 and deleted.document is None
    version, rows = run(store.load_policies())
    assert version == 4 and [r.id for r in rows] == ["p2"]
    history = run(store.policy_history("p1"))
    expected = [(1, {"id": "p1", "n": 1}), (3, {"id": "p1", "n": 2}), (4, None)]
    assert [(r.version, r.document) for r in history] == expected
    assert all(r.changed_at.endswith("Z") for r in history)
    recreated = run(store.change_policy("create", "p1", {"id": "p1", "n": 3}, by="key:admin"))  # after a delete
    assert recreated is not None and recreated.version == 5
    assert run(store.policy_history("never")) == []


def test_access_prefilter_counts_and_pages_in_sql(backend: Backend) -> None:
    load(backend, 30)
    store, run = backend.store, backend.run

    def query(**fields: Any) -> Any:
        return run(store.query_entities("city", EntityQuery(count=True, **fields)))

    only_parking = AccessPrefilter(types=[D + "OffStreetParking"])
    first = query(access=only_parking, limit=10)
    assert first.total == 30 and len(first.entities) == 10 and first.has_more
    assert all(e["type"] == [D + "OffStreetParking"] for e in first.entities)
    nothing = query(access=AccessPrefilter(types=()), limit=10)
    assert nothing.total == 0 and nothing.entities == []
    # patterns: any of them; one PostgreSQL reads differently (\d) is matched in Python there
    patterns = AccessPrefilter(id_patterns=[r"Vehicle:1\d$", "Parking:2$"])
    matched = query(access=patterns, limit=5)
    assert matched.total == 11 and len(matched.entities) == 5 and matched.has_more
    assert query(access=AccessPrefilter(id_patterns=[]), limit=5).total == 0
    # a type query the policy does not allow
    assert query(types=[D + "Vehicle"], access=only_parking, limit=5).total == 0


def test_policy_views_give_right_counts_and_pages(backend: Backend) -> None:
    load(backend, 30)
    store, run = backend.store, backend.run
    police = {
        "id": "police",
        "effect": "allow",
        "principals": {"roles": ["police"]},
        "actions": ["read"],
        "resources": {
            "types": ["Vehicle"],
            "area": {"type": "Polygon", "coordinates": [[[0, 0], [9.5, 0], [9.5, 10], [0, 10], [0, 0]]]},
        },
    }
    engine = authorizer(police, PUBLIC_PARKING)
    view = engine.read_view(Principal("key:p", "key", None, frozenset({"police"})), "city")
    pages = [
        run(store.query_entities("city", restrict(EntityQuery(count=True, limit=7, offset=offset), view)))
        for offset in (0, 7, 14, 21)
    ]
    # 30 parkings (public) and the vehicles at x 0..9 (numbers 0-9 and 20-29): 20
    assert {p.total for p in pages} == {50}
    seen = [e["id"] for p in pages for e in p.entities]
    assert len(seen) == len(set(seen)) == 28
    everything = run(store.query_entities("city", restrict(EntityQuery(count=True), view)))
    assert everything.total == 50 and len(everything.entities) == 50
    vehicles = [e for e in everything.entities if D + "Vehicle" in e["type"]]
    assert len(vehicles) == 20 and all(e["attrs"][D + "licensePlate"] for e in vehicles)
    # a q on the contract the public may not read finds nothing, even though every parking has one
    public = engine.read_view(ANONYMOUS, "city")
    on_contract = EntityQuery(
        types=[D + "OffStreetParking"], predicate=lambda e: D + "contract" in e["attrs"], count=True
    )
    assert run(store.query_entities("city", restrict(on_contract, public))).total == 0
    wanted = EntityQuery(types=[D + "OffStreetParking"], attrs=[D + "contract"], count=True)
    assert run(store.query_entities("city", restrict(wanted, public))).total == 0


def test_policy_service_syncs_a_file_and_versions_it(backend: Backend, tmp_path: Any) -> None:
    store, run = backend.store, backend.run
    path = tmp_path / "policies.yaml"
    import yaml

    path.write_text(yaml.safe_dump([PUBLIC_PARKING, OPERATOR]))
    service = PolicyService(store, EXPAND, policy_file=str(path))
    run(service.start())
    assert service.authorizer.read_view(ANONYMOUS, "").visible(parking(1))
    version = service.authorizer.version
    run(service.start())  # unchanged file: no new version
    assert run(store.load_policies())[0] == version
    path.write_text(yaml.safe_dump([OPERATOR]))
    changed = run(service.sync_file())
    run(service.reload())
    assert [(r.id, r.document) for r in changed] == [("public-reads-parking", None)]
    assert not service.authorizer.read_view(ANONYMOUS, "").visible(parking(1))
    path.write_text(yaml.safe_dump([OPERATOR, {"id": "broken", "effect": "allow"}]))
    with pytest.raises(ValueError, match="policy 2"):
        run(service.sync_file())
    assert run(store.load_policies())[0] == version + 1  # the broken file changed nothing


def test_postgres_policy_changes_reach_the_other_workers(postgres_skip_reason: str | None) -> None:
    with postgres_workers(postgres_skip_reason) as (loop, (writer, reader)):
        run = loop.run_until_complete
        heard: list[StoreEvent] = []
        for worker in (writer, reader):
            run(asyncio.wait_for(worker._events.listening.wait(), 10))
        here = PolicyService(writer, EXPAND)
        there = PolicyService(reader, EXPAND)
        run(here.start())
        run(there.start())
        reader.set_event_listener(there.follow(heard.append))
        run(here.change("create", "public-reads-parking", PUBLIC_PARKING, by="key:admin"))

        async def settle() -> None:
            for _ in range(100):
                if there.authorizer.version == here.authorizer.version:
                    return
                await asyncio.sleep(0.05)

        run(settle())
        assert heard == [StoreEvent("policy", "", "public-reads-parking")]
        assert there.authorizer.version == here.authorizer.version == 1
        assert there.authorizer.read_view(ANONYMOUS, "").visible(parking(1))
