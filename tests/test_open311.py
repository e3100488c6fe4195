"""Open311 GeoReport v2 (open311/) on both back-ends, through the served API with --auth required:
the spec's published examples (../shared/data/open311/georeport-v2) compared with CityOS's answers
in JSON and XML, every answer validated against the Swagger file's schemas, the spec's error shape
for every kind of bad input (and nothing stored), api_key through the trust layer's keys, a flood
from one key, duplicates, the nearest asset, a photo's EXIF (GPS) gone, and the operators'
lifecycle with its notification entity and resolution time."""

from __future__ import annotations

import io
import itertools
import os
import threading
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from PIL import Image
from starlette.testclient import TestClient

from backends import make_key
from cityos.app import create_app
from cityos.auth.principal import OPEN
from cityos.settings import Settings
from notify_helpers import receiving
from server_process import LoggedServer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "open311"
if not DATA.is_dir():
    DATA = Path("/work/shared/data/open311")
SAMPLES = DATA / "georeport-v2"
BASE = "/open311/v2"
ENTITIES = "/ngsi-ld/v1/entities"
MAIN_LAMP_2 = (-116.7615, 36.9062)  # the demo city's Main St lamp 2
ASSETS = [
    ("urn:ngsi-ld:Streetlight:main-1", "Streetlight", -116.7630, 36.9058),
    ("urn:ngsi-ld:Streetlight:main-2", "Streetlight", *MAIN_LAMP_2),
    ("urn:ngsi-ld:Streetlight:north-1", "Streetlight", -116.7640, 36.9149),
    ("urn:ngsi-ld:WasteContainer:park", "WasteContainer", -116.7587, 36.9095),
]
MAX_MEDIA = 200_000
INDICATOR_DIR = Path(__file__).resolve().parents[1] / "src" / "cityos" / "open311" / "indicators"
_names = itertools.count(1)


@dataclass
class City:
    client: TestClient
    admin: str
    tokens: dict[str, str]

    def key(self, roles: tuple[str, ...] = ()) -> str:
        """A new API key (each test its own: the rate limit is per key)."""
        credentials = self.client.app.state.identity.credentials  # type: ignore[attr-defined]
        issued = self.client.portal.call(  # type: ignore[union-attr]
            lambda: credentials.create_key(OPEN, name=f"app-{next(_names)}", roles=roles)
        )
        token: str = issued.token
        return token

    def report(self, fmt: str = "json", key: str | None = None, **fields: Any) -> Any:
        data = {"service_code": "pothole", "lat": "36.9100", "long": "-116.7600", **fields}
        if key is not None:
            data["api_key"] = key
        return self.client.post(f"{BASE}/requests.{fmt}", data=data)

    def entity(self, request_id: str) -> dict[str, Any]:
        answer = self.client.get(f"{ENTITIES}/urn:ngsi-ld:Open311ServiceRequest:{request_id}", headers=self.bearer)
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    def count(self, entity_type: str = "Open311ServiceRequest") -> int:
        answer = self.client.get(
            ENTITIES, params={"type": entity_type, "count": "true", "limit": "0"}, headers=self.bearer
        )
        return int(answer.headers["NGSILD-Results-Count"])

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin}"}


@pytest.fixture(scope="module")
def city(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[City]:
    settings = Settings(
        database=module_db_url,
        auth="required",
        open311_media_dir=str(tmp_path_factory.mktemp("media")),
        open311_rate_limit=0.01,
        open311_rate_limit_burst=12,
        open311_max_media_bytes=MAX_MEDIA,
        indicators_dir=str(INDICATOR_DIR),  # the resolution-time indicator of docs/citizens.md
        allow_private_networks=True,  # the subscription test's receiver is on 127.0.0.1
    )
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        made = City(client, "", {})
        made.admin = made.key(("admin",))
        assets = [
            {"id": i, "type": t, "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [x, y]}}}
            for i, t, x, y in ASSETS
        ]
        done = client.post("/ngsi-ld/v1/entityOperations/upsert", json=assets, headers=made.bearer)
        assert done.status_code in (201, 204), done.text
        made.tokens["app"] = made.key()
        yield made


# -- the Swagger file's schemas and the spec's samples ----------------------------------------------
def swagger() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DATA / "georeport_v2-1.yaml").read_text(encoding="utf-8"))
    return loaded


DEFINITIONS = swagger()["definitions"]


def valid(document: Any, definition: str, many: bool = False) -> None:
    """`document` against the Swagger definition (an array of them when `many`), formats checked."""
    ref = {"$ref": f"#/definitions/{definition}"}
    schema = {"definitions": DEFINITIONS, **({"type": "array", "items": ref} if many else ref)}
    jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker()).validate(document)


def sample_json(name: str) -> Any:
    return yaml.safe_load((SAMPLES / name).read_text(encoding="utf-8"))


def xml_shape(text: str | bytes) -> tuple[str, list[tuple[str, list[str]]]]:
    """(root tag, [(item tag, child tags)]) of a GeoReport XML document."""
    root = ET.fromstring(text)
    return root.tag, [(item.tag, [child.tag for child in item]) for item in root]


def test_the_service_list_has_the_samples_shape_in_both_formats(city: City) -> None:
    answer = city.client.get(f"{BASE}/services.json")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    services = answer.json()
    valid(services, "Service", many=True)
    sample = sample_json("services.json")
    assert {s["service_code"] for s in services} >= {"streetlight-out", "pothole", "bin-overflowing"}
    for service in services:
        assert set(service) == set(sample[0])  # the same members as the spec's example
    xml = city.client.get(f"{BASE}/services.xml")
    assert xml.headers["content-type"].startswith("text/xml")
    root, items = xml_shape(xml.content)
    sample_root, sample_items = xml_shape((SAMPLES / "services.xml").read_bytes())
    assert root == sample_root and {tag for tag, _ in items} == {sample_items[0][0]}
    assert all(sorted(children) == sorted(sample_items[0][1]) for _, children in items)
    assert [e.findtext("service_code") for e in ET.fromstring(xml.content)] == [s["service_code"] for s in services]


def test_a_service_definition_has_the_samples_shape_in_both_formats(city: City) -> None:
    definition = city.client.get(f"{BASE}/services/streetlight-out.json").json()
    valid(definition, "ServiceDefinition")
    sample = sample_json("service_definition.json")
    assert set(definition) == set(sample)
    attribute = definition["attributes"][0]
    assert set(attribute) <= set(sample["attributes"][0]) and attribute["code"] == "LIGHT_STATE"
    assert set(attribute["values"][0]) == set(sample["attributes"][0]["values"][0])
    xml = ET.fromstring(city.client.get(f"{BASE}/services/streetlight-out.xml").content)
    spec = ET.fromstring((SAMPLES / "service_definition.xml").read_bytes())
    assert xml.tag == spec.tag and [c.tag for c in xml] == [c.tag for c in spec]
    ours, theirs = xml.find("attributes/attribute"), spec.find("attributes/attribute")
    assert ours is not None and theirs is not None
    assert [c.tag for c in ours] == [c.tag for c in theirs]
    assert [v.findtext("key") for v in ours.iterfind("values/value")] == ["off", "flickering", "day"]
    for fmt in ("json", "xml"):
        missing = city.client.get(f"{BASE}/services/nothing.{fmt}")
        assert missing.status_code == 404
        errors(missing, fmt, 404)


def errors(answer: Any, fmt: str, status: int) -> list[str]:
    """The spec's error document (errors.json / errors.xml): its descriptions."""
    assert answer.status_code == status, answer.text
    if fmt == "json":
        body = answer.json()
        assert isinstance(body, list) and body and all(set(e) == set(sample_json("errors.json")[0]) for e in body)
        assert all(e["code"] == status for e in body)
        return [e["description"] for e in body]
    root, items = xml_shape(answer.content)
    spec_root, spec_items = xml_shape((SAMPLES / "errors.xml").read_bytes())
    assert root == spec_root and all(item == spec_items[0] for item in items)
    tree = ET.fromstring(answer.content)
    assert all(e.findtext("code") == str(status) for e in tree)
    return [e.findtext("description") or "" for e in tree]


def test_a_report_is_posted_and_read_back_in_both_formats(city: City) -> None:
    key = city.key()
    posted = city.report("json", key, description="Deep hole by the bus stop", address_string="Main St")
    assert posted.status_code == 200, posted.text
    valid(posted.json(), "RequestResponse", many=True)
    sample = sample_json("post_service_request_response.json")[0]
    made = posted.json()[0]
    assert set(made) - {"token"} <= set(sample) and made["token"]
    request_id = made["service_request_id"]
    assert posted.headers["location"] == f"{BASE}/requests/{request_id}.json"
    as_xml = city.report("xml", key, lat="36.9200", long="-116.7700")
    assert as_xml.status_code == 200
    root, items = xml_shape(as_xml.content)
    spec_root, spec_items = xml_shape((SAMPLES / "post_service_request_response.xml").read_bytes())
    assert root == spec_root and items[0][0] == spec_items[0][0]
    assert set(items[0][1]) - {"token"} <= set(spec_items[0][1])

    one = city.client.get(f"{BASE}/requests/{request_id}.json")
    valid(one.json(), "Request", many=True)
    assert set(one.json()[0]) <= set(sample_json("request.json")[0])
    got = one.json()[0]
    assert got["service_code"] == "pothole" and got["status"] == "open" and got["address"] == "Main St"
    assert (got["lat"], got["long"]) == (36.91, -116.76) and got["description"] == "Deep hole by the bus stop"
    xml = city.client.get(f"{BASE}/requests/{request_id}.xml")
    assert xml_shape(xml.content) == xml_shape((SAMPLES / "request.xml").read_bytes())
    assert ET.fromstring(xml.content).findtext("request/service_request_id") == request_id

    token = made["token"]
    resolved = city.client.get(f"{BASE}/tokens/{token}.json")
    valid(resolved.json(), "TokenResponse", many=True)
    assert resolved.json() == [{"service_request_id": request_id, "token": token}]
    assert set(resolved.json()[0]) == set(sample_json("token_response.json")[0])
    token_xml = city.client.get(f"{BASE}/tokens/{token}.xml")
    assert xml_shape(token_xml.content) == xml_shape((SAMPLES / "token_response.xml").read_bytes())
    errors(city.client.get(f"{BASE}/tokens/nosuchtoken1.xml"), "xml", 404)
    errors(city.client.get(f"{BASE}/requests/nothing.json"), "json", 404)

    # the entity: Smart Data Models IssueTracking names, readable through NGSI-LD by who may
    entity = city.entity(request_id)
    assert entity["type"] == "Open311ServiceRequest"
    assert entity["service_code"]["value"] == "pothole" and entity["lifecycleStatus"]["value"] == "open"
    assert entity["location"]["value"] == {"type": "Point", "coordinates": [-116.76, 36.91]}
    assert entity["dataProvider"]["value"].startswith("key:")


def test_searches_use_the_specs_filters(city: City) -> None:
    key = city.key()
    lamp = city.report(
        "json",
        key,
        service_code="streetlight-out",
        lat="36.9149",
        long="-116.7640",
        **{"attribute[LIGHT_STATE]": "off"},
    ).json()[0]["service_request_id"]
    bin_ = city.report("json", key, service_code="bin-overflowing", lat="36.9095", long="-116.7587").json()[0][
        "service_request_id"
    ]
    found = city.client.get(f"{BASE}/requests.json", params={"service_code": "bin-overflowing"}).json()
    valid(found, "Request", many=True)
    assert bin_ in {r["service_request_id"] for r in found} and {r["service_code"] for r in found} == {
        "bin-overflowing"
    }
    two = city.client.get(f"{BASE}/requests.json", params={"service_code": "bin-overflowing,streetlight-out"}).json()
    assert {lamp, bin_} <= {r["service_request_id"] for r in two}
    assert {r["service_code"] for r in two} == {"bin-overflowing", "streetlight-out"}
    either = {"status": "open,closed", "service_code": "streetlight-out"}
    opened = city.client.get(f"{BASE}/requests.json", params=either)
    assert lamp in {r["service_request_id"] for r in opened.json()}
    # the same window through NGSI-LD q: the dates are ISO text the store compares
    since = city.client.get(f"{BASE}/requests/{lamp}.json").json()[0]["requested_datetime"]
    newer = city.client.get(
        ENTITIES,
        params={"type": "Open311ServiceRequest", "q": f'requested_datetime>="{since}"', "limit": "1000"},
        headers=city.bearer,
    ).json()
    assert f"urn:ngsi-ld:Open311ServiceRequest:{lamp}" in {e["id"] for e in newer}
    both = city.client.get(f"{BASE}/requests.json", params={"service_request_id": f"{lamp},{bin_}"}).json()
    assert {r["service_request_id"] for r in both} == {lamp, bin_}
    everything = city.client.get(f"{BASE}/requests.xml")
    assert {lamp, bin_} <= {e.findtext("service_request_id") for e in ET.fromstring(everything.content)}
    times = [r["requested_datetime"] for r in city.client.get(f"{BASE}/requests.json").json()]
    assert times == sorted(times, reverse=True)  # newest first
    closed = city.client.get(f"{BASE}/requests.json", params={"status": "closed", "service_code": "bin-overflowing"})
    assert all(r["status"] == "closed" for r in closed.json())
    old = city.client.get(
        f"{BASE}/requests.json", params={"start_date": "2010-01-01T00:00:00Z", "end_date": "2010-03-01T00:00:00Z"}
    )
    assert old.json() == []
    assert (
        "90 days"
        in errors(
            city.client.get(
                f"{BASE}/requests.json",
                params={"start_date": "2010-01-01T00:00:00Z", "end_date": "2011-01-01T00:00:00Z"},
            ),
            "json",
            400,
        )[0]
    )
    errors(city.client.get(f"{BASE}/requests.xml", params={"status": "pending"}), "xml", 400)
    errors(city.client.get(f"{BASE}/requests.json", params={"start_date": "yesterday"}), "json", 400)
    errors(city.client.get(f"{BASE}/requests.json", params={"jurisdiction_id": "elsewhere"}), "json", 404)
    errors(city.client.get(f"{BASE}/requests.html"), "json", 400)


def jpeg_with_gps() -> bytes:
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    exif = Image.Exif()
    exif[0x010F] = "TestCam"  # Make
    exif[0x8825] = {1: "N", 2: (36.0, 54.0, 22.0), 3: "W", 4: (116.0, 45.0, 41.0)}  # GPSInfo
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue()


BAD_INPUT = [
    ("no service_code", {"service_code": ""}, 400, "service_code"),
    ("unknown service_code", {"service_code": "fireworks"}, 404, "fireworks"),
    ("outside the city", {"lat": "48.8566", "long": "2.3522"}, 400, "outside"),
    ("no location", {"lat": "", "long": ""}, 400, "location is required"),
    ("lat without long", {"long": ""}, 400, "together"),
    ("not a number", {"lat": "north"}, 400, "lat must be a number"),
    (
        "required attribute",
        {"service_code": "streetlight-out", "lat": "36.9062", "long": "-116.7615"},
        400,
        "LIGHT_STATE",
    ),
    ("attribute value", {"service_code": "graffiti", "attribute[OFFENSIVE]": "maybe"}, 400, "not one of its values"),
    ("undeclared attribute", {"attribute[COLOUR]": "red"}, 400, "COLOUR"),
    ("bad e-mail", {"email": "<script>@x"}, 400, "email"),
    ("long description", {"description": "x" * 4001}, 400, "4000"),
    ("other jurisdiction", {"jurisdiction_id": "elsewhere"}, 404, "jurisdiction_id"),
]


@pytest.mark.parametrize(("case", "fields", "status", "said"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_the_specs_error_and_stores_nothing(
    city: City, case: str, fields: dict[str, str], status: int, said: str
) -> None:
    before = city.count()
    fmt = "xml" if len(case) % 2 else "json"  # both formats, across the cases
    answer = city.report(fmt, city.tokens["app"], **fields)
    assert any(said in text for text in errors(answer, fmt, status)), answer.text
    assert city.count() == before


def test_a_report_is_a_form_not_json(city: City) -> None:
    before = city.count()
    answer = city.client.post(
        f"{BASE}/requests.json", json={"service_code": "pothole", "lat": 36.91, "long": -116.76, "api_key": "x"}
    )
    assert "form" in errors(answer, "json", 400)[0]
    assert city.count() == before


def test_api_keys_are_the_trust_layers(city: City) -> None:
    before = city.count()
    for key, fmt in ((None, "json"), ("ck_nothing.secret", "xml"), ("not-a-key", "json")):
        said = errors(city.report(fmt, key), fmt, 403)
        assert "api_key" in said[0]
    assert city.count() == before
    assert city.report("json", city.key()).status_code == 200


def test_uploads_oversized_or_not_images_are_refused(city: City) -> None:
    before = city.count()
    key = city.key()
    data = {"service_code": "pothole", "lat": "36.91", "long": "-116.76", "api_key": key}
    cases = [
        ("notes.jpg", b"GIF89a not really", "image/jpeg", 400),  # a name and type that lie
        ("page.png", b"<html><script>alert(1)</script></html>", "image/png", 400),
        ("big.png", _noise_png(MAX_MEDIA + 10), "image/png", 413),  # past --open311-max-media-bytes
        ("anim.gif", _gif(), "image/gif", 400),  # a real image, of a type not accepted
    ]
    for name, content, media_type, status in cases:
        answer = city.client.post(f"{BASE}/requests.json", data=data, files={"media": (name, content, media_type)})
        errors(answer, "json", status)
    assert city.count() == before
    media_dir = Path(city.client.app.state.open311.core.media.directory)  # type: ignore[attr-defined]
    assert not media_dir.exists() or not [p for p in media_dir.iterdir() if not p.name.endswith((".jpg", ".png"))]


def _noise_png(size: int) -> bytes:
    """A real PNG larger than `size` (random pixels do not compress)."""
    side = int((size / 3) ** 0.5) + 8
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG")
    assert len(out.getvalue()) > size
    return out.getvalue()


def _gif() -> bytes:
    out = io.BytesIO()
    Image.new("P", (8, 8)).save(out, "GIF")
    return out.getvalue()


def test_a_photo_is_served_without_its_exif_and_gps(city: City) -> None:
    original = jpeg_with_gps()
    assert Image.open(io.BytesIO(original)).getexif().get_ifd(0x8825)  # it has a GPS position
    data = {"service_code": "pothole", "lat": "36.91", "long": "-116.76", "api_key": city.key()}
    posted = city.client.post(f"{BASE}/requests.json", data=data, files={"media": ("x.png", original, "image/png")})
    assert posted.status_code == 200, posted.text
    request_id = posted.json()[0]["service_request_id"]
    media_url = city.client.get(f"{BASE}/requests/{request_id}.json").json()[0]["media_url"]
    assert media_url.startswith("http://127.0.0.1:1026/open311/v2/media/") and media_url.endswith(".jpg")
    served = city.client.get(media_url)
    assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"
    assert served.headers["x-content-type-options"] == "nosniff"
    photo = Image.open(io.BytesIO(served.content))
    assert photo.format == "JPEG" and photo.size == (64, 48)
    assert dict(photo.getexif()) == {} and "exif" not in photo.info
    assert b"Exif" not in served.content and b"TestCam" not in served.content
    again = city.client.post(f"{BASE}/requests.json", data=data, files={"media": ("y.jpg", original, "image/jpeg")})
    again_id = again.json()[0]["service_request_id"]
    assert city.client.get(f"{BASE}/requests/{again_id}.json").json()[0]["media_url"] == media_url  # one file
    for name in ("..%2F..%2Fetc%2Fpasswd", "passwd", "0" * 64 + ".jpg"):  # only names the store made
        assert city.client.get(f"{BASE}/media/{name}").status_code == 404


def test_script_in_a_description_is_stored_as_given_and_escaped_everywhere(city: City) -> None:
    text = '<script>alert("x")</script> & <b>bold</b> ]]>'
    request_id = city.report("json", city.key(), description=text).json()[0]["service_request_id"]
    assert city.entity(request_id)["description"]["value"] == text  # stored as given
    as_json = city.client.get(f"{BASE}/requests/{request_id}.json")
    assert as_json.json()[0]["description"] == text
    as_xml = city.client.get(f"{BASE}/requests/{request_id}.xml")
    assert b"<script>" not in as_xml.content and b"&lt;script&gt;" in as_xml.content
    assert ET.fromstring(as_xml.content).findtext("request/description") == text  # the same text, parsed


def test_a_flood_from_one_key_is_refused_and_stores_nothing(city: City) -> None:
    key = city.key()
    answers = [city.report("json", key, lat="36.87", long=f"-116.{780 + n}") for n in range(15)]
    accepted = [a for a in answers if a.status_code == 200]
    assert len(accepted) == 12  # the burst (--open311-rate-limit-burst), then 429
    for refused in answers[12:]:
        assert "too many" in errors(refused, "json", 429)[0] and int(refused.headers["retry-after"]) >= 1
    mine = [a.json()[0]["service_request_id"] for a in accepted]
    listed = city.client.get(f"{BASE}/requests.json", params={"service_code": "pothole"}).json()
    stored = {r["service_request_id"] for r in listed if r["lat"] == 36.87}
    assert stored == set(mine)
    assert city.report("json", city.key(), lat="36.87", long="-116.79").status_code == 200  # another key: served


def test_duplicates_are_linked_counted_and_told(city: City) -> None:
    key = city.key()
    place = {"service_code": "bin-overflowing", "lat": "36.8800", "long": "-116.7500"}
    first = city.report("json", key, **place).json()[0]
    assert "duplicate_of" not in first
    second = city.report("json", key, **{**place, "lat": "36.88005"}).json()[0]  # 5.6 m away
    assert second["duplicate_of"] == first["service_request_id"] and second["duplicate_reports"] == 2
    assert "already reported" in second["service_notice"]
    third = city.report("xml", key, **{**place, "long": "-116.75010"})  # 9 m away
    tree = ET.fromstring(third.content)
    assert "3 reports so far" in (tree.findtext("request/service_notice") or "")
    assert tree.findtext("request/duplicate_of") == first["service_request_id"]
    original = city.entity(first["service_request_id"])
    assert original["duplicateCount"]["value"] == 2
    assert city.entity(second["service_request_id"])["duplicateOf"]["object"] == original["id"]
    far = city.report("json", key, **{**place, "lat": "36.8820"}).json()[0]  # 222 m away
    other = city.report("json", key, **{**place, "service_code": "pothole"}).json()[0]  # another service
    assert "duplicate_of" not in far and "duplicate_of" not in other


def test_a_report_is_linked_to_the_nearest_asset_of_its_service(city: City) -> None:
    key = city.key()
    lon, lat = MAIN_LAMP_2
    near = city.report(
        "json",
        key,
        service_code="streetlight-out",
        lat=str(lat + 0.00005),
        long=str(lon),
        **{"attribute[LIGHT_STATE]": "day"},
    ).json()[0]
    entity = city.entity(near["service_request_id"])
    assert entity["refAsset"]["object"] == "urn:ngsi-ld:Streetlight:main-2"
    assert 5 <= entity["assetDistance"]["value"] <= 6.5 and entity["assetDistance"]["unitCode"] == "MTR"
    bin_report = city.report("json", key, service_code="bin-overflowing", lat="36.9096", long="-116.7587").json()[0]
    assert city.entity(bin_report["service_request_id"])["refAsset"]["object"] == "urn:ngsi-ld:WasteContainer:park"
    pothole = city.report("json", key, lat=str(lat), long=str(lon)).json()[0]  # potholes declare no asset type
    assert "refAsset" not in city.entity(pothole["service_request_id"])
    lonely = city.report(
        "json",
        key,
        service_code="streetlight-out",
        lat="36.8500",
        long="-116.8000",
        **{"attribute[LIGHT_STATE]": "off"},
    ).json()[0]
    assert "refAsset" not in city.entity(lonely["service_request_id"])  # none within 50 m


def test_operators_move_the_lifecycle_and_the_reporter_is_notified(city: City) -> None:
    key = city.key()
    request_id = city.report("json", key, lat="36.8600", long="-116.7100", email="ana@example.org").json()[0][
        "service_request_id"
    ]
    silent_id = city.report("json", key, lat="36.8650", long="-116.7150").json()[0]["service_request_id"]
    status = f"/cityos/v1/open311/requests/{request_id}/status"
    assert city.client.post(status, json={"status": "closed"}).status_code == 401  # no credentials
    reader = {"Authorization": f"Bearer {city.key()}"}  # a key without a policy granting writes
    refused = city.client.post(status, json={"status": "closed"}, headers=reader)
    assert refused.status_code == 403 and refused.json()["type"].endswith("AccessDenied")
    before = city.count("Open311Notification")
    for step in ("acknowledged", "inProgress"):
        moved = city.client.post(status, json={"status": step, "notes": f"now {step}"}, headers=city.bearer)
        assert moved.status_code == 200, moved.text
        assert moved.json()["status"] == "open" and moved.json()["lifecycle_status"] == step
    done = city.client.post(status, json={"status": "closed", "notes": "Filled <b>today</b>"}, headers=city.bearer)
    assert done.json()["status"] == "closed" and done.json()["resolution_seconds"] >= 0
    wrong = city.client.post(status, json={"status": "inProgress"}, headers=city.bearer)
    assert wrong.status_code == 409 and "cannot become" in wrong.json()["detail"]
    assert city.client.post(status, json={"status": "lost"}, headers=city.bearer).status_code == 400
    missing = city.client.post(
        "/cityos/v1/open311/requests/nothing/status", json={"status": "closed"}, headers=city.bearer
    )
    assert missing.status_code == 404

    got = city.client.get(f"{BASE}/requests/{request_id}.json").json()[0]
    valid([got], "Request", many=True)
    assert got["status"] == "closed" and got["status_notes"] == "Filled <b>today</b>"
    entity = city.entity(request_id)
    assert entity["lifecycleStatus"]["value"] == "closed" and entity["resolutionTime"]["unitCode"] == "SEC"
    assert entity["resolutionTime"]["value"] == done.json()["resolution_seconds"]
    assert "ana@example.org" not in city.client.get(f"{BASE}/requests/{request_id}.xml").text  # never public
    # one notification per change for the reporter who left an address, none for the other
    city.client.post(f"/cityos/v1/open311/requests/{silent_id}/status", json={"status": "closed"}, headers=city.bearer)
    assert city.count("Open311Notification") == before + 3
    notes = city.client.get(
        ENTITIES,
        params={"type": "Open311Notification", "q": f'refServiceRequest=="{entity["id"]}"'},
        headers=city.bearer,
    ).json()
    assert sorted(n["lifecycleStatus"]["value"] for n in notes) == ["acknowledged", "closed", "inProgress"]
    assert all(n["email"]["value"] == "ana@example.org" and n["deliveryStatus"]["value"] == "pending" for n in notes)
    reopened = city.client.post(status, json={"status": "reopened"}, headers=city.bearer)
    assert reopened.json()["status"] == "open"

    # the indicator of docs/citizens.md: the mean resolutionTime of the requests closed at least once
    timed = city.client.get(
        ENTITIES, params={"type": "Open311ServiceRequest", "q": "resolutionTime", "limit": "1000"}, headers=city.bearer
    ).json()
    seconds = [e["resolutionTime"]["value"] for e in timed]
    assert len(seconds) >= 2
    computed = city.client.post("/cityos/v1/indicators/open311-mean-resolution-time/compute", headers=city.bearer)
    assert computed.status_code == 200, computed.text
    assert computed.json()["value"] == pytest.approx(sum(seconds) / len(seconds))


def test_reports_are_subscribable_as_any_entity(city: City) -> None:
    with receiving() as receiver:
        made = city.client.post(
            "/ngsi-ld/v1/subscriptions",
            json={
                "type": "Subscription",
                "entities": [{"type": "Open311ServiceRequest"}],
                "q": 'service_code=="graffiti"',
                "notification": {"endpoint": {"uri": receiver.url, "accept": "application/json"}},
            },
            headers=city.bearer,
        )
        assert made.status_code == 201, made.text
        try:
            posted = city.report("json", city.key(), service_code="graffiti", **{"attribute[OFFENSIVE]": "no"})
            request_id = posted.json()[0]["service_request_id"]
            [received] = receiver.wait(1)
            [entity] = received.body["data"]
            assert entity["id"] == f"urn:ngsi-ld:Open311ServiceRequest:{request_id}"
            assert entity["serviceAttributes"]["value"] == {"OFFENSIVE": "no"}
        finally:
            city.client.delete(made.headers["location"], headers=city.bearer)


def test_each_tenant_has_its_own_open311(city: City) -> None:
    """NGSILD-Tenant picks the tenant of every Open311 route (none: the default one): reports, searches,
    tokens, duplicates and the operators' lifecycle stay within it; a key scoped to tenants reports
    only there; a bad tenant name is the spec's 400."""
    credentials = city.client.app.state.identity.credentials  # type: ignore[attr-defined]

    def key(*tenants: str) -> str:
        issued = city.client.portal.call(  # type: ignore[union-attr]
            lambda: credentials.create_key(OPEN, name="district-app", tenants=tenants)
        )
        token: str = issued.token
        return token

    scoped, anywhere = key("district-a"), key("district-a", "district-b")
    place = {"service_code": "pothole", "lat": "36.8400", "long": "-116.8900"}
    in_a = {"NGSILD-Tenant": "district-a"}
    made = city.client.post(f"{BASE}/requests.json", data={**place, "api_key": scoped}, headers=in_a)
    assert made.status_code == 200, made.text
    first = made.json()[0]
    # the same problem in another tenant is another city's: not a duplicate of district-a's
    other = city.client.post(
        f"{BASE}/requests.json", data={**place, "api_key": anywhere}, headers={"NGSILD-Tenant": "district-b"}
    ).json()[0]
    assert "duplicate_of" not in other
    again = city.client.post(f"{BASE}/requests.json", data={**place, "api_key": anywhere}, headers=in_a).json()[0]
    assert again["duplicate_of"] == first["service_request_id"]
    # reads within the tenant
    one = f"{BASE}/requests/{first['service_request_id']}.json"
    assert city.client.get(one, headers=in_a).json()[0]["service_request_id"] == first["service_request_id"]
    assert city.client.get(one).status_code == 404  # not in the default tenant
    found = {r["service_request_id"] for r in city.client.get(f"{BASE}/requests.json", headers=in_a).json()}
    assert found == {first["service_request_id"], again["service_request_id"]}
    assert first["service_request_id"] not in {
        r["service_request_id"] for r in city.client.get(f"{BASE}/requests.json").json()
    }
    token = city.client.get(f"{BASE}/tokens/{first['token']}.json", headers=in_a).json()[0]
    assert token["service_request_id"] == first["service_request_id"]
    assert city.client.get(f"{BASE}/tokens/{first['token']}.json").status_code == 404
    # the entity is NGSI-LD's, in the tenant
    entity = city.client.get(
        f"{ENTITIES}/urn:ngsi-ld:Open311ServiceRequest:{first['service_request_id']}",
        headers={**city.bearer, **in_a},
    ).json()
    assert entity["duplicateCount"]["value"] == 1 and entity["dataProvider"]["value"].startswith("key:")
    # the operators' lifecycle, in the tenant
    status = f"/cityos/v1/open311/requests/{first['service_request_id']}/status"
    assert city.client.post(status, json={"status": "closed"}, headers=city.bearer).status_code == 404
    closed = city.client.post(status, json={"status": "closed"}, headers={**city.bearer, **in_a})
    assert closed.status_code == 200 and closed.json()["status"] == "closed", closed.text
    # a key scoped to district-a reports nowhere else, a key of the default tenant only there (a key
    # made without tenants); a bad tenant name is the spec's 400
    for api_key, headers in ((scoped, {}), (scoped, {"NGSILD-Tenant": "district-b"}), (city.key(), in_a)):
        refused = city.client.post(f"{BASE}/requests.json", data={**place, "api_key": api_key}, headers=headers)
        assert refused.status_code == 403 and refused.json()[0]["code"] == 403
    bad = city.client.post(
        f"{BASE}/requests.xml", data={**place, "api_key": anywhere}, headers={"NGSILD-Tenant": "no/such"}
    )
    assert bad.status_code == 400 and "<code>400</code>" in bad.text


def test_one_key_over_two_workers_gets_the_burst_once(fresh_postgres: str, tmp_path: Path) -> None:
    """A real `cityos serve --workers 2` on PostgreSQL: the reports of one api_key, spread over both
    workers, share one bucket (auth/ratelimit.py's shared table), so the burst is let through once."""
    key = make_key(fresh_postgres, "--name", "busy-app")
    burst = 6
    server = LoggedServer(
        tmp_path / "serve.log", "--workers", "2",
        "--open311-rate-limit", "0.01", "--open311-rate-limit-burst", str(burst),
        "--open311-media-dir", str(tmp_path / "media"),
        env={"CITYOS_DATABASE": fresh_postgres},
    )  # fmt: skip
    server.start()
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def post(n: int) -> None:
        data = {"api_key": key, "service_code": "pothole", "lat": "36.90", "long": f"-116.{700 + n}"}
        url = f"{server.base}{BASE}/requests.json"
        answer = httpx.post(url, data=data, headers={"Connection": "close"}, timeout=30)
        with lock:
            answers.append(answer)

    try:
        for round_ in range(4):
            threads = [threading.Thread(target=post, args=(round_ * 10 + n,)) for n in range(2 * burst)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if len({a.headers["x-request-id"].split("-")[0] for a in answers}) == 2:
                break
        assert len({a.headers["x-request-id"].split("-")[0] for a in answers}) == 2, server.log()[-2000:]
        codes = Counter(a.status_code for a in answers)
        assert set(codes) == {200, 429} and burst <= codes[200] <= burst + 1, codes
        assert all(a.json()[0]["code"] == 429 for a in answers if a.status_code == 429)
    finally:
        server.stop()


def _at_once(url: str, form: dict[str, str], times: int) -> list[httpx.Response]:
    """`times` POSTs of the form, sent together (each thread waits for the others before sending)."""
    start = threading.Barrier(times)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def post() -> None:
        with httpx.Client(timeout=30) as http:
            start.wait()
            answer = http.post(url, data=form)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=post) for _ in range(times)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_simultaneous_reports_of_one_problem_make_one_original(db_url: str, tmp_path: Path) -> None:
    """A real server (two workers on PostgreSQL, the one process SQLite allows) gets the same problem
    reported by several citizens at the same moment: one report is the original, every other one is
    linked to it, the original counts them all, and each citizen is told a different count."""
    key = make_key(db_url, "--name", "many-citizens")
    workers = "2" if db_url.startswith("postgresql") else "1"
    server = LoggedServer(
        tmp_path / "serve.log", "--workers", workers, "--open311-rate-limit", "0",
        "--open311-media-dir", str(tmp_path / "media"),
        env={"CITYOS_DATABASE": db_url},
    )  # fmt: skip
    server.start()
    reports = 6
    try:
        for spot in range(3):  # three problems, each reported by `reports` citizens at once
            place = {"api_key": key, "service_code": "bin-overflowing", "lat": f"36.9{spot}", "long": "-116.76"}
            answers = _at_once(f"{server.base}{BASE}/requests.json", place, reports)
            assert [a.status_code for a in answers] == [200] * reports, [a.text for a in answers]
            made = [a.json()[0] for a in answers]
            originals = [m for m in made if "duplicate_of" not in m]
            assert len(originals) == 1, made
            first = originals[0]["service_request_id"]
            assert {m["duplicate_of"] for m in made if m is not originals[0]} == {first}
            assert sorted(m["duplicate_reports"] for m in made if m is not originals[0]) == list(range(2, reports + 1))
            entities = httpx.get(
                f"{server.base}{ENTITIES}",
                params={"type": "Open311ServiceRequest", "options": "keyValues", "limit": "1000"},
                timeout=10,
            ).json()
            mine = [e for e in entities if e["service_request_id"] in {m["service_request_id"] for m in made}]
            assert len(mine) == reports
            original = next(e for e in mine if e["service_request_id"] == first)
            assert original["duplicateCount"] == reports - 1 and "duplicateOf" not in original
            assert sum(1 for e in mine if e.get("duplicateOf") == original["id"]) == reports - 1
    finally:
        server.stop()
