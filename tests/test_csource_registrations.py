"""Context source registrations in full (spec 5.2.9, 5.9, 5.10, 4.3.6.3), on a real database of
each back-end: validation of the management members, contextSourceInfo and the mode rules, the
409 conflicts with exclusive registrations and local entities, extra properties kept, queries by
q, csf, geo-query, scopeQ and the temporal query, registrations that cover every entity, and
pagination links that keep the filters."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.settings import Settings

BASE = "/ngsi-ld/v1/csourceRegistrations"
ENTITIES = "/ngsi-ld/v1/entities"
ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
NUMBERS = itertools.count()


@pytest.fixture(scope="module")
def client(module_db_url: str) -> Iterator[TestClient]:
    """One app (lifespan included) over a database of the module's own, per back-end."""
    with TestClient(create_app(Settings(database=module_db_url)), base_url="http://127.0.0.1:1026") as test_client:
        yield test_client


def new_id(kind: str = "ContextSourceRegistration") -> str:
    return f"urn:ngsi-ld:{kind}:t{next(NUMBERS)}"


def registration(**members: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": new_id(),
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "Building"}]}],
        "endpoint": "http://source.example.org:1026",
    }
    body.update(members)
    return {k: v for k, v in body.items() if v is not None}


def create(client: TestClient, **members: Any) -> str:
    body = registration(**members)
    response = client.post(BASE, json=body)
    assert response.status_code == 201, response.text
    return str(body["id"])


def assert_problem(response: httpx.Response, status: int, type_name: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["type"] == ERRORS + type_name


def ids(client: TestClient, **params: str) -> list[str]:
    response = client.get(BASE, params=params)
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()]


def exclusive(entity_id: str, *names: str, mode: str = "exclusive") -> dict[str, Any]:
    info = {"entities": [{"id": entity_id, "type": "Vehicle"}], "propertyNames": list(names)}
    return {"mode": mode, "information": [info]}


@pytest.mark.parametrize(
    "members",
    [
        {"contextSourceInfo": [{"key": "X-Custom", "value": 123}]},
        {"contextSourceInfo": [{"key": "X-Custom"}]},
        {"contextSourceInfo": [{"key": 5, "value": "v"}]},
        {"contextSourceInfo": {"key": "a", "value": "b"}},
        {"management": "yes"},
        {"management": {"cacheDuration": "bogus"}},
        {"management": {"cooldown": 0}},
        {"management": {"timeout": -5}},
        {"management": {"localOnly": "yes"}},
        {"mode": "sometimes"},
        {"operations": []},
        {"operations": ["teleport"]},
        {"observationInterval": {"startAt": "yesterday"}},
        {"managementInterval": {"startAt": "2021-01-02T00:00:00Z", "endAt": "2021-01-01T00:00:00Z"}},
        {"location": {"type": "Point", "coordinates": [500, 0]}},
        {"scope": "no-slash"},
        {"mode": "auxiliary", "operations": ["updateEntity"]},
        {"mode": "exclusive"},  # a type-only entity group
        {"mode": "exclusive", "information": [{"entities": [{"idPattern": ".*", "type": "Vehicle"}]}]},
        {"mode": "exclusive", "information": [{"entities": [{"id": "urn:ngsi-ld:Vehicle:x", "type": "Vehicle"}]}]},
        {"bad<name": 1},
    ],
)
def test_invalid_members_are_bad_request_data(client: TestClient, members: dict[str, Any]) -> None:
    assert_problem(client.post(BASE, json=registration(**members)), 400, "BadRequestData")


def test_valid_members_are_stored_and_extra_properties_kept(client: TestClient) -> None:
    management = {"cacheDuration": "PT5M", "cooldown": 500, "timeout": 3000, "localOnly": True}
    registration_id = create(
        client,
        management=management,
        contextSourceInfo=[{"key": "X-Auth-Token", "value": "abc"}],
        mode="auxiliary",
        operations=["retrieveOps"],
        csourceProperty1="aValue",
        scope=["/Madrid/Centro"],
        createdAt="2020-01-01T00:00:00Z",  # read-only: ignored
    )
    body = client.get(f"{BASE}/{registration_id}").json()
    assert body["management"] == management and body["mode"] == "auxiliary"
    assert body["csourceProperty1"] == "aValue" and "createdAt" not in body
    assert body["contextSourceInfo"][0]["key"] == "X-Auth-Token"
    assert client.patch(f"{BASE}/{registration_id}", json={"csourceProperty1": None, "p2": 7}).status_code == 204
    body = client.get(f"{BASE}/{registration_id}").json()
    assert "csourceProperty1" not in body and body["p2"] == 7
    assert_problem(client.patch(f"{BASE}/{registration_id}", json={"mode": "fast"}), 400, "BadRequestData")


def test_exclusive_conflicts_are_409(client: TestClient) -> None:
    vehicle = new_id("Vehicle")
    first = create(client, **exclusive(vehicle, "speed"))
    for mode in ("exclusive", "redirect"):
        response = client.post(BASE, json=registration(**exclusive(vehicle, "speed", mode=mode)))
        assert_problem(response, 409, "Conflict")
    # other attributes of the same entity, or an inclusive registration: no conflict
    create(client, **exclusive(vehicle, "fuel"))
    create(client, **exclusive(vehicle, "speed", mode="inclusive"))
    # redirect registrations may overlap each other
    other = new_id("Vehicle")
    create(client, **exclusive(other, "speed", mode="redirect"))
    create(client, **exclusive(other, "speed", mode="redirect"))
    # an update that would create the overlap is refused as well
    late = create(client, **exclusive(vehicle, "colour"))
    assert_problem(client.patch(f"{BASE}/{late}", json=exclusive(vehicle, "speed")), 409, "Conflict")
    assert client.delete(f"{BASE}/{first}").status_code == 204
    assert client.patch(f"{BASE}/{late}", json=exclusive(vehicle, "speed")).status_code == 204


def test_conflicts_with_local_entities(client: TestClient) -> None:
    entity_id = new_id("Vehicle")
    entity = {"id": entity_id, "type": "Vehicle", "speed": {"type": "Property", "value": 3}}
    assert client.post(ENTITIES, json=entity).status_code == 201
    assert_problem(
        client.post(BASE, json=registration(**exclusive(entity_id, "speed", mode="redirect"))), 409, "Conflict"
    )
    assert_problem(client.post(BASE, json=registration(**exclusive(entity_id, "speed"))), 409, "Conflict")
    create(client, **exclusive(entity_id, "fuel"))  # an attribute the local entity does not have


def test_queries_by_q_csf_geo_scope_and_time(client: TestClient) -> None:
    kind = f"Shop{next(NUMBERS)}"
    info = [{"entities": [{"type": kind}]}]
    a = create(
        client,
        information=info,
        endpoint="http://csf-a.example.com",
        scope="/Madrid/Centro",
        location={"type": "Point", "coordinates": [8.68, 49.41]},
        shelf="aValue",
        observationInterval={"startAt": "2020-08-01T22:07:00Z", "endAt": "2021-08-01T21:07:00Z"},
    )
    b = create(
        client,
        information=info,
        endpoint="http://csf-b.example.com",
        scope="/Berlin",
        managementInterval={"startAt": "2022-01-01T00:00:00Z"},
    )
    assert ids(client, type=kind) == [a, b]
    assert ids(client, type=kind, q='shelf=="aValue"') == [a]
    assert ids(client, q='shelf=="aValue"') == [a]  # q alone is a query
    assert ids(client, type=kind, csf='endpoint=="http://csf-b.example.com"') == [b]
    assert ids(client, type=kind, scopeQ="/Madrid/#") == [a]
    geo = {"georel": "near;maxDistance==2000", "geometry": "Point", "coordinates": "[8.68,49.41]"}
    assert ids(client, type=kind, **geo) == [a]
    assert ids(client, type=kind, **{**geo, "coordinates": "[0,0]"}) == []
    assert ids(client, type=kind, timerel="before", timeAt="2021-08-01T22:00:00Z") == [a]
    assert ids(client, type=kind, timerel="after", timeAt="2021-09-01T00:00:00Z") == []
    assert ids(client, type=kind, timeproperty="createdAt", timerel="after", timeAt="2023-01-01T00:00:00Z") == [b]
    for params in (
        {},
        {"type": kind, "q": "(broken"},
        {"type": kind, "georel": "within"},
        {"type": kind, "timerel": "before"},
        {"type": kind, "timerel": "soon", "timeAt": "2021-01-01T00:00:00Z"},
        {"type": kind, "scopeQ": "no-slash"},
    ):
        assert_problem(client.get(BASE, params=params), 400, "BadRequestData")
    assert_problem(client.get(BASE, params={"type": kind, "what": "x"}), 400, "InvalidRequest")


def test_registration_without_entities_covers_every_entity(client: TestClient) -> None:
    name = f"shelfCount{next(NUMBERS)}"
    everything = create(client, information=[{"propertyNames": [name]}])
    found = ids(client, type="OffStreetParking", idPattern=".*downtown$")
    assert everything in found
    assert everything in ids(client, type="AnyTypeAtAll", attrs=name)
    assert everything not in ids(client, type="AnyTypeAtAll", attrs="otherAttribute")


def test_pagination_links_keep_the_filters_and_count(client: TestClient) -> None:
    kind = f"Paged{next(NUMBERS)}"
    made = [create(client, information=[{"entities": [{"type": kind}]}]) for _ in range(3)]
    # attrs: the registration without entities of the test above covers this type too, not this name
    response = client.get(f"{BASE}?type={kind}&attrs=pageName&count=true&limit=1&offset=1")
    assert [r["id"] for r in response.json()] == made[1:2]
    assert response.headers["ngsild-results-count"] == "3"
    links = sorted(v.replace(" ", "") for v in response.headers.get_list("link") if "json-ld#context" not in v)
    assert links == [
        f'<{BASE}?type={kind}&attrs=pageName&count=true&limit=1&offset=0>;rel="prev";type="application/json"',
        f'<{BASE}?type={kind}&attrs=pageName&count=true&limit=1&offset=2>;rel="next";type="application/json"',
    ]
    following = client.get(links[1][1 : links[1].index(">")])
    assert [r["id"] for r in following.json()] == made[2:]
    assert following.headers["ngsild-results-count"] == "3"
