"""The temporal API (spec 5.6.11-5.6.18, 5.7.3-5.7.4, 6.18-6.24): each operation, its error paths,
the time window, lastN, the three representations, aggregation and temporal pagination."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.settings import Settings

BASE = "/ngsi-ld/v1"
TEMPORAL = BASE + "/temporal/entities"
QUERY = BASE + "/temporal/entityOperations/query"
ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
VEHICLE = "urn:ngsi-ld:Vehicle:T1"


def instances(*pairs: tuple[Any, str], **extra: Any) -> list[dict[str, Any]]:
    return [{"type": "Property", "value": value, "observedAt": at, **extra} for value, at in pairs]


def vehicle(entity_id: str = VEHICLE, **attrs: Any) -> dict[str, Any]:
    """The suite's vehicle: speed 120/80/100 at 12:03/12:05/12:07, fuel 67/53/40 at 12:03/13:05/14:07."""
    body: dict[str, Any] = {
        "id": entity_id,
        "type": "Vehicle",
        "speed": instances((120, "2020-08-01T12:03:00Z"), (80, "2020-08-01T12:05:00Z"), (100, "2020-08-01T12:07:00Z")),
        "fuelLevel": instances(
            (67, "2020-08-01T12:03:00Z"), (53, "2020-08-01T13:05:00Z"), (40, "2020-08-01T14:07:00Z")
        ),
    }
    return {**body, **attrs}


def create(client: TestClient, body: dict[str, Any], status: int = 201) -> None:
    response = client.post(TEMPORAL, json=body)
    assert response.status_code == status, response.text
    assert response.text == ""


def get(client: TestClient, entity_id: str = VEHICLE, **params: Any) -> Any:
    response = client.get(f"{TEMPORAL}/{entity_id}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def values(attribute: list[dict[str, Any]]) -> list[Any]:
    return [instance["value"] for instance in attribute]


def problem(response: Any, status: int, kind: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["type"] == ERRORS + kind


@pytest.fixture
def car(client: TestClient) -> str:
    create(client, vehicle())
    return VEHICLE


# -- create, retrieve, upsert ---------------------------------------------------------------------------
def test_create_then_retrieve_every_attribute_as_an_array_with_instance_ids(client: TestClient) -> None:
    response = client.post(TEMPORAL, json=vehicle())
    assert response.status_code == 201 and response.text == ""
    assert response.headers["Location"] == f"{TEMPORAL}/{VEHICLE}"
    body = get(client)
    assert body["id"] == VEHICLE and body["type"] == "Vehicle"
    assert values(body["speed"]) == [120, 80, 100]
    assert all(i["instanceId"].startswith("urn:ngsi-ld:Instance:") for i in body["speed"] + body["fuelLevel"])
    assert set(body["speed"][0]) == {"type", "value", "observedAt", "instanceId"}
    assert "@context" not in body


def test_system_attributes_only_on_request(client: TestClient, car: str) -> None:
    instance = get(client, options="sysAttrs")["speed"][0]
    assert {"createdAt", "modifiedAt"} <= set(instance)


def test_upsert_replaces_same_observed_at_and_appends_the_rest(client: TestClient, car: str) -> None:
    update = vehicle(speed=instances((121, "2020-08-01T12:03:00Z"), (99, "2020-08-01T12:09:00Z")))
    create(client, update, status=204)
    body = get(client)
    assert values(body["speed"]) == [121, 80, 100, 99]
    assert len(body["fuelLevel"]) == 3  # identical instances are not duplicated


def test_types_are_unioned_and_null_is_an_ordinary_value(client: TestClient, car: str) -> None:
    more = {
        "id": VEHICLE,
        "type": ["Vehicle", "Truck"],
        "speed": {"value": "urn:ngsi-ld:null", "observedAt": "2020-08-02T00:00:00Z"},
    }
    create(client, more, status=204)
    body = get(client)
    assert body["type"] == ["Vehicle", "Truck"]
    assert values(body["speed"])[-1] == "urn:ngsi-ld:null"


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({"id": "", "type": "Vehicle"}, "BadRequestData"),
        ({"id": "notAUri", "type": "Vehicle"}, "BadRequestData"),
        ({"id": VEHICLE}, "BadRequestData"),
        ({"id": VEHICLE, "type": "Vehicle", "expiresAt": "urn:ngsi-ld:null"}, "BadRequestData"),
        (
            {"id": VEHICLE, "type": "Vehicle", "speed": {"value": 1, "observedAt": "2026-03-01T02:00:00+03:00"}},
            "BadRequestData",
        ),
    ],
)
def test_create_refuses_bad_entities(client: TestClient, body: dict[str, Any], kind: str) -> None:
    problem(client.post(TEMPORAL, json=body), 400, kind)
    assert client.get(f"{TEMPORAL}/{VEHICLE}").status_code == 404  # nothing stored


def test_create_refuses_invalid_and_empty_json(client: TestClient) -> None:
    headers = {"Content-Type": "application/json"}
    problem(client.post(TEMPORAL, content=b'{"id":,,}', headers=headers), 400, "InvalidRequest")
    problem(client.post(TEMPORAL + "/", content=b"", headers=headers), 400, "InvalidRequest")


def test_retrieve_errors(client: TestClient, car: str) -> None:
    problem(client.get(f"{TEMPORAL}/invalidUri"), 400, "BadRequestData")
    problem(client.get(f"{TEMPORAL}/urn:ngsi-ld:Vehicle:unknown"), 404, "ResourceNotFound")
    problem(client.get(f"{TEMPORAL}/{VEHICLE}", params={"attrs": "unknown"}), 404, "ResourceNotFound")
    problem(client.get(f"{TEMPORAL}/{VEHICLE}", params={"pick": "unknown"}), 404, "ResourceNotFound")
    problem(client.get(f"{TEMPORAL}/{VEHICLE}", params={"pick": "speed", "omit": "speed"}), 400, "BadRequestData")
    problem(client.get(f"{TEMPORAL}/{VEHICLE}", params={"options": "bogus"}), 400, "InvalidRequest")
    problem(client.get(f"{TEMPORAL}/{VEHICLE}", params={"format": "bogus"}), 400, "InvalidRequest")


def test_pick_and_omit(client: TestClient, car: str) -> None:
    assert set(get(client, pick="speed")) == {"speed"}
    assert set(get(client, pick="id,speed")) == {"id", "speed"}
    assert set(get(client, omit="type,speed")) == {"id", "fuelLevel"}


# -- the time window -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "speeds", "fuel"),
    [
        ({"timerel": "after", "timeAt": "2020-08-01T12:05:00Z"}, [80, 100], [53, 40]),
        ({"timerel": "after", "timeAt": "2020-08-01T12:05:00.000Z"}, [80, 100], [53, 40]),
        ({"timerel": "before", "timeAt": "2020-08-01T12:05:00Z"}, [120], [67]),
        ({"timerel": "between", "timeAt": "2020-08-01T12:03:00Z", "endTimeAt": "2020-08-01T12:05:00Z"}, [120], [67]),
        ({"timerel": "after", "timeAt": "2020-08-01T13:03:00Z"}, None, [53, 40]),
        ({"lastN": "2"}, [80, 100], [53, 40]),
        ({"lastN": "7"}, [120, 80, 100], [67, 53, 40]),
    ],
)
def test_window_and_last_n(client: TestClient, car: str, params: dict[str, str], speeds: Any, fuel: Any) -> None:
    body = get(client, **params)
    assert (values(body["speed"]) if "speed" in body else None) == speeds  # an emptied attribute is left out
    assert values(body["fuelLevel"]) == fuel


@pytest.mark.parametrize(
    "params",
    [
        {"timerel": "after"},
        {"timerel": "between", "timeAt": "2020-08-01T12:00:00Z"},
        {"timerel": "during", "timeAt": "2020-08-01T12:00:00Z"},
        {"timerel": "after", "timeAt": "2020-08-01"},
        {"timerel": "after", "timeAt": "2020-08-01T12:00:00Z", "timeproperty": "expiresAt"},
        {"lastN": "0"},
        {"lastN": "2.5"},
    ],
)
def test_window_errors(client: TestClient, car: str, params: dict[str, str]) -> None:
    problem(client.get(f"{TEMPORAL}/{VEHICLE}", params=params), 400, "BadRequestData")


# -- representations --------------------------------------------------------------------------------------
def test_simplified_representation_of_every_attribute_type(client: TestClient) -> None:
    at = "2020-08-01T12:00:00Z"
    body = {
        "id": VEHICLE,
        "type": "Vehicle",
        "speed": instances((1, at), (2, "2020-08-01T13:00:00Z")),
        "location": [{"type": "GeoProperty", "value": {"type": "Point", "coordinates": [1, 2]}, "observedAt": at}],
        "owner": [{"type": "Relationship", "object": "urn:ngsi-ld:Person:1", "observedAt": at}],
        "label": [{"type": "LanguageProperty", "languageMap": {"en": "car"}, "observedAt": at}],
        "config": [{"type": "JsonProperty", "json": {"a": 1}, "observedAt": at}],
        "category": [{"type": "VocabProperty", "vocab": "monument", "observedAt": at}],
        "depths": [{"type": "ListProperty", "valueList": [1.2, 3.4], "observedAt": at}],
        "route": [{"type": "ListRelationship", "objectList": [{"object": "urn:ngsi-ld:Road:1"}], "observedAt": at}],
        "fuelLevel": [*instances((5, at)), *instances((6, at), datasetId="urn:ngsi-ld:Dataset:b")],
    }
    create(client, body)
    simple = get(client, options="temporalValues")
    assert simple["speed"] == {"type": "Property", "values": [[1, at], [2, "2020-08-01T13:00:00Z"]]}
    assert simple["location"] == {"type": "GeoProperty", "values": [[{"type": "Point", "coordinates": [1, 2]}, at]]}
    assert simple["owner"] == {"type": "Relationship", "objects": [["urn:ngsi-ld:Person:1", at]]}
    assert simple["label"] == {"type": "LanguageProperty", "languageMaps": [[{"languageMap": {"en": "car"}}, at]]}
    assert simple["config"] == {"type": "JsonProperty", "jsons": [[{"json": {"a": 1}}, at]]}
    assert simple["category"] == {"type": "VocabProperty", "vocabs": [[{"vocab": "monument"}, at]]}
    assert simple["depths"] == {"type": "ListProperty", "valueLists": [[[1.2, 3.4], at]]}
    assert simple["route"] == {"type": "ListRelationship", "objectLists": [[["urn:ngsi-ld:Road:1"], at]]}
    assert simple["fuelLevel"] == [
        {"type": "Property", "values": [[5, at]]},
        {"type": "Property", "values": [[6, at]], "datasetId": "urn:ngsi-ld:Dataset:b"},
    ]
    assert get(client, format="temporalValues", options="aggregatedValues", aggrMethods="sum") == simple


@pytest.mark.parametrize(
    ("methods", "duration", "speed", "fuel"),
    [
        ("avg", "PT1H", {"avg": [[100, "2020-08-01T12:03:00Z", "2020-08-01T13:03:00Z"]]}, None),
        (
            "min,max",
            "P1D",
            {"min": [[80, "2020-08-01T12:03:00Z", "2020-08-02T12:03:00Z"]]},
            {"max": [[67, "2020-08-01T12:03:00Z", "2020-08-02T12:03:00Z"]]},
        ),
        (
            "totalCount,distinctCount,sum,sumsq",
            "PT0S",
            {
                "totalCount": [[3, "2020-08-01T12:03:00Z", "2020-08-01T12:07:00Z"]],
                "sumsq": [[30800, "2020-08-01T12:03:00Z", "2020-08-01T12:07:00Z"]],
            },
            None,
        ),
    ],
)
def test_aggregations(client: TestClient, car: str, methods: str, duration: str, speed: Any, fuel: Any) -> None:
    body = get(client, options="aggregatedValues", aggrMethods=methods, aggrPeriodDuration=duration)
    assert body["speed"]["type"] == "Property"
    for method, points in speed.items():
        assert body["speed"][method] == points
    for method, points in (fuel or {}).items():
        assert body["fuelLevel"][method] == points
    if duration == "PT1H":  # empty periods are left out
        assert [p[0] for p in body["fuelLevel"]["avg"]] == [67, 53, 40]


def test_stddev_is_the_population_standard_deviation(client: TestClient, car: str) -> None:
    body = get(client, options="aggregatedValues", aggrMethods="stddev")
    assert body["speed"]["stddev"][0][0] == pytest.approx(16.32993161855)  # pstdev(120, 80, 100)


def test_aggregation_errors_name_the_parameter(client: TestClient, car: str) -> None:
    for params, name in (
        ({"aggrMethods": "median"}, "aggrMethods"),
        ({"aggrMethods": "avg", "aggrPeriodDuration": "bogus"}, "aggrPeriodDuration"),
    ):
        response = client.get(f"{TEMPORAL}/{VEHICLE}", params={"options": "aggregatedValues", **params})
        assert response.status_code == 400 and name in response.text


# -- queries ----------------------------------------------------------------------------------------------
@pytest.fixture
def fleet(client: TestClient) -> None:
    create(client, vehicle("urn:ngsi-ld:Vehicle:A"))
    later = vehicle("urn:ngsi-ld:Vehicle:B")
    for attr in ("speed", "fuelLevel"):
        later[attr] = [{**i, "observedAt": i["observedAt"].replace("2020-08", "2020-09")} for i in later[attr]]
    later["location"] = [
        {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [-8.5, 41.2]},
            "observedAt": "2020-09-01T12:05:00Z",
        }
    ]
    create(client, later)
    create(client, {**vehicle("urn:ngsi-ld:Bus:C"), "type": "Bus"})


def ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [entity["id"] for entity in response.json()]


def test_query_selects_entities_with_instances_in_the_window(client: TestClient, fleet: None) -> None:
    after = {"type": "Vehicle", "timerel": "after", "timeAt": "2020-08-02T00:00:00Z"}
    assert ids(client.get(TEMPORAL, params=after)) == ["urn:ngsi-ld:Vehicle:B"]
    assert ids(client.get(TEMPORAL, params={"type": "Vehicle,Bus"})) == [
        "urn:ngsi-ld:Bus:C",
        "urn:ngsi-ld:Vehicle:A",
        "urn:ngsi-ld:Vehicle:B",
    ]
    assert ids(client.get(TEMPORAL, params={"idPattern": "urn:ngsi-ld:Vehicle:.*", "local": "true"})) == [
        "urn:ngsi-ld:Vehicle:A",
        "urn:ngsi-ld:Vehicle:B",
    ]
    desc = ids(client.get(TEMPORAL, params={"type": "Vehicle", "orderBy": "id;desc"}))
    assert desc == ["urn:ngsi-ld:Vehicle:B", "urn:ngsi-ld:Vehicle:A"]


def test_q_holds_on_any_windowed_instance_and_keeps_them_all(client: TestClient, fleet: None) -> None:
    response = client.get(TEMPORAL, params={"type": "Vehicle", "q": "speed>110"})
    assert ids(response) == ["urn:ngsi-ld:Vehicle:A", "urn:ngsi-ld:Vehicle:B"]
    assert values(response.json()[0]["speed"]) == [120, 80, 100]
    window = {"timerel": "after", "timeAt": "2020-08-01T12:04:00Z"}
    assert ids(client.get(TEMPORAL, params={"type": "Vehicle", "q": "speed>110", **window})) == [
        "urn:ngsi-ld:Vehicle:B"
    ]
    assert ids(client.get(TEMPORAL, params={"type": "Vehicle", "q": "!location"})) == ["urn:ngsi-ld:Vehicle:A"]


def test_geo_query_on_windowed_locations(client: TestClient, fleet: None) -> None:
    near = {"georel": "near;maxDistance==2000", "geometry": "Point", "coordinates": "[-8.503,41.202]"}
    assert ids(client.get(TEMPORAL, params={"type": "Vehicle", **near})) == ["urn:ngsi-ld:Vehicle:B"]
    before = {"timerel": "before", "timeAt": "2020-09-01T12:04:00Z"}
    assert ids(client.get(TEMPORAL, params={"type": "Vehicle", **near, **before})) == []


def test_query_paging_and_count(client: TestClient, fleet: None) -> None:
    response = client.get(TEMPORAL, params={"type": "Vehicle,Bus", "limit": "2", "count": "true"})
    assert len(ids(response)) == 2
    assert response.headers["NGSILD-Results-Count"] == "3"
    assert 'rel="next"' in response.headers["Link"]


@pytest.mark.parametrize(
    "params",
    [
        {"timerel": "after", "timeAt": "2020-01-01T00:00:00Z"},
        {"id": "urn:ngsi-ld:Vehicle:A"},
        {"attrs": "createdAt"},
        {"type": "Vehicle", "orderBy": "name"},
        {"type": "Vehicle", "pick": "speed", "attrs": "speed"},
        {"type": "Vehicle", "q": 'owner{name}=="x"'},
    ],
)
def test_query_errors(client: TestClient, params: dict[str, str]) -> None:
    problem(client.get(TEMPORAL, params=params), 400, "BadRequestData")


def test_query_post_with_temporal_and_aggregation_parameters(client: TestClient, fleet: None) -> None:
    body = {
        "type": "Query",
        "entities": [{"type": "Vehicle"}],
        "temporalQ": {"timerel": "before", "timeAt": "2020-08-02T00:00:00Z"},
    }
    assert ids(client.post(QUERY, json=body)) == ["urn:ngsi-ld:Vehicle:A"]
    body["temporalQ"] = {"timerel": "after", "timeAt": "2020-09-01T12:00:00Z", "lastN": 1}
    response = client.post(QUERY, json=body)
    assert values(response.json()[0]["speed"]) == [100]
    body["aggrParams"] = {"aggrMethods": ["max"], "aggrPeriodDuration": "PT0S"}
    response = client.post(QUERY, json=body)
    assert response.json()[0]["speed"]["max"][0][0] == 120
    for bad in ({"lastN": 0}, {"timerel": "during", "timeAt": "2020-01-01T00:00:00Z"}, {"timeproperty": "expiresAt"}):
        problem(client.post(QUERY, json={**body, "temporalQ": bad}), 400, "BadRequestData")


def test_scope_query_follows_scope_validity(client: TestClient) -> None:
    window = {
        "type": "Vehicle",
        "timerel": "between",
        "timeAt": "2026-03-01T12:00:00Z",
        "endTimeAt": "2026-03-01T13:00:00Z",
    }
    create(
        client,
        {
            "id": "urn:ngsi-ld:Vehicle:rep",
            "type": "Vehicle",
            "scope": [
                {"type": "Property", "value": "/R", "observedAt": "2026-03-01T10:00:00Z"},
                {"type": "Property", "value": "/S", "observedAt": "2026-03-01T12:30:00Z"},
            ],
            "speed": instances(("old", "2026-03-01T12:15:00Z"), ("new", "2026-03-01T12:45:00Z")),
        },
    )
    old = client.get(TEMPORAL, params={**window, "scopeQ": "/R"}).json()
    assert values(old[0]["speed"]) == ["old"] and old[0]["scope"][0]["value"] == ["/R"]
    assert values(client.get(TEMPORAL, params={**window, "scopeQ": "/S"}).json()[0]["speed"]) == ["new"]
    assert client.get(TEMPORAL, params={**window, "scopeQ": "/Z"}).json() == []


# -- temporal pagination ----------------------------------------------------------------------------------
def test_a_year_of_hourly_readings_comes_back_whole_by_default(client: TestClient) -> None:
    """The default page holds a year of hourly values of one attribute (a chart's worth); one more
    instance passes the bound: 206, the oldest instances, and a Content-Range that says where they end."""
    station = "urn:ngsi-ld:AirQualityObserved:year"
    start = datetime(2016, 1, 1, tzinfo=UTC)  # a leap year: 366 days, 8,784 hours
    hours = [(n % 300, f"{start + timedelta(hours=n):%Y-%m-%dT%H:%M:%SZ}") for n in range(8784)]
    create(client, {"id": station, "type": "AirQualityObserved", "pm25": instances(*hours)})
    window = {"timerel": "after", "timeAt": "2016-01-01T00:00:00Z", "options": "temporalValues"}
    response = client.get(f"{TEMPORAL}/{station}", params=window)
    assert response.status_code == 200, response.headers
    assert "content-range" not in response.headers
    assert [at for _, at in response.json()["pm25"]["values"]] == [at for _, at in hours]
    more = {"pm25": instances((1, "2017-01-01T00:00:00Z"))}
    assert client.post(f"{TEMPORAL}/{station}/attrs", json=more).status_code == 204
    response = client.get(f"{TEMPORAL}/{station}", params=window)
    assert response.status_code == 206
    assert response.headers["Content-Range"] == "date-time 2016-01-01T00:00:00Z-2016-12-31T23:00:00Z/*"
    assert len(response.json()["pm25"]["values"]) == 8784


def test_instance_cap_answers_206_with_a_content_range(db_url: str) -> None:
    """With the page size the ETSI run sets (docs/conformance.md): 40 instances are cut, 20 are not."""
    with TestClient(create_app(Settings(database=db_url, temporal_page_size=30))) as client:
        _check_the_suite_pagination(client)


def _check_the_suite_pagination(client: TestClient) -> None:
    speeds = instances(*((n, f"2020-01-01T01:{n:02d}:00Z") for n in range(1, 21)))
    fuel = instances(*((n, f"2020-01-01T01:{n + 2:02d}:00Z") for n in range(1, 21)))
    create(client, {"id": VEHICLE, "type": "Vehicle", "speed": speeds, "fuelLevel": fuel})
    response = client.get(f"{TEMPORAL}/{VEHICLE}", params={"timerel": "after", "timeAt": "2019-01-01T01:01:00Z"})
    assert response.status_code == 206
    assert response.headers["Content-Range"] == "date-time 2019-01-01T01:01:00Z-2020-01-01T01:16:00Z/*"
    assert sum(len(a) for a in (response.json()["speed"], response.json()["fuelLevel"])) == 30
    response = client.get(f"{TEMPORAL}/{VEHICLE}", params={"lastN": "20"})
    assert response.status_code == 206
    assert response.headers["Content-Range"] == "date-time 2020-01-01T01:22:00Z-2020-01-01T01:07:00Z/20"
    assert client.get(f"{TEMPORAL}/{VEHICLE}", params={"lastN": "10"}).status_code == 200


# -- attributes and instances -----------------------------------------------------------------------------
def test_add_attributes(client: TestClient, car: str) -> None:
    fragment = {"added": instances((1, "2020-08-01T12:03:00Z"), (2, "2020-08-01T12:05:00Z"))}
    assert client.post(f"{TEMPORAL}/{VEHICLE}/attrs", json=fragment).status_code == 204
    assert values(get(client)["added"]) == [1, 2]
    problem(client.post(f"{TEMPORAL}/urn:ngsi-ld:Vehicle:nope/attrs", json=fragment), 404, "ResourceNotFound")
    problem(client.post(f"{TEMPORAL}/{VEHICLE}/attrs", json={}), 400, "InvalidRequest")
    problem(client.post(f"{TEMPORAL}//attrs", json=fragment), 400, "BadRequestData")


def test_delete_attribute_by_dataset_or_all(client: TestClient) -> None:
    fuel = [
        *instances((67, "2020-08-01T12:03:00Z")),
        *instances((40, "2020-08-01T14:07:00Z"), datasetId="urn:ngsi-ld:fuel"),
    ]
    create(client, vehicle(fuelLevel=fuel))
    url = f"{TEMPORAL}/{VEHICLE}/attrs/fuelLevel"
    assert client.delete(url, params={"deleteAll": "false"}).status_code == 204
    assert values(get(client)["fuelLevel"]) == [40]
    assert client.delete(url, params={"datasetId": "urn:ngsi-ld:fuel"}).status_code == 204
    assert "fuelLevel" not in get(client)
    problem(client.delete(url), 404, "ResourceNotFound")
    assert client.delete(f"{TEMPORAL}/{VEHICLE}/attrs/speed", params={"deleteAll": "true"}).status_code == 204


BAD_ATTRIBUTE_PATHS = [
    "//attrs/speed",
    "/invalidId/attrs/speed",
    f"/{VEHICLE}/attrs/invalid(Name",
    f"/{VEHICLE}/attrs/%252e",
]


@pytest.mark.parametrize("path", BAD_ATTRIBUTE_PATHS)
def test_delete_attribute_path_errors(client: TestClient, car: str, path: str) -> None:
    problem(client.delete(TEMPORAL + path), 400, "BadRequestData")
    assert client.get(f"{TEMPORAL}/{VEHICLE}").status_code == 200


def test_modify_and_delete_an_instance(client: TestClient, car: str) -> None:
    first = get(client)["speed"][0]["instanceId"]
    url = f"{TEMPORAL}/{VEHICLE}/attrs/speed/{first}"
    patch = {"type": "Property", "value": 129, "observedAt": "2020-08-01T12:03:00Z"}
    assert client.patch(url, json=patch).status_code == 204
    speed = get(client)["speed"]
    assert speed[0]["instanceId"] == first and values(speed) == [129, 80, 100]
    assert client.delete(url).status_code == 204
    assert values(get(client)["speed"]) == [80, 100]
    problem(client.delete(url), 404, "ResourceNotFound")
    problem(client.patch(f"{TEMPORAL}/{VEHICLE}/attrs/speed/invalidId", json=patch), 400, "BadRequestData")
    problem(client.patch(f"{TEMPORAL}/{VEHICLE}/attrs/speed/", json=patch), 405, "MethodNotAllowed")
    problem(client.patch(f"{TEMPORAL}/{VEHICLE}/attrs//{first}", json=patch), 405, "MethodNotAllowed")
    problem(client.delete(f"{TEMPORAL}/{VEHICLE}/attrs//{first}"), 400, "BadRequestData")


def test_delete_entity(client: TestClient, car: str) -> None:
    response = client.delete(f"{TEMPORAL}/{VEHICLE}")
    assert response.status_code == 204 and response.text == ""
    problem(client.get(f"{TEMPORAL}/{VEHICLE}"), 404, "ResourceNotFound")
    problem(client.delete(f"{TEMPORAL}/{VEHICLE}"), 404, "ResourceNotFound")
    problem(client.delete(f"{TEMPORAL}/"), 405, "MethodNotAllowed")
    problem(client.delete(f"{TEMPORAL}/invalidId"), 400, "BadRequestData")


# -- entity maps ------------------------------------------------------------------------------------------
def test_temporal_entity_maps(client: TestClient, fleet: None) -> None:
    problem(client.get(BASE + "/temporal/entityMaps", params={"type": "Vehicle"}), 400, "BadRequestData")
    window = {"type": "Vehicle", "timerel": "after", "timeAt": "2020-09-01T00:00:00Z"}
    response = client.get(BASE + "/temporal/entityMaps", params=window)
    assert response.status_code == 201
    assert list(response.json()["entityMap"]) == ["urn:ngsi-ld:Vehicle:B"]
    map_id = response.headers["NGSILD-EntityMap"]
    following = client.get(TEMPORAL, params={"type": "Vehicle"}, headers={"NGSILD-EntityMap": map_id})
    assert ids(following) == ["urn:ngsi-ld:Vehicle:B"] and following.headers["NGSILD-EntityMap"] == map_id
    created = client.get(TEMPORAL, params={"type": "Vehicle", "entityMap": "true"})
    assert created.status_code == 201 and created.headers["NGSILD-EntityMap"] != map_id
