"""Querying the city (GET /ngsi-ld/v1/entities, POST /ngsi-ld/v1/entityOperations/query): every
query parameter and every error path, in-process over a real database (SQLite and PostgreSQL).

The data set is built from real Smart Data Models examples (OffStreetParking, ParkingSpot,
AirQualityObserved, their @context dropped and sent as application/json) plus a few entities
around Porto's centre whose distances were worked out by hand:

    Trindade (SDM example)   [-8.60961, 41.15069]   the reference point
    Bolhão                   [-8.6058, 41.1492]     ~360 m from Trindade
    Álvares garage           [-8.6020, 41.1420]     ~1.2 km (OffStreetParking and Building)
    Casa da Música           [-8.6307, 41.1588]     ~2.0 km
    District Centro          lon -8.62..-8.60, lat 41.14..41.16 (holds all but Casa da Música)
    District Boavista        lon -8.64..-8.62, lat 41.15..41.17 (shares Centro's west edge)
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import pytest
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.settings import Settings

CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.9.jsonld"
DEFAULT = "https://uri.etsi.org/ngsi-ld/default-context/"
ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
ENTITIES = "/ngsi-ld/v1/entities"
QUERY = "/ngsi-ld/v1/entityOperations/query"
BATCH = "/ngsi-ld/v1/entityOperations"
LINK_VALUE = re.compile(r"<(?P<target>.*)>(?P<params>(\s*;[^;>]*)*)")
SDM = Path(__file__).parent / "data" / "smart-data-models"

TRINDADE = "urn:ngsi-ld:OffStreetParking:porto-ParkingLot-23889"
BOLHAO = "urn:ngsi-ld:OffStreetParking:porto-Bolhao"
MUSICA = "urn:ngsi-ld:OffStreetParking:porto-CasaDaMusica"
GARAGE = "urn:ngsi-ld:Building:porto-AlvaresGarage"
SPOT = "urn:ngsi-ld:ParkingSpot:porto-Trindade-001"
CENTRO = "urn:ngsi-ld:District:porto-Centro"
BOAVISTA = "urn:ngsi-ld:District:porto-Boavista"
ESPANA = "urn:ngsi-ld:AirQualityObserved:Madrid-AmbientObserved-28079004-2016-03-15T11:00:00"
CASTELLANA = "urn:ngsi-ld:AirQualityObserved:Madrid-AmbientObserved-28079008-2016-03-15T11:00:00"
DAILY = "urn:ngsi-ld:Dataset:daily-mean"

PARKINGS = [TRINDADE, BOLHAO, MUSICA, GARAGE]  # every OffStreetParking, in creation order
TRINDADE_POINT = [-8.60961198807, 41.150691773]
MUSICA_POINT = [-8.6307, 41.1588]
CENTRO_RING = [[-8.62, 41.14], [-8.60, 41.14], [-8.60, 41.16], [-8.62, 41.16], [-8.62, 41.14]]
BOAVISTA_RING = [[-8.64, 41.15], [-8.62, 41.15], [-8.62, 41.17], [-8.64, 41.17], [-8.64, 41.15]]


class Reply(Protocol):
    @property
    def status_code(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    def json(self) -> Any: ...


class MultiHeaders(Protocol):
    def get_list(self, key: str) -> list[str]: ...


class Paged(Protocol):
    """A response whose repeated headers (Link) can be read one by one."""

    @property
    def headers(self) -> MultiHeaders: ...


# -- the data set -----------------------------------------------------------------------------------
def example(name: str) -> dict[str, Any]:
    """A Smart Data Models example without its (remote) @context."""
    body: dict[str, Any] = json.loads((SDM / f"{name}-example-normalized.jsonld").read_text())
    body.pop("@context")
    return body


def prop(value: Any, **members: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, **members}


def point(coordinates: list[float]) -> dict[str, Any]:
    return {"type": "GeoProperty", "value": {"type": "Point", "coordinates": coordinates}}


def polygon(ring: list[list[float]]) -> dict[str, Any]:
    return {"type": "GeoProperty", "value": {"type": "Polygon", "coordinates": [ring]}}


def city() -> list[dict[str, Any]]:
    trindade = example("OffStreetParking")
    trindade["availableSpotNumber"]["reliability"] = prop(0.9)
    trindade["scope"] = "/Porto/Centro"
    trindade["entrance"] = point([-8.62, 41.155])  # ~900 m west of its location
    trindade["refDistrict"] = {"type": "Relationship", "object": CENTRO}
    bolhao = {
        "id": BOLHAO,
        "type": "OffStreetParking",
        "name": prop("Bolhão"),
        "availableSpotNumber": prop(8, observedAt="2018-09-21T13:00:00Z"),
        "totalSpotNumber": prop(50),
        "category": prop(["public", "shortTerm"]),
        "parkingMode": {"type": "VocabProperty", "vocab": "perpendicular"},
        "address": prop({"addressLocality": "Porto", "streetAddress": "Rua Formosa"}),
        "location": point([-8.6058, 41.1492]),
        "scope": "/Porto/Centro",
    }
    musica = {
        "id": MUSICA,
        "type": "OffStreetParking",
        "name": prop("Casa da Música"),
        "description": {
            "type": "LanguageProperty",
            "languageMap": {"en": "Under the concert hall", "pt": "Debaixo da sala de concertos"},
        },
        "availableSpotNumber": prop(40, observedAt="2018-09-21T11:00:00Z"),
        "totalSpotNumber": prop(100),
        "category": prop(["underground", "private"]),
        "address": prop({"addressLocality": "Porto", "streetAddress": "Avenida da Boavista"}),
        "location": point(MUSICA_POINT),
        "scope": "/Porto/Boavista",
    }
    garage = {
        "id": GARAGE,
        "type": ["OffStreetParking", "Building"],
        "name": prop("Álvares Garage"),
        "availableSpotNumber": prop(0),
        "totalSpotNumber": prop(30),
        "location": point([-8.6020, 41.1420]),
        "scope": "/Porto/Centro/Garages",
    }
    spot = example("ParkingSpot")
    spot.update(
        id=SPOT,
        refParkingSite={"type": "Relationship", "object": TRINDADE},
        location=point([-8.6097, 41.1506]),
    )
    centro = {"id": CENTRO, "type": "District", "name": prop("Centro"), "location": polygon(CENTRO_RING)}
    boavista = {"id": BOAVISTA, "type": "District", "name": prop("Boavista"), "location": polygon(BOAVISTA_RING)}
    espana = example("AirQualityObserved")
    espana["no2"] = [espana["no2"], prop(41, unitCode="GQ", datasetId=DAILY)]
    castellana = example("AirQualityObserved")
    castellana.update(
        id=CASTELLANA,
        no2=prop(35, unitCode="GQ"),
        airQualityLevel=prop("good"),
        address=prop({"addressLocality": "Madrid", "streetAddress": "Paseo de la Castellana"}),
        location=point([-3.6823, 40.4215]),
    )
    return [trindade, bolhao, musica, garage, spot, centro, boavista, espana, castellana]


@pytest.fixture
def town(client: TestClient) -> TestClient:
    response = client.post(BATCH + "/create", json=city())
    assert response.status_code == 201, response.text
    return client


# -- helpers ----------------------------------------------------------------------------------------
def assert_problem(response: Reply, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["type"] == ERRORS + kind, body
    assert body["status"] == status
    return body


def query(client: TestClient, **params: str) -> list[dict[str, Any]]:
    response = client.get(ENTITIES, params=params)
    assert response.status_code == 200, response.text
    body: list[dict[str, Any]] = response.json()
    return body


def ids(client: TestClient, **params: str) -> list[str]:
    return [entity["id"] for entity in query(client, **params)]


def post_query(client: TestClient, body: dict[str, Any], **params: str) -> list[dict[str, Any]]:
    response = client.post(QUERY, json={"type": "Query", **body}, params=params)
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()
    return result


def links(response: Paged) -> dict[str, str]:
    """The rel="prev"/"next" Link targets of a response, by rel."""
    found = {}
    for value in response.headers.get_list("link"):
        match = LINK_VALUE.fullmatch(value)
        assert match is not None, value
        for rel in ("prev", "next"):
            if f'rel="{rel}"' in match["params"]:
                found[rel] = match["target"]
    return found


def geo(georel: str, geometry: str, coordinates: Any, **more: str) -> dict[str, str]:
    return {"georel": georel, "geometry": geometry, "coordinates": json.dumps(coordinates), **more}


# -- type -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("OffStreetParking", PARKINGS),
        ("Building", [GARAGE]),
        ("District,AirQualityObserved", [CENTRO, BOAVISTA, ESPANA, CASTELLANA]),
        ("District|ParkingSpot", [SPOT, CENTRO, BOAVISTA]),
        ("OffStreetParking;Building", [GARAGE]),
        ("Building;OffStreetParking", [GARAGE]),
        ("(OffStreetParking;Building)|District", [GARAGE, CENTRO, BOAVISTA]),
        ("(District|Building);OffStreetParking", [GARAGE]),
        ("Unknown", []),
        ("Unknown,ParkingSpot", [SPOT]),
    ],
)
def test_type_expressions(town: TestClient, expression: str, expected: list[str]) -> None:
    assert ids(town, type=expression) == expected


def test_multi_typed_entity_renders_every_type(town: TestClient) -> None:
    [garage] = query(town, type="Building")
    assert garage["type"] == ["OffStreetParking", "Building"]


def test_type_as_full_iri_and_with_a_link_context(town: TestClient) -> None:
    assert ids(town, type=DEFAULT + "District") == [CENTRO, BOAVISTA]
    context = {"@context": {"Quartier": DEFAULT + "District"}}
    hosted = town.post("/ngsi-ld/v1/jsonldContexts", json=context)
    assert hosted.status_code == 201, hosted.text
    link = f'<http://127.0.0.1:1026{hosted.headers["location"]}>; rel="http://www.w3.org/ns/json-ld#context"'
    response = town.get(ENTITIES, params={"type": "Quartier"}, headers={"Link": link})
    assert response.status_code == 200, response.text
    assert [e["id"] for e in response.json()] == [CENTRO, BOAVISTA]
    assert {e["type"] for e in response.json()} == {"Quartier"}


def test_type_star_selects_every_type(town: TestClient) -> None:
    everything = ids(town, type="*", limit="100")
    assert set(everything) == {e["id"] for e in city()}
    assert len(everything) == len(city())


def test_type_star_is_refused_for_non_local_queries(town: TestClient) -> None:
    response = town.get(ENTITIES, params={"type": "*", "local": "false"})
    assert_problem(response, 400, "BadRequestData")


@pytest.mark.parametrize("expression", ["A;;B", "(A|B", "A)", "|A", "A,", "A B", "Bad=name", "Bad<name>"])
def test_malformed_type_expressions(town: TestClient, expression: str) -> None:
    assert_problem(town.get(ENTITIES, params={"type": expression}), 400, "BadRequestData")


# -- id, idPattern, local ---------------------------------------------------------------------------
def test_id_list_with_type(town: TestClient) -> None:
    assert ids(town, type="OffStreetParking", id=f"{MUSICA},{TRINDADE},{SPOT}") == [TRINDADE, MUSICA]


def test_id_pattern(town: TestClient) -> None:
    pattern = r"^urn:ngsi-ld:OffStreetParking:porto-(Bolhao|Casa)"
    assert ids(town, type="OffStreetParking", idPattern=pattern) == [BOLHAO, MUSICA]
    assert ids(town, type="OffStreetParking,Building", idPattern="Garage$") == [GARAGE]


def test_id_and_id_pattern_together_must_both_hold(town: TestClient) -> None:
    assert ids(town, type="OffStreetParking", id=f"{BOLHAO},{MUSICA}", idPattern="Bolhao") == [BOLHAO]


def test_local_true_allows_a_query_by_id_alone(town: TestClient) -> None:
    assert ids(town, id=f"{SPOT},{CENTRO}", local="true") == [SPOT, CENTRO]


@pytest.mark.parametrize(
    "params",
    [{"id": "not a uri", "type": "District"}, {"idPattern": "([a-z", "type": "District"}, {"id": "", "type": "A"}],
    ids=["bad-id", "bad-pattern", "empty-id"],
)
def test_bad_ids_and_patterns(town: TestClient, params: dict[str, str]) -> None:
    assert_problem(town.get(ENTITIES, params=params), 400, "BadRequestData")


# -- attrs, pick, omit ------------------------------------------------------------------------------
def test_attrs_selects_entities_having_one_and_projects_them(town: TestClient) -> None:
    found = query(town, attrs="no2,parkingMode")
    assert [e["id"] for e in found] == [BOLHAO, ESPANA, CASTELLANA]
    assert set(found[0]) == {"id", "type", "scope", "parkingMode"}  # scope is an entity member, not an attribute
    assert set(found[1]) == {"id", "type", "no2"}


def test_attrs_alone_is_a_wide_enough_query(town: TestClient) -> None:
    assert ids(town, attrs="refParkingSite") == [SPOT]


def test_pick_and_omit(town: TestClient) -> None:
    picked = query(town, type="District", pick="id,name")
    assert picked == [{"id": CENTRO, "name": prop("Centro")}, {"id": BOAVISTA, "name": prop("Boavista")}]
    omitted = query(town, type="District", omit="location,type")
    assert omitted == [{"id": CENTRO, "name": prop("Centro")}, {"id": BOAVISTA, "name": prop("Boavista")}]


def test_pick_and_omit_apply_to_scope(town: TestClient) -> None:
    """pick and omit select Entity members (id, type, scope) as well as Attributes (spec 4.21)."""
    assert query(town, type="Building", pick="id") == [{"id": GARAGE}]
    assert query(town, type="Building", pick="id,scope") == [{"id": GARAGE, "scope": "/Porto/Centro/Garages"}]
    [garage] = query(town, type="Building", omit="scope")
    assert "scope" not in garage and garage["id"] == GARAGE


@pytest.mark.parametrize(
    "params",
    [
        {"pick": "id", "omit": "name"},
        {"attrs": "name", "pick": "id"},
        {"pick": "name{id}"},
        {"pick": "a,,b"},
        {"attrs": "bad name"},
    ],
)
def test_projection_errors(town: TestClient, params: dict[str, str]) -> None:
    assert_problem(town.get(ENTITIES, params={"type": "District", **params}), 400, "BadRequestData")


# -- q ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("q", "expected"),
    [
        # numbers
        ("availableSpotNumber>10", [TRINDADE, MUSICA]),
        ("availableSpotNumber>=40", [TRINDADE, MUSICA]),
        ("availableSpotNumber<8", [GARAGE]),
        ("availableSpotNumber<=8", [BOLHAO, GARAGE]),
        ("availableSpotNumber==8", [BOLHAO]),
        ("availableSpotNumber!=8", [TRINDADE, MUSICA, GARAGE]),
        ("availableSpotNumber==132.0", [TRINDADE]),
        ("occupancy>0.5", [TRINDADE]),
        # ranges and lists
        ("availableSpotNumber==8..40", [BOLHAO, MUSICA]),
        ("availableSpotNumber!=8..40", [TRINDADE, GARAGE]),
        ("availableSpotNumber==0,132", [TRINDADE, GARAGE]),
        ("availableSpotNumber!=0,132", [BOLHAO, MUSICA]),
        ('name=="Bolhão","Casa da Música"', [BOLHAO, MUSICA]),
        ('name=="A".."C"', [BOLHAO]),
        # strings and patterns
        ('name=="Casa da Música"', [MUSICA]),
        ('name!="Casa da Música"', [TRINDADE, BOLHAO, GARAGE]),
        ('name>"P"', [TRINDADE, GARAGE]),
        ("name~=Garage$", [GARAGE]),
        ("name~=(?i)^parque", [TRINDADE]),
        ("name!~=a", [BOLHAO]),  # "Bolhão" has an ã, no a
        ('category=="public"', [TRINDADE, BOLHAO]),
        ('category=="private","shortTerm"', [BOLHAO, MUSICA]),
        # sub-attributes, metadata, compound values
        ("availableSpotNumber.reliability>=0.9", [TRINDADE]),
        ("availableSpotNumber.reliability", [TRINDADE]),
        ("availableSpotNumber.observedAt>=2018-09-21T12:00:00Z", [TRINDADE, BOLHAO]),
        ("availableSpotNumber.observedAt<2018-09-21T12:00:00Z", [MUSICA]),
        ("availableSpotNumber.observedAt==2018-09-21T10:00:00Z..2018-09-21T12:30:00Z", [TRINDADE, MUSICA]),
        ("availableSpotNumber.observedAt", [TRINDADE, BOLHAO, MUSICA]),
        ('address[streetAddress]=="Rua Formosa"', [BOLHAO]),
        ('address[addressLocality]=="Porto"', [TRINDADE, BOLHAO, MUSICA]),
        ("fourWheelerSlots[availableSpotNumber]>=25", [TRINDADE]),
        ("municipalityInfo[cityName]~=^Bang", [TRINDADE]),
        # boolean structure
        ("availableSpotNumber>10;totalSpotNumber<200", [MUSICA]),
        ("availableSpotNumber>100|totalSpotNumber<40", [TRINDADE, GARAGE]),
        ("(availableSpotNumber>100|totalSpotNumber<60);name~=(ã|d)", [TRINDADE, BOLHAO]),
        ("parkingMode", [BOLHAO]),
        ("parkingMode|description", [TRINDADE, BOLHAO, MUSICA]),
    ],
)
def test_q_on_parkings(town: TestClient, q: str, expected: list[str]) -> None:
    assert ids(town, type="OffStreetParking", q=q) == expected


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("no2>40", [ESPANA]),
        ("no2==41", [ESPANA]),  # the daily-mean instance (datasetId) matches too
        ("no2<40", [CASTELLANA]),
        ('no2.unitCode=="GQ"', [ESPANA, CASTELLANA]),
        ('airQualityLevel=="moderate"', [ESPANA]),
        ("temperature==12.2;windDirection==186", [ESPANA, CASTELLANA]),
        ('dateObserved=="2016-03-15T11:00:00"', [ESPANA, CASTELLANA]),
        ("refPointOfInterest==urn:ngsi-ld:PointOfInterest:28079004-Pza.deEspanya", [ESPANA, CASTELLANA]),
    ],
)
def test_q_on_air_quality(town: TestClient, q: str, expected: list[str]) -> None:
    assert ids(town, type="AirQualityObserved", q=q) == expected


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("inspected>=2016-03-10T00:00:00Z", ["urn:ngsi-ld:Lamp:b"]),
        ("inspected<2016-03-10T00:00:00Z", ["urn:ngsi-ld:Lamp:a"]),
        ("inspected==2016-03-01T00:00:00Z", ["urn:ngsi-ld:Lamp:a"]),
        ("inspected==2016-02-01T00:00:00Z..2016-03-05T00:00:00Z", ["urn:ngsi-ld:Lamp:a"]),
        ("inspected>=2016-03-01", ["urn:ngsi-ld:Lamp:a", "urn:ngsi-ld:Lamp:b"]),
    ],
)
def test_q_compares_typed_date_time_values_by_their_value(client: TestClient, q: str, expected: list[str]) -> None:
    """A value written as a typed literal, {"@type": "DateTime", "@value": ...}, compares as the
    instant it holds (spec 4.9), as the same text without its type does."""
    lamps = [
        {"id": f"urn:ngsi-ld:Lamp:{name}", "type": "Lamp", "inspected": prop({"@type": "DateTime", "@value": when})}
        for name, when in (("a", "2016-03-01T00:00:00Z"), ("b", "2016-03-20T08:30:00Z"))
    ]
    assert client.post(BATCH + "/create", json=lamps).status_code == 201
    assert ids(client, type="Lamp", q=q) == expected


def test_q_alone_is_a_wide_enough_query(town: TestClient) -> None:
    assert ids(town, q="no2>60") == [ESPANA]


def test_q_on_relationships(town: TestClient) -> None:
    assert ids(town, type="ParkingSpot", q=f"refParkingSite=={TRINDADE}") == [SPOT]
    assert ids(town, type="ParkingSpot", q=f'refParkingSite=="{BOLHAO}"') == []


def test_q_following_a_relationship_needs_join(town: TestClient) -> None:
    q = "refParkingSite{availableSpotNumber}>100"
    assert ids(town, type="ParkingSpot", q=q, join="inline") == [SPOT]
    assert ids(town, type="ParkingSpot", q="refParkingSite{availableSpotNumber}<100", join="inline") == []
    assert_problem(town.get(ENTITIES, params={"type": "ParkingSpot", "q": q}), 400, "BadRequestData")


def test_q_system_attributes(town: TestClient) -> None:
    assert ids(town, type="District", q="modifiedAt>2000-01-01T00:00:00Z") == [CENTRO, BOAVISTA]
    assert ids(town, type="District", q="createdAt<2000-01-01T00:00:00Z") == []


def test_q_with_expand_values_on_a_vocab_property(town: TestClient) -> None:
    assert ids(town, type="OffStreetParking", q="parkingMode==perpendicular", expandValues="parkingMode") == [BOLHAO]
    assert ids(town, type="OffStreetParking", q=f"parkingMode=={DEFAULT}perpendicular") == [BOLHAO]
    [bolhao] = query(town, type="OffStreetParking", q="parkingMode", options="keyValues")
    assert bolhao["parkingMode"] == {"vocab": "perpendicular"}


@pytest.mark.parametrize(
    ("q", "position"),
    [
        ("availableSpotNumber>", 20),
        ("availableSpotNumber>>1", 20),
        ("availableSpotNumber==1;", 23),
        ("(availableSpotNumber==1", 23),
        ("name==Bolhão", 6),
        ("availableSpotNumber==1 2", 23),
        ("name~=(unclosed", 6),
        ("availableSpotNumber>1..3", 19),
    ],
)
def test_bad_q_syntax_names_the_position(town: TestClient, q: str, position: int) -> None:
    body = assert_problem(town.get(ENTITIES, params={"type": "OffStreetParking", "q": q}), 400, "BadRequestData")
    assert f"position {position}" in body["detail"], body


def test_q_too_long_or_empty(town: TestClient) -> None:
    assert_problem(town.get(ENTITIES, params={"type": "A", "q": "a==1;" * 1000}), 400, "BadRequestData")
    assert_problem(town.get(ENTITIES, params={"type": "A", "q": ""}), 400, "BadRequestData")


# -- scopeQ -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scope_q", "expected"),
    [
        ("/Porto/Centro", [TRINDADE, BOLHAO]),
        ("/Porto/Centro/#", [TRINDADE, BOLHAO, GARAGE]),
        ("/Porto/+", [TRINDADE, BOLHAO, MUSICA]),
        ("/Porto/#", PARKINGS),
        ("/#", PARKINGS),
        ("/Porto/Boavista,/Porto/Centro/Garages", [MUSICA, GARAGE]),
        ("/Porto/Centro;/Porto/Boavista", []),
        ("/Lisboa/#", []),
    ],
)
def test_scope_q(town: TestClient, scope_q: str, expected: list[str]) -> None:
    assert ids(town, type="OffStreetParking", scopeQ=scope_q) == expected


def test_scope_is_rendered(town: TestClient) -> None:
    [garage] = query(town, type="Building")
    assert garage["scope"] == "/Porto/Centro/Garages"


@pytest.mark.parametrize("scope_q", ["Porto", "/Porto/#/Centro", "/Porto//Centro", "/Porto/Cen tro"])
def test_bad_scope_q(town: TestClient, scope_q: str) -> None:
    assert_problem(town.get(ENTITIES, params={"type": "OffStreetParking", "scopeQ": scope_q}), 400, "BadRequestData")


# -- geo-queries ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("georel", "expected"),
    [
        ("near;maxDistance==100", [TRINDADE]),
        ("near;maxDistance==500", [TRINDADE, BOLHAO]),
        ("near;maxDistance==1500", [TRINDADE, BOLHAO, GARAGE]),
        ("near;maxDistance==2500", PARKINGS),
        ("near;minDistance==1000", [MUSICA, GARAGE]),
        ("near;minDistance==2500", []),
    ],
)
def test_near_point(town: TestClient, georel: str, expected: list[str]) -> None:
    assert ids(town, type="OffStreetParking", **geo(georel, "Point", TRINDADE_POINT)) == expected


def test_near_without_type_is_wide_enough(town: TestClient) -> None:
    found = ids(town, **geo("near;maxDistance==100", "Point", TRINDADE_POINT))
    assert found == [TRINDADE, SPOT, CENTRO]  # the spot is 13 m away; the point lies inside Centro


@pytest.mark.parametrize(
    ("georel", "geometry", "coordinates", "types", "expected"),
    [
        ("within", "Polygon", [CENTRO_RING], "OffStreetParking", [TRINDADE, BOLHAO, GARAGE]),
        ("within", "Polygon", [BOAVISTA_RING], "OffStreetParking", [MUSICA]),
        ("within", "Polygon", [CENTRO_RING], "District", [CENTRO]),  # a polygon is within itself
        ("contains", "Point", TRINDADE_POINT, "District", [CENTRO]),
        ("contains", "Point", [-8.62, 41.155], "District", []),  # on the shared edge: the boundary
        ("intersects", "Point", [-8.62, 41.155], "District", [CENTRO, BOAVISTA]),
        ("intersects", "LineString", [[-8.65, 41.165], [-8.61, 41.165]], "District", [BOAVISTA]),
        ("intersects", "Polygon", [CENTRO_RING], "District", [CENTRO, BOAVISTA]),  # they touch
        ("disjoint", "Polygon", [CENTRO_RING], "OffStreetParking", [MUSICA]),
        ("disjoint", "Polygon", [CENTRO_RING], "District", []),
        ("equals", "Polygon", [CENTRO_RING], "District", [CENTRO]),
        ("equals", "Point", MUSICA_POINT, "OffStreetParking", [MUSICA]),
        (
            "overlaps",
            "Polygon",
            [[[-8.61, 41.15], [-8.59, 41.15], [-8.59, 41.17], [-8.61, 41.17], [-8.61, 41.15]]],
            "District",
            [CENTRO],
        ),
        ("overlaps", "Polygon", [CENTRO_RING], "District", []),  # equal is not overlapping
    ],
)
def test_topological_relations(
    town: TestClient, georel: str, geometry: str, coordinates: Any, types: str, expected: list[str]
) -> None:
    assert ids(town, type=types, **geo(georel, geometry, coordinates)) == expected


def test_geoproperty_selects_another_geo_property(town: TestClient) -> None:
    entrance = geo("near;maxDistance==50", "Point", [-8.62, 41.155])
    assert ids(town, type="OffStreetParking", **entrance) == []
    assert ids(town, type="OffStreetParking", geoproperty="entrance", **entrance) == [TRINDADE]
    assert ids(town, type="OffStreetParking", geoproperty="nowhere", **entrance) == []


def test_geo_query_combines_with_q(town: TestClient) -> None:
    """Car parks with more than 10 free spaces within 1.5 km of Trindade."""
    found = ids(
        town,
        type="OffStreetParking",
        q="availableSpotNumber>10",
        **geo("near;maxDistance==1500", "Point", TRINDADE_POINT),
    )
    assert found == [TRINDADE]


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        (geo("nearby;maxDistance==10", "Point", [0, 0]), "unknown georel"),
        (geo("near", "Point", [0, 0]), "near needs a distance"),
        (geo("near;maxDistance==-5", "Point", [0, 0]), "invalid near modifier"),
        (geo("near;maxDistance==0", "Point", [0, 0]), "maxDistance must be a positive"),
        (geo("within;maxDistance==5", "Polygon", [CENTRO_RING]), "takes no distance"),
        (geo("within", "Circle", [0, 0]), "geometry must be one of"),
        (geo("within", "Polygon", [[[0, 0], [1, 0], [1, 1]]]), "Polygon"),
        (geo("within", "Polygon", [[[0, 0], [1, 0], [1, 1], [0, 1]]]), "Polygon"),
        (geo("near;maxDistance==5", "Point", [200, 0]), "outside longitude/latitude"),
        (geo("near;maxDistance==5", "Point", [0, 95]), "outside longitude/latitude"),
        (geo("near;maxDistance==5", "Point", [0]), "Point"),
        (geo("near;maxDistance==5", "Point", ["a", "b"]), "Point"),
        ({"georel": "near;maxDistance==5", "geometry": "Point", "coordinates": "[1,2"}, "JSON array"),
        ({"georel": "near;maxDistance==5", "geometry": "Point", "coordinates": "1,2"}, "JSON array"),
        ({"georel": "near;maxDistance==5", "geometry": "Point"}, "missing: coordinates"),
        ({"geometry": "Point", "coordinates": "[1,2]"}, "missing: georel"),
        ({"georel": "within", "coordinates": "[1,2]"}, "missing: geometry"),
        (geo("near;maxDistance==5", "Point", [0, 0], geoproperty="bad name"), "geoproperty"),
    ],
)
def test_geo_query_errors(town: TestClient, params: dict[str, str], detail: str) -> None:
    body = assert_problem(town.get(ENTITIES, params={"type": "OffStreetParking", **params}), 400, "BadRequestData")
    assert detail in body["detail"], body


# -- csf, lang, local, expandValues -------------------------------------------------------------------
def test_csf_is_validated(town: TestClient) -> None:
    assert ids(town, type="District", csf="endpoint==http://example.org") == [CENTRO, BOAVISTA]
    body = assert_problem(town.get(ENTITIES, params={"type": "District", "csf": "endpoint=="}), 400, "BadRequestData")
    assert "position" in body["detail"]


def test_lang_picks_a_language(town: TestClient) -> None:
    [musica] = query(town, type="OffStreetParking", id=MUSICA, lang="pt", options="keyValues")
    assert musica["description"] == "Debaixo da sala de concertos"
    [musica] = query(town, type="OffStreetParking", id=MUSICA, lang="en")
    assert musica["description"] == {"type": "Property", "value": "Under the concert hall", "lang": "en"}
    [musica] = query(town, type="OffStreetParking", id=MUSICA, lang="fr,en;q=0.5", options="keyValues")
    assert musica["description"] == "Under the concert hall"
    [musica] = query(town, type="OffStreetParking", id=MUSICA)
    assert musica["description"]["languageMap"] == {
        "en": "Under the concert hall",
        "pt": "Debaixo da sala de concertos",
    }


def test_q_on_a_language_property(town: TestClient) -> None:
    assert ids(town, type="OffStreetParking", q='description=="Under the concert hall"') == [MUSICA]
    assert ids(town, type="OffStreetParking", q="description[pt]~=concertos") == [MUSICA]


# -- representations: options, format ---------------------------------------------------------------
def test_key_values(town: TestClient) -> None:
    for params in ({"options": "keyValues"}, {"format": "keyValues"}, {"options": "simplified"}):
        [bolhao] = query(town, type="OffStreetParking", id=BOLHAO, **params)
        assert bolhao["availableSpotNumber"] == 8
        assert bolhao["location"] == {"type": "Point", "coordinates": [-8.6058, 41.1492]}


def test_key_values_with_several_datasets(town: TestClient) -> None:
    [espana] = query(town, type="AirQualityObserved", q="no2>60", options="keyValues", attrs="no2")
    assert espana["no2"] == {"dataset": {"@none": 69, DAILY: 41}}


def test_concise(town: TestClient) -> None:
    [bolhao] = query(town, type="OffStreetParking", id=BOLHAO, options="concise")
    assert bolhao["totalSpotNumber"] == 50
    assert bolhao["availableSpotNumber"] == {"value": 8, "observedAt": "2018-09-21T13:00:00Z"}
    assert bolhao["address"] == {"value": {"addressLocality": "Porto", "streetAddress": "Rua Formosa"}}


def test_sys_attrs(town: TestClient) -> None:
    [centro] = query(town, type="District", id=CENTRO, options="sysAttrs")
    assert centro["createdAt"] <= centro["modifiedAt"]
    assert "createdAt" in centro["name"] and "modifiedAt" in centro["name"]
    [plain] = query(town, type="District", id=CENTRO)
    assert "createdAt" not in plain and "createdAt" not in plain["name"]
    [kv] = query(town, type="District", id=CENTRO, options="keyValues,sysAttrs")
    assert kv["name"] == "Centro"


@pytest.mark.parametrize(
    ("params", "kind"),
    [
        ({"options": "keyValues,concise"}, "BadRequestData"),
        ({"options": "bogus"}, "InvalidRequest"),
        ({"format": "bogus"}, "InvalidRequest"),
    ],
)
def test_representation_errors(town: TestClient, params: dict[str, str], kind: str) -> None:
    assert_problem(town.get(ENTITIES, params={"type": "District", **params}), 400, kind)


def test_ld_json_puts_the_context_in_every_entity(town: TestClient) -> None:
    response = town.get(ENTITIES, params={"type": "District"}, headers={"Accept": "application/ld+json"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/ld+json")
    assert all(entity["@context"] == CORE for entity in response.json())


def test_json_gives_the_context_in_a_link_header(town: TestClient) -> None:
    response = town.get(ENTITIES, params={"type": "District"})
    assert response.headers["content-type"].startswith("application/json")
    assert f"<{CORE}>" in response.headers["link"]
    assert all("@context" not in entity for entity in response.json())


# -- datasetId --------------------------------------------------------------------------------------
def test_dataset_id_selects_instances(town: TestClient) -> None:
    [espana] = query(town, type="AirQualityObserved", q="no2>60", attrs="no2", datasetId=DAILY)
    assert espana["no2"] == prop(41, unitCode="GQ", datasetId=DAILY)
    [espana] = query(town, type="AirQualityObserved", q="no2>60", attrs="no2", datasetId="@none")
    assert espana["no2"] == prop(69, unitCode="GQ")
    [espana] = query(town, type="AirQualityObserved", q="no2>60", attrs="no2")
    assert len(espana["no2"]) == 2


def test_dataset_id_must_be_uris(town: TestClient) -> None:
    response = town.get(ENTITIES, params={"type": "AirQualityObserved", "datasetId": "not a uri"})
    assert_problem(response, 400, "BadRequestData")


# -- count, limit, offset, Link headers -----------------------------------------------------------------
def test_count_header(town: TestClient) -> None:
    for params in ({"count": "true"}, {"options": "count"}):
        response = town.get(ENTITIES, params={"type": "OffStreetParking", "limit": "1", **params})
        assert response.status_code == 200
        assert response.headers["NGSILD-Results-Count"] == "4"
        assert len(response.json()) == 1
    response = town.get(ENTITIES, params={"type": "OffStreetParking", "q": "availableSpotNumber>10", "count": "true"})
    assert response.headers["NGSILD-Results-Count"] == "2"
    assert "NGSILD-Results-Count" not in town.get(ENTITIES, params={"type": "OffStreetParking"}).headers


def test_count_only_with_limit_zero(town: TestClient) -> None:
    response = town.get(ENTITIES, params={"type": "OffStreetParking", "limit": "0", "count": "true"})
    assert response.status_code == 200, response.text
    assert response.json() == []
    assert response.headers["NGSILD-Results-Count"] == "4"
    assert links(response) == {}


def test_paging_with_prev_and_next_links(town: TestClient) -> None:
    seen: list[str] = []
    response = town.get(ENTITIES, params={"type": "OffStreetParking", "limit": "3", "count": "true"})
    pages = 0
    while True:
        assert response.status_code == 200, response.text
        seen.extend(entity["id"] for entity in response.json())
        pages += 1
        if pages > 1:
            assert "prev" in links(response)
        if "next" not in links(response):
            break
        response = town.get(links(response)["next"])
    assert seen == PARKINGS
    assert pages == 2
    assert response.headers["NGSILD-Results-Count"] == "4"  # the links keep every parameter
    previous = town.get(links(response)["prev"])
    assert [e["id"] for e in previous.json()] == PARKINGS[:3]


def test_link_targets_page_the_same_query(town: TestClient) -> None:
    response = town.get(
        ENTITIES, params={"type": "OffStreetParking", "q": "availableSpotNumber>=0", "limit": "2", "offset": "1"}
    )
    found = links(response)
    for rel, offset in (("prev", "0"), ("next", "3")):
        target = urlsplit(found[rel])
        assert target.path == ENTITIES
        params = dict(parse_qsl(target.query))
        assert params == {"type": "OffStreetParking", "q": "availableSpotNumber>=0", "limit": "2", "offset": offset}


def test_following_next_keeps_a_q_with_reserved_characters(town: TestClient) -> None:
    """The links must percent-encode values: a q holding `&`, `+` or `#` must survive the round trip."""
    payload = [{"id": f"urn:ngsi-ld:Shop:{n}", "type": "Shop", "name": prop("Fish & Chips + #1")} for n in range(3)]
    assert town.post(BATCH + "/create", json=payload).status_code == 201
    first = town.get(ENTITIES, params={"type": "Shop", "q": 'name=="Fish & Chips + #1"', "limit": "2"})
    assert [e["id"] for e in first.json()] == ["urn:ngsi-ld:Shop:0", "urn:ngsi-ld:Shop:1"]
    assert not set(links(first)["next"]) & set(' "<>#'), links(first)  # RFC 3986: these must be escaped
    second = town.get(links(first)["next"])
    assert second.status_code == 200, second.text
    assert [e["id"] for e in second.json()] == ["urn:ngsi-ld:Shop:2"]


def test_offset_past_the_end_is_an_empty_page(town: TestClient) -> None:
    response = town.get(ENTITIES, params={"type": "OffStreetParking", "offset": "100", "count": "true"})
    assert response.status_code == 200, response.text
    assert response.json() == []
    assert response.headers["NGSILD-Results-Count"] == "4"
    assert "next" not in links(response)


def test_default_page_size(db_url: str) -> None:
    settings = Settings(database=db_url, default_page_size=2, max_page_size=3)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        assert client.post(BATCH + "/create", json=city()).status_code == 201
        response = client.get(ENTITIES, params={"type": "OffStreetParking"})
        assert [e["id"] for e in response.json()] == PARKINGS[:2]
        assert dict(parse_qsl(urlsplit(links(response)["next"]).query))["limit"] == "2"
        assert len(client.get(ENTITIES, params={"type": "OffStreetParking", "limit": "3"}).json()) == 3
        body = assert_problem(
            client.get(ENTITIES, params={"type": "OffStreetParking", "limit": "4"}), 403, "TooManyResults"
        )
        assert "3" in body["detail"]


def test_limit_over_the_maximum_page_size(town: TestClient) -> None:
    """Spec: a limit the broker cannot serve is refused with TooManyResults (403)."""
    assert len(query(town, type="OffStreetParking", limit="1000")) == 4
    body = assert_problem(
        town.get(ENTITIES, params={"type": "OffStreetParking", "limit": "1001"}), 403, "TooManyResults"
    )
    assert "1000" in body["detail"]


@pytest.mark.parametrize(
    "params", [{"limit": "-1"}, {"offset": "-1"}, {"limit": "ten"}, {"offset": "1.5"}, {"limit": ""}]
)
def test_bad_limit_or_offset(town: TestClient, params: dict[str, str]) -> None:
    assert_problem(town.get(ENTITIES, params={"type": "OffStreetParking", **params}), 400, "BadRequestData")


# -- orderBy ----------------------------------------------------------------------------------------
def test_order_by_a_number(town: TestClient) -> None:
    assert ids(town, type="OffStreetParking", orderBy="availableSpotNumber") == [GARAGE, BOLHAO, MUSICA, TRINDADE]
    descending = ids(town, type="OffStreetParking", orderBy="availableSpotNumber;desc")
    assert descending == [TRINDADE, MUSICA, BOLHAO, GARAGE]


def test_order_by_pages_after_sorting(town: TestClient) -> None:
    response = town.get(ENTITIES, params={"type": "OffStreetParking", "orderBy": "totalSpotNumber", "limit": "2"})
    assert [e["id"] for e in response.json()] == [GARAGE, BOLHAO]
    second = town.get(links(response)["next"])
    assert [e["id"] for e in second.json()] == [MUSICA, TRINDADE]


def test_order_by_metadata_and_absent_values_last(town: TestClient) -> None:
    found = ids(town, type="OffStreetParking", orderBy="availableSpotNumber.observedAt;desc")
    assert found == [BOLHAO, TRINDADE, MUSICA, GARAGE]  # the garage has no observedAt: last either way
    assert ids(town, type="OffStreetParking", orderBy="availableSpotNumber.observedAt") == [
        MUSICA,
        TRINDADE,
        BOLHAO,
        GARAGE,
    ]


def test_order_by_several_keys(town: TestClient) -> None:
    found = ids(town, type="OffStreetParking,District", orderBy="type;desc,name")
    assert found == [BOLHAO, MUSICA, TRINDADE, GARAGE, BOAVISTA, CENTRO]


def test_order_by_with_collation(town: TestClient) -> None:
    assert ids(town, type="OffStreetParking", orderBy="name") == [BOLHAO, MUSICA, TRINDADE, GARAGE]
    assert ids(town, type="OffStreetParking", orderBy="name", collation="und") == [GARAGE, BOLHAO, MUSICA, TRINDADE]


def test_order_by_distance(town: TestClient) -> None:
    origin = json.dumps(MUSICA_POINT)
    nearest = ids(town, type="OffStreetParking", orderBy="location;dist-asc", orderFrom=origin)
    assert nearest == [MUSICA, TRINDADE, BOLHAO, GARAGE]
    farthest = ids(town, type="OffStreetParking", orderBy="location;dist-desc", orderFrom=origin)
    assert farthest == [GARAGE, BOLHAO, TRINDADE, MUSICA]


@pytest.mark.parametrize(
    "params",
    [
        {"orderBy": "location;dist-asc"},
        {"orderBy": "name;sideways"},
        {"orderBy": ""},
        {"orderBy": "name", "collation": "not a tag"},
        {"collation": "x_y"},
        {"orderBy": "location;dist-asc", "orderFrom": "[500,0]"},
    ],
)
def test_order_by_errors(town: TestClient, params: dict[str, str]) -> None:
    assert_problem(town.get(ENTITIES, params={"type": "OffStreetParking", **params}), 400, "BadRequestData")


# -- join -------------------------------------------------------------------------------------------
def test_join_inline(town: TestClient) -> None:
    [spot] = query(town, type="ParkingSpot", join="inline")
    assert spot["refParkingSite"]["object"] == TRINDADE
    assert spot["refParkingSite"]["entity"]["id"] == TRINDADE
    assert "entity" not in spot["refParkingSite"]["entity"]["refDistrict"]  # joinLevel 1
    [spot] = query(town, type="ParkingSpot", join="inline", joinLevel="2")
    assert spot["refParkingSite"]["entity"]["refDistrict"]["entity"]["id"] == CENTRO
    [spot] = query(town, type="ParkingSpot", join="inline", options="keyValues")
    assert spot["refParkingSite"]["id"] == TRINDADE
    assert spot["refParkingSite"]["availableSpotNumber"] == 132


def test_join_flat(town: TestClient) -> None:
    assert [e["id"] for e in query(town, type="ParkingSpot", join="flat")] == [SPOT, TRINDADE]
    assert [e["id"] for e in query(town, type="ParkingSpot", join="flat", joinLevel="2")] == [SPOT, TRINDADE, CENTRO]


def test_join_none_and_pick_into_linked_entities(town: TestClient) -> None:
    [spot] = query(town, type="ParkingSpot", join="@none")
    assert "entity" not in spot["refParkingSite"]
    [spot] = query(town, type="ParkingSpot", join="inline", pick="id,refParkingSite{id,name}")
    assert set(spot) == {"id", "refParkingSite"}
    linked = spot["refParkingSite"]["entity"]
    assert linked["id"] == TRINDADE
    assert linked["name"] == prop("Parque de estacionamento Trindade")
    assert "availableSpotNumber" not in linked and "type" not in linked


@pytest.mark.parametrize(
    "params",
    [
        {"join": "sideways"},
        {"joinLevel": "2"},
        {"join": "inline", "joinLevel": "0"},
        {"join": "inline", "joinLevel": "x"},
    ],
)
def test_join_errors(town: TestClient, params: dict[str, str]) -> None:
    assert_problem(town.get(ENTITIES, params={"type": "ParkingSpot", **params}), 400, "BadRequestData")


# -- GeoJSON ----------------------------------------------------------------------------------------
def test_geo_json_feature_collection(town: TestClient) -> None:
    response = town.get(
        ENTITIES,
        params={
            "type": "OffStreetParking",
            "q": "availableSpotNumber>10",
            "options": "keyValues",
            "attrs": "name,location",
        },
        headers={"Accept": "application/geo+json"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/geo+json")
    body = response.json()
    assert body["type"] == "FeatureCollection"
    assert body["@context"] == CORE
    assert [f["id"] for f in body["features"]] == [TRINDADE, MUSICA]
    musica = body["features"][1]
    assert musica["type"] == "Feature"
    assert musica["geometry"] == {"type": "Point", "coordinates": MUSICA_POINT}
    assert musica["properties"]["name"] == "Casa da Música"


def test_geo_json_geometry_property(town: TestClient) -> None:
    response = town.get(
        ENTITIES,
        params={"type": "OffStreetParking", "id": TRINDADE, "geometryProperty": "entrance"},
        headers={"Accept": "application/geo+json"},
    )
    assert response.status_code == 200, response.text
    [feature] = response.json()["features"]
    assert feature["geometry"] == {"type": "Point", "coordinates": [-8.62, 41.155]}


def test_geo_json_with_no_geometry_is_null(town: TestClient) -> None:
    response = town.get(
        ENTITIES,
        params={"type": "OffStreetParking", "id": BOLHAO, "geometryProperty": "entrance"},
        headers={"Accept": "application/geo+json"},
    )
    [feature] = response.json()["features"]
    assert feature["geometry"] is None


def test_geometry_property_needs_geo_json(town: TestClient) -> None:
    response = town.get(ENTITIES, params={"type": "OffStreetParking", "geometryProperty": "entrance"})
    assert_problem(response, 400, "BadRequestData")


# -- general errors ---------------------------------------------------------------------------------
def test_unknown_parameter(town: TestClient) -> None:
    body = assert_problem(
        town.get(ENTITIES, params={"type": "OffStreetParking", "colour": "red"}), 400, "InvalidRequest"
    )
    assert "colour" in body["detail"]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"id": TRINDADE},
        {"idPattern": ".*"},
        {"id": TRINDADE, "idPattern": ".*"},
        {"attrs": "createdAt"},
        {"q": "modifiedAt>2000-01-01T00:00:00Z"},
        {"options": "keyValues", "limit": "5"},
        {"local": "false", "id": TRINDADE},
    ],
)
def test_too_wide_queries_are_refused(town: TestClient, params: dict[str, str]) -> None:
    assert_problem(town.get(ENTITIES, params=params), 400, "BadRequestData")


def test_unknown_tenant(town: TestClient) -> None:
    response = town.get(ENTITIES, params={"type": "OffStreetParking"}, headers={"NGSILD-Tenant": "lisboa"})
    assert_problem(response, 404, "NonexistentTenant")
    response = town.post(QUERY, json={"type": "Query", "attrs": ["name"]}, headers={"NGSILD-Tenant": "lisboa"})
    assert_problem(response, 404, "NonexistentTenant")


def test_tenants_are_separate(town: TestClient) -> None:
    other = {"id": "urn:ngsi-ld:OffStreetParking:lisboa-1", "type": "OffStreetParking", "name": prop("Lisboa")}
    assert town.post(ENTITIES, json=other, headers={"NGSILD-Tenant": "lisboa"}).status_code == 201
    response = town.get(ENTITIES, params={"type": "OffStreetParking"}, headers={"NGSILD-Tenant": "lisboa"})
    assert [e["id"] for e in response.json()] == [other["id"]]
    assert ids(town, type="OffStreetParking") == PARKINGS


@pytest.mark.parametrize("accept", ["text/html", "application/xml"])
def test_not_acceptable(town: TestClient, accept: str) -> None:
    response = town.get(ENTITIES, params={"type": "OffStreetParking"}, headers={"Accept": accept})
    assert_problem(response, 406, "NotAcceptable")


def test_expired_entities_are_not_returned(town: TestClient) -> None:
    gone = {"id": "urn:ngsi-ld:District:gone", "type": "District", "expiresAt": "2000-01-01T00:00:00Z"}
    town.post(ENTITIES, json=gone)  # already expired: accepted or refused, it must never be listed
    assert ids(town, type="District") == [CENTRO, BOAVISTA]


# -- POST /entityOperations/query -------------------------------------------------------------------
def test_post_query_with_entities_q_and_geo_q(town: TestClient) -> None:
    body = {
        "entities": [{"type": "OffStreetParking"}],
        "q": "availableSpotNumber>10",
        "geoQ": {"georel": "near;maxDistance==1500", "geometry": "Point", "coordinates": TRINDADE_POINT},
    }
    assert [e["id"] for e in post_query(town, body)] == [TRINDADE]


def test_post_query_entity_selectors(town: TestClient) -> None:
    body = {
        "entities": [
            {"type": "District", "id": BOAVISTA},
            {"type": "OffStreetParking", "idPattern": "Bolhao$"},
            {"type": "OffStreetParking;Building"},
            {"type": "ParkingSpot", "id": [SPOT, CENTRO]},
        ]
    }
    assert [e["id"] for e in post_query(town, body)] == [BOLHAO, GARAGE, SPOT, BOAVISTA]


def test_post_query_attrs_pick_scope_and_representation(town: TestClient) -> None:
    found = post_query(town, {"attrs": ["no2"], "q": "no2>40"}, options="keyValues")
    assert found == [{"id": ESPANA, "type": "AirQualityObserved", "no2": {"dataset": {"@none": 69, DAILY: 41}}}]
    found = post_query(
        town, {"entities": [{"type": "OffStreetParking"}], "scopeQ": "/Porto/Centro", "pick": ["id", "name"]}
    )
    assert [set(e) for e in found] == [{"id", "name"}, {"id", "name"}]
    assert [e["id"] for e in found] == [TRINDADE, BOLHAO]
    found = post_query(
        town, {"entities": [{"type": "AirQualityObserved", "id": ESPANA}], "attrs": "no2", "datasetId": [DAILY]}
    )
    assert found == [{"id": ESPANA, "type": "AirQualityObserved", "no2": prop(41, unitCode="GQ", datasetId=DAILY)}]


def test_post_query_lang_and_join(town: TestClient) -> None:
    [musica] = post_query(town, {"entities": [{"type": "OffStreetParking", "id": MUSICA}], "lang": "pt"})
    assert musica["description"]["value"] == "Debaixo da sala de concertos"
    flat = post_query(town, {"entities": [{"type": "ParkingSpot"}], "join": "flat", "joinLevel": 2})
    assert [e["id"] for e in flat] == [SPOT, TRINDADE, CENTRO]


def test_post_query_ordering_and_paging(town: TestClient) -> None:
    body = {
        "entities": [{"type": "OffStreetParking"}],
        "ordering": {"orderBy": ["location;dist-asc"], "coordinates": MUSICA_POINT},
    }
    assert [e["id"] for e in post_query(town, body)] == [MUSICA, TRINDADE, BOLHAO, GARAGE]
    response = town.post(QUERY, json={"type": "Query", **body}, params={"limit": "2", "offset": "1", "count": "true"})
    assert response.status_code == 200, response.text
    assert [e["id"] for e in response.json()] == [TRINDADE, BOLHAO]
    assert response.headers["NGSILD-Results-Count"] == "4"
    collated = {"entities": [{"type": "OffStreetParking"}], "ordering": {"orderBy": "name", "collation": "und"}}
    assert [e["id"] for e in post_query(town, collated)] == [GARAGE, BOLHAO, MUSICA, TRINDADE]


def test_post_query_geo_json(town: TestClient) -> None:
    response = town.post(
        QUERY,
        json={"type": "Query", "entities": [{"type": "District"}]},
        headers={"Accept": "application/geo+json"},
        params={"options": "keyValues"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "FeatureCollection"
    assert [f["geometry"]["type"] for f in body["features"]] == ["Polygon", "Polygon"]


def test_post_query_with_an_inline_context(town: TestClient) -> None:
    body = {
        "type": "Query",
        "entities": [{"type": "CarPark"}],
        "q": "free>100",
        "@context": {"CarPark": DEFAULT + "OffStreetParking", "free": DEFAULT + "availableSpotNumber"},
    }
    response = town.post(QUERY, json=body, headers={"Content-Type": "application/ld+json"})
    assert response.status_code == 200, response.text
    [trindade] = response.json()
    assert trindade["id"] == TRINDADE
    assert trindade["free"]["value"] == 132


@pytest.mark.parametrize(
    ("body", "params", "kind"),
    [
        ({"entities": [{"type": "District"}]}, {}, None),  # missing "type": "Query"
        ({"type": "Query"}, {}, "BadRequestData"),
        ({"type": "Query", "entities": []}, {}, "BadRequestData"),
        ({"type": "Query", "entities": [{"id": CENTRO}]}, {}, "BadRequestData"),
        ({"type": "Query", "attrs": ["name"], "colour": "red"}, {}, "BadRequestData"),
        ({"type": "Query", "attrs": ["name"], "q": "name=="}, {}, "BadRequestData"),
        ({"type": "Query", "attrs": ["name"], "q": 5}, {}, "BadRequestData"),
        (
            {"type": "Query", "geoQ": {"georel": "around", "geometry": "Point", "coordinates": [0, 0]}},
            {},
            "BadRequestData",
        ),
        (
            {"type": "Query", "geoQ": {"georel": "within", "geometry": "Polygon", "coordinates": [0, 0]}},
            {},
            "BadRequestData",
        ),
        ({"type": "Query", "geoQ": {"georel": "within"}}, {}, "BadRequestData"),
        ({"type": "Query", "attrs": ["name"], "ordering": {"orderBy": "location;dist-asc"}}, {}, "BadRequestData"),
        ({"type": "Query", "attrs": ["name"]}, {"limit": "1001"}, "TooManyResults"),
        ({"type": "Query", "attrs": ["name"]}, {"q": "name==1"}, "InvalidRequest"),
        ([{"type": "Query"}], {}, "BadRequestData"),
    ],
)
def test_post_query_errors(town: TestClient, body: Any, params: dict[str, str], kind: str | None) -> None:
    response = town.post(QUERY, json=body, params=params)
    if kind is None:
        assert_problem(response, 400, "BadRequestData")
    else:
        assert_problem(response, 403 if kind == "TooManyResults" else 400, kind)


def test_post_query_offset_past_the_end(town: TestClient) -> None:
    response = town.post(QUERY, json={"type": "Query", "attrs": ["name"]}, params={"offset": "50"})
    assert response.status_code == 200, response.text
    assert response.json() == []


# -- the Smart Data Models examples come back unchanged --------------------------------------------
@pytest.mark.parametrize(("name", "entity_id"), [("OffStreetParking", TRINDADE), ("AirQualityObserved", ESPANA)])
def test_sdm_examples_round_trip_through_a_query(client: TestClient, name: str, entity_id: str) -> None:
    entity = example(name)
    assert client.post(ENTITIES, json=copy.deepcopy(entity)).status_code == 201
    [found] = query(client, type=name)
    assert found == entity
    assert found["id"] == entity_id
