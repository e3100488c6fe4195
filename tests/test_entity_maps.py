"""Entity maps (spec 5.14, 5.5.9.3): creation by /entityMaps, by the entityMap flag on query and
retrieve, reuse through the NGSILD-EntityMap header, PATCH/DELETE, expiry, tenants, paging and pruning."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.entities.expiry import now_key
from cityos.errors import BadRequestData
from cityos.query.entity_maps import EntityMap, Lifetime, format_expiry, new_map, parse_lifetime
from cityos.settings import Settings
from cityos.store import open_store

BASE = "/ngsi-ld/v1"
MAPS = BASE + "/entityMaps"
ENTITIES = BASE + "/entities"
ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
HEADER = "NGSILD-EntityMap"


def vehicle(client: TestClient, entity_id: str, speed: int, tenant: str | None = None) -> None:
    headers = {"NGSILD-Tenant": tenant} if tenant else {}
    body = {"id": entity_id, "type": "Vehicle", "speed": {"type": "Property", "value": speed}}
    response = client.post(ENTITIES, json=body, headers=headers)
    assert response.status_code == 201, response.text


def map_url(map_id: str) -> str:
    return f"{MAPS}/{quote(map_id, safe='')}"


def get_map(client: TestClient, map_id: str, **headers: str) -> Any:
    return client.get(map_url(map_id), headers=headers)


def expires_in(body: dict[str, Any]) -> float:
    expires = datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00"))
    return (expires - datetime.now(UTC)).total_seconds()


def problem(response: Any, status: int, kind: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["type"] == ERRORS + kind


@pytest.fixture
def fleet(client: TestClient) -> list[str]:
    ids = [f"urn:ngsi-ld:Vehicle:em-{n}" for n in range(5)]
    for n, entity_id in enumerate(ids):
        vehicle(client, entity_id, 30 + 20 * n)
    return ids


# -- the core --------------------------------------------------------------------------------------
class TestCore:
    @pytest.mark.parametrize(
        ("raw", "seconds"),
        [("PT1H", 3600), ("P1D", 86400), ("P1DT2H30M", 95400), ("PT0.5S", 0.5), ("P2W", 14 * 86400), ("PT90M", 5400)],
    )
    def test_lifetimes(self, raw: str, seconds: float) -> None:
        assert parse_lifetime(raw) == timedelta(seconds=seconds)

    @pytest.mark.parametrize("raw", ["1hour", "P", "PT", "P1H", "PT1D", "3600", "PT0S", "-PT1H", ""])
    def test_bad_lifetimes(self, raw: str) -> None:
        with pytest.raises(BadRequestData):
            parse_lifetime(raw)

    def test_lifetime_is_clamped_and_rounded_up(self) -> None:
        policy = Lifetime(timedelta(hours=1), timedelta(days=1))
        now = datetime(2030, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC)
        assert policy.expiry(now, None) == datetime(2030, 1, 1, 13, 0, 1, tzinfo=UTC)
        assert policy.expiry(now, timedelta(days=3650)) == datetime(2030, 1, 2, 12, 0, 1, tzinfo=UTC)
        past = datetime(2000, 1, 1, tzinfo=UTC)
        assert policy.clamp(now, past) == past
        assert policy.clamp(now, datetime(2099, 1, 1, tzinfo=UTC)) == datetime(2030, 1, 2, 12, 0, 1, tzinfo=UTC)

    def test_expiry_format(self) -> None:
        assert format_expiry(datetime(2030, 1, 1, tzinfo=UTC)) == "2030-01-01T00:00:00Z"
        assert format_expiry(datetime(2030, 1, 1, 0, 0, 0, 123_456, tzinfo=UTC)) == "2030-01-01T00:00:00.123Z"

    def test_ids_are_unique_and_ordered(self) -> None:
        made = new_map(["b", "a", "b"], datetime(2030, 1, 1, tzinfo=UTC), "type=T")
        assert made.entity_ids == ("b", "a")
        assert made.id.startswith("urn:ngsi-ld:entitymap:")


def test_store_contract_and_sweep(db_url: str) -> None:
    async def scenario() -> None:
        store = open_store(db_url)
        await store.open()
        try:
            live = new_map(["urn:x:1", "urn:x:2"], datetime.now(UTC) + timedelta(hours=1), "type=T")
            dead = new_map(["urn:x:1"], datetime.now(UTC) - timedelta(seconds=1), "")
            await store.save_entity_map("t", live)
            await store.save_entity_map("t", dead)
            assert await store.get_entity_map("t", live.id) == live
            assert await store.get_entity_map("other", live.id) is None
            assert await store.update_entity_map("t", live.id, entity_ids=["urn:x:2"])
            fetched = await store.get_entity_map("t", live.id)
            assert fetched == EntityMap(live.id, live.expires_at, ("urn:x:2",), "type=T")
            assert not await store.update_entity_map("t", "urn:nothing", entity_ids=[])
            await store.purge_expired(now_key())
            assert await store.get_entity_map("t", dead.id) is None
            assert await store.get_entity_map("t", live.id) is not None
            assert await store.delete_entity_map("t", live.id)
            assert not await store.delete_entity_map("t", live.id)
            owned = new_map(["urn:x:1"], datetime.now(UTC) + timedelta(hours=1), "", owner="key:k1")
            await store.save_entity_map("t", owned)  # the owner is kept (auth required: maps belong to it)
            assert await store.get_entity_map("t", owned.id) == owned
            assert await store.update_entity_map("t", owned.id, entity_ids=[])
            assert (await store.get_entity_map("t", owned.id)) == EntityMap(
                owned.id, owned.expires_at, (), "", "key:k1"
            )
        finally:
            await store.close()

    asyncio.run(scenario())


def test_an_older_sqlite_file_gains_the_owner_column(tmp_path: Path) -> None:
    """A file made before entity maps had owners: opening it adds the column, its maps keep working."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE entity_maps (tenant TEXT NOT NULL, id TEXT NOT NULL, expires_at TEXT NOT NULL,"
            " entity_ids BLOB NOT NULL, query TEXT NOT NULL, PRIMARY KEY (tenant, id))"
        )
        old.execute(
            "INSERT INTO entity_maps VALUES ('', 'urn:m:1', '2999-01-01T00:00:00.000000Z', '[\"urn:x:1\"]', '')"
        )
    old.close()

    async def scenario() -> None:
        store = open_store(str(path))
        await store.open()
        try:
            kept = await store.get_entity_map("", "urn:m:1")
            assert kept is not None and kept.entity_ids == ("urn:x:1",) and kept.owner is None
            owned = new_map(["urn:x:2"], datetime.now(UTC) + timedelta(hours=1), "", owner="user:erin")
            await store.save_entity_map("", owned)
            assert await store.get_entity_map("", owned.id) == owned
        finally:
            await store.close()

    asyncio.run(scenario())


# -- GET /entityMaps -------------------------------------------------------------------------------
class TestCreate:
    def test_creates_a_map_of_the_query(self, client: TestClient, fleet: list[str]) -> None:
        response = client.get(MAPS, params={"type": "Vehicle"})
        assert response.status_code == 201, response.text
        body = response.json()
        assert response.headers[HEADER] == body["id"]
        assert body["type"] == "EntityMap"
        assert body["entityMap"] == {entity_id: ["@none"] for entity_id in fleet}
        assert list(body["entityMap"]) == fleet  # query order
        assert body["expiresAt"].endswith("Z") and "." not in body["expiresAt"]
        assert 3590 < expires_in(body) <= 3601
        assert "speed" not in body

    def test_q_narrows_the_map(self, client: TestClient, fleet: list[str]) -> None:
        body = client.get(MAPS, params={"type": "Vehicle", "q": "speed>50"}).json()
        assert list(body["entityMap"]) == fleet[2:]

    def test_empty_result_gives_an_empty_map(self, client: TestClient, fleet: list[str]) -> None:
        response = client.get(MAPS, params={"type": "Vehicle", "q": "speed>1000"})
        assert response.status_code == 201
        assert response.json()["entityMap"] == {}

    def test_ld_json_carries_the_context(self, client: TestClient, fleet: list[str]) -> None:
        response = client.get(MAPS, params={"type": "Vehicle"}, headers={"Accept": "application/ld+json"})
        assert response.status_code == 201
        assert "@context" in response.json()

    @pytest.mark.parametrize(
        ("params", "kind"),
        [
            ({"id": "urn:ngsi-ld:Vehicle:em-0"}, "BadRequestData"),  # too wide
            ({"type": "Vehicle", "entityMapLifetime": "1hour"}, "BadRequestData"),
            ({"type": "Vehicle", "bogus": "1"}, "InvalidRequest"),
        ],
    )
    def test_errors(self, client: TestClient, fleet: list[str], params: dict[str, str], kind: str) -> None:
        problem(client.get(MAPS, params=params), 400, kind)

    def test_requested_lifetime_is_honoured_up_to_the_maximum(self, client: TestClient, fleet: list[str]) -> None:
        short = client.get(MAPS, params={"type": "Vehicle", "entityMapLifetime": "PT10M"}).json()
        assert 590 < expires_in(short) <= 601
        long = client.get(MAPS, params={"type": "Vehicle", "entityMapLifetime": "P3650D"}).json()
        assert 86390 < expires_in(long) <= 86401

    def test_unknown_tenant(self, client: TestClient, fleet: list[str]) -> None:
        response = client.get(MAPS, params={"type": "Vehicle"}, headers={"NGSILD-Tenant": "nobody"})
        assert response.status_code == 404


# -- GET/PATCH/DELETE /entityMaps/{id} ---------------------------------------------------------------
class TestResource:
    def test_retrieve(self, client: TestClient, fleet: list[str]) -> None:
        created = client.get(MAPS, params={"type": "Vehicle"}).json()
        response = get_map(client, created["id"])
        assert response.status_code == 200
        assert response.json() == created

    @pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
    def test_invalid_and_unknown_ids(self, client: TestClient, method: str) -> None:
        body = b'{"expiresAt": "2099-01-01T00:00:00Z"}' if method == "PATCH" else None
        headers = {"Content-Type": "application/json"} if body else {}
        bad = client.request(method, MAPS + "/not%20a%20uri", content=body, headers=headers)
        problem(bad, 400, "BadRequestData")
        unknown = client.request(method, map_url("urn:ngsi-ld:entitymap:nothing"), content=body, headers=headers)
        problem(unknown, 404, "ResourceNotFound")
        assert unknown.json()["title"] != unknown.json()["detail"]

    def test_patch_clamps_and_ignores_output_only_members(self, client: TestClient, fleet: list[str]) -> None:
        map_id = client.get(MAPS, params={"type": "Vehicle"}).json()["id"]
        fragment = {
            "id": "urn:ngsi-ld:entitymap:other",
            "type": "EntityMap",
            "expiresAt": "2099-01-01T00:00:00Z",
            "entityMap": {"urn:ngsi-ld:Vehicle:injected": ["@none"]},
        }
        response = client.patch(map_url(map_id), json=fragment)
        assert response.status_code == 204, response.text
        body = get_map(client, map_id).json()
        assert body["id"] == map_id
        assert body["expiresAt"] < "2099-01-01T00:00:00Z"
        assert 86390 < expires_in(body) <= 86401
        assert list(body["entityMap"]) == fleet

    def test_patch_shortens(self, client: TestClient, fleet: list[str]) -> None:
        map_id = client.get(MAPS, params={"type": "Vehicle"}).json()["id"]
        soon = format_expiry(datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5))
        assert client.patch(map_url(map_id), json={"expiresAt": soon}).status_code == 204
        assert get_map(client, map_id).json()["expiresAt"] == soon

    @pytest.mark.parametrize(
        "fragment",
        ['{"expiresAt": "tomorrow"}', "{}", '{"expiresAt": 5}', '{"expiresAt": "2099-01-01T00:00:00Z", "x": 1}', "[]"],
    )
    def test_patch_errors(self, client: TestClient, fleet: list[str], fragment: str) -> None:
        map_id = client.get(MAPS, params={"type": "Vehicle"}).json()["id"]
        response = client.patch(map_url(map_id), content=fragment, headers={"Content-Type": "application/json"})
        problem(response, 400, "BadRequestData")

    def test_past_expiry_makes_the_map_unreachable(self, client: TestClient, fleet: list[str]) -> None:
        map_id = client.get(MAPS, params={"type": "Vehicle"}).json()["id"]
        assert client.patch(map_url(map_id), json={"expiresAt": "2000-01-01T00:00:00Z"}).status_code == 204
        problem(get_map(client, map_id), 404, "ResourceNotFound")
        problem(client.patch(map_url(map_id), json={"expiresAt": "2099-01-01T00:00:00Z"}), 404, "ResourceNotFound")
        problem(client.delete(map_url(map_id)), 404, "ResourceNotFound")

    def test_delete(self, client: TestClient, fleet: list[str]) -> None:
        map_id = client.get(MAPS, params={"type": "Vehicle"}).json()["id"]
        response = client.delete(map_url(map_id))
        assert response.status_code == 204 and response.text == ""
        problem(get_map(client, map_id), 404, "ResourceNotFound")
        problem(client.delete(map_url(map_id)), 404, "ResourceNotFound")


def test_maps_expire_by_themselves(db_url: str) -> None:
    settings = Settings(database=db_url, entity_map_lifetime=0.1)
    with TestClient(create_app(settings)) as client:
        vehicle(client, "urn:ngsi-ld:Vehicle:brief", 10)
        created = client.get(MAPS, params={"type": "Vehicle"})
        map_id = created.json()["id"]
        time.sleep(max(0.0, expires_in(created.json())) + 0.1)
        problem(get_map(client, map_id), 404, "ResourceNotFound")
        reused = client.get(ENTITIES, params={"type": "Vehicle"}, headers={HEADER: map_id})
        assert reused.status_code == 201 and reused.headers[HEADER] != map_id


def test_lifetime_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Settings.from_env({}, entity_map_lifetime=7200.0, entity_map_max_lifetime=3600.0)
    with pytest.raises(ValueError):
        Settings.from_env({}, entity_map_lifetime=0.0)


class TestTenants:
    def test_maps_belong_to_their_tenant(self, client: TestClient, fleet: list[str]) -> None:
        vehicle(client, "urn:ngsi-ld:Vehicle:elsewhere", 40, tenant="other")
        map_id = client.get(MAPS, params={"type": "Vehicle"}).json()["id"]
        other = {"NGSILD-Tenant": "other"}
        hidden = get_map(client, map_id, **other)
        assert hidden.status_code == 404 and fleet[0] not in hidden.text
        assert client.delete(map_url(map_id), headers=other).status_code == 404
        assert (
            client.patch(map_url(map_id), json={"expiresAt": "2000-01-01T00:00:00Z"}, headers=other).status_code == 404
        )
        assert get_map(client, map_id).status_code == 200
        assert get_map(client, map_id, **{"NGSILD-Tenant": "nobody"}).status_code == 404
        # a reference to another tenant's map is dead there: a new map of that tenant is made
        response = client.get(ENTITIES, params={"type": "Vehicle"}, headers={**other, HEADER: map_id})
        assert response.status_code == 201
        assert [e["id"] for e in response.json()] == ["urn:ngsi-ld:Vehicle:elsewhere"]
        assert response.headers[HEADER] != map_id

    def test_tenant_map_contents(self, client: TestClient, fleet: list[str]) -> None:
        vehicle(client, "urn:ngsi-ld:Vehicle:elsewhere", 40, tenant="other")
        other = {"NGSILD-Tenant": "other"}
        body = client.get(MAPS, params={"type": "Vehicle"}, headers=other).json()
        assert list(body["entityMap"]) == ["urn:ngsi-ld:Vehicle:elsewhere"]
        assert get_map(client, body["id"], **other).status_code == 200
        assert get_map(client, body["id"]).status_code == 404


# -- the entityMap flag and the NGSILD-EntityMap header on /entities ----------------------------------
class TestQueryEntities:
    def test_flag_creates_a_map_and_answers_201(self, client: TestClient, fleet: list[str]) -> None:
        response = client.get(ENTITIES, params={"type": "Vehicle", "entityMap": "true"})
        assert response.status_code == 201, response.text
        assert [e["id"] for e in response.json()] == fleet
        map_id = response.headers[HEADER]
        assert list(get_map(client, map_id).json()["entityMap"]) == fleet

    def test_header_reuses_the_map_and_echoes_it(self, client: TestClient, fleet: list[str]) -> None:
        map_id = client.get(ENTITIES, params={"type": "Vehicle", "entityMap": "true"}).headers[HEADER]
        for reference in (map_id, f"{MAPS}/{map_id}", f"http://127.0.0.1:1026{MAPS}/{quote(map_id, safe='')}"):
            response = client.get(ENTITIES, params={"type": "Vehicle"}, headers={HEADER: reference})
            assert response.status_code == 200, response.text
            assert response.headers[HEADER] == reference
            assert [e["id"] for e in response.json()] == fleet

    def test_flag_with_live_header_reuses(self, client: TestClient, fleet: list[str]) -> None:
        map_id = client.get(MAPS, params={"type": "Vehicle"}).json()["id"]
        response = client.get(ENTITIES, params={"type": "Vehicle", "entityMap": "true"}, headers={HEADER: map_id})
        assert response.status_code == 200
        assert response.headers[HEADER] == map_id

    def test_dead_reference_creates_a_new_map(self, client: TestClient, fleet: list[str]) -> None:
        dead = "urn:ngsi-ld:entitymap:dead"
        response = client.get(ENTITIES, params={"type": "Vehicle"}, headers={HEADER: dead})
        assert response.status_code == 201
        assert "dead" not in response.headers[HEADER]
        assert get_map(client, response.headers[HEADER]).status_code == 200
        garbage = client.get(ENTITIES, params={"type": "Vehicle"}, headers={HEADER: "not a uri/"})
        assert garbage.status_code == 201

    def test_no_map_without_flag_or_header(self, client: TestClient, fleet: list[str]) -> None:
        response = client.get(ENTITIES, params={"type": "Vehicle", "entityMap": "false"})
        assert response.status_code == 200
        assert HEADER not in response.headers

    def test_bad_flag_and_lifetime(self, client: TestClient, fleet: list[str]) -> None:
        problem(client.get(ENTITIES, params={"type": "Vehicle", "entityMap": "maybe"}), 400, "BadRequestData")
        bad = client.get(ENTITIES, params={"type": "Vehicle", "entityMap": "true", "entityMapLifetime": "soon"})
        problem(bad, 400, "BadRequestData")
        ok = client.get(ENTITIES, params={"type": "Vehicle", "entityMap": "true", "entityMapLifetime": "PT2M"})
        assert 110 < expires_in(get_map(client, ok.headers[HEADER]).json()) <= 121

    def test_post_query_reuses_a_map(self, client: TestClient, fleet: list[str]) -> None:
        map_id = client.get(MAPS, params={"type": "Vehicle", "q": "speed>50"}).json()["id"]
        vehicle(client, "urn:ngsi-ld:Vehicle:late", 99)
        body = {"type": "Query", "entities": [{"type": "Vehicle"}], "q": "speed>50"}
        response = client.post(BASE + "/entityOperations/query", json=body, headers={HEADER: map_id})
        assert response.status_code == 200, response.text
        assert [e["id"] for e in response.json()] == fleet[2:]
        assert response.headers[HEADER] == map_id


class TestPaging:
    def test_pages_follow_the_map(self, client: TestClient, fleet: list[str]) -> None:
        created = client.get(ENTITIES, params={"type": "Vehicle", "entityMap": "true", "limit": "2"})
        assert created.status_code == 201
        assert [e["id"] for e in created.json()] == fleet[:2]
        map_id = created.headers[HEADER]
        assert "entityMap" not in created.headers["Link"]  # following the link must not make another map
        assert "offset=2" in created.headers["Link"]
        vehicle(client, "urn:ngsi-ld:Vehicle:em-late", 70)  # arrives after the map: not in its pages
        seen: list[str] = []
        for offset in (0, 2, 4):
            response = client.get(
                ENTITIES, params={"type": "Vehicle", "limit": "2", "offset": str(offset)}, headers={HEADER: map_id}
            )
            assert response.status_code == 200
            seen += [e["id"] for e in response.json()]
            link = response.headers.get("Link", "")
            assert "urn:ngsi-ld:Vehicle" not in link and "type=Vehicle" in link
            assert ('rel="next"' in link) == (offset < 4)
            assert ('rel="prev"' in link) == (offset > 0)
        assert seen == fleet

    def test_links_carry_the_original_query(self, client: TestClient, fleet: list[str]) -> None:
        map_id = client.get(MAPS, params={"type": "Vehicle", "q": "speed>10"}).json()["id"]
        response = client.get(ENTITIES, params={"type": "Vehicle", "limit": "2"}, headers={HEADER: map_id})
        next_link = response.headers["Link"]
        assert "q=speed%3E10" in next_link and "type=Vehicle" in next_link and "offset=2" in next_link

    def test_deleted_entities_are_pruned(self, client: TestClient, fleet: list[str]) -> None:
        map_id = client.get(ENTITIES, params={"type": "Vehicle", "entityMap": "true"}).headers[HEADER]
        assert client.delete(f"{ENTITIES}/{fleet[1]}").status_code == 204
        response = client.get(ENTITIES, params={"type": "Vehicle", "limit": "3"}, headers={HEADER: map_id})
        assert [e["id"] for e in response.json()] == [fleet[0], fleet[2], fleet[3]]
        assert list(get_map(client, map_id).json()["entityMap"]) == [fleet[0], *fleet[2:]]
        counted = client.get(
            ENTITIES, params={"type": "Vehicle", "limit": "2", "count": "true"}, headers={HEADER: map_id}
        )
        assert counted.headers["NGSILD-Results-Count"] == "4"
        assert len(counted.json()) == 2

    def test_entities_that_stop_matching_are_pruned(self, client: TestClient, fleet: list[str]) -> None:
        map_id = client.get(MAPS, params={"type": "Vehicle", "q": "speed>50"}).json()["id"]
        patch = {"speed": {"type": "Property", "value": 1}}
        assert client.patch(f"{ENTITIES}/{fleet[3]}/attrs", json=patch).status_code == 204
        response = client.get(ENTITIES, params={"type": "Vehicle", "q": "speed>50"}, headers={HEADER: map_id})
        assert [e["id"] for e in response.json()] == [fleet[2], fleet[4]]
        assert list(get_map(client, map_id).json()["entityMap"]) == [fleet[2], fleet[4]]

    def test_a_different_query_filters_without_pruning(self, client: TestClient, fleet: list[str]) -> None:
        map_id = client.get(MAPS, params={"type": "Vehicle"}).json()["id"]
        response = client.get(ENTITIES, params={"type": "Vehicle", "q": "speed>100"}, headers={HEADER: map_id})
        assert [e["id"] for e in response.json()] == fleet[4:]
        assert list(get_map(client, map_id).json()["entityMap"]) == fleet


# -- GET /entities/{id} ----------------------------------------------------------------------------
class TestRetrieveEntity:
    def test_flag_creates_a_map_of_the_entity(self, client: TestClient, fleet: list[str]) -> None:
        response = client.get(f"{ENTITIES}/{fleet[0]}", params={"entityMap": "true"})
        assert response.status_code == 200
        assert response.json()["id"] == fleet[0] and "entityMap" not in response.json()
        assert get_map(client, response.headers[HEADER]).json()["entityMap"] == {fleet[0]: ["@none"]}

    def test_live_reference_is_echoed(self, client: TestClient, fleet: list[str]) -> None:
        reference = client.get(f"{ENTITIES}/{fleet[0]}", params={"entityMap": "true"}).headers[HEADER]
        response = client.get(f"{ENTITIES}/{fleet[0]}", headers={HEADER: reference})
        assert response.status_code == 200
        assert response.headers[HEADER] == reference

    def test_dead_reference_makes_a_new_map(self, client: TestClient, fleet: list[str]) -> None:
        response = client.get(f"{ENTITIES}/{fleet[0]}", headers={HEADER: "urn:ngsi-ld:entitymap:gone"})
        assert response.status_code == 200
        assert "gone" not in response.headers[HEADER]
        assert get_map(client, response.headers[HEADER]).status_code == 200

    def test_no_map_for_a_missing_entity(self, client: TestClient, fleet: list[str]) -> None:
        response = client.get(f"{ENTITIES}/urn:ngsi-ld:Vehicle:none", params={"entityMap": "true"})
        assert response.status_code == 404
        assert HEADER not in response.headers

    def test_geojson_carries_the_header(self, client: TestClient, fleet: list[str]) -> None:
        response = client.get(
            f"{ENTITIES}/{fleet[0]}", params={"entityMap": "true"}, headers={"Accept": "application/geo+json"}
        )
        assert response.status_code == 200
        assert HEADER in response.headers
