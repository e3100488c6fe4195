"""Bad input gets a 4xx, never a 500 (issue 13 section 2), each case against a real server
process; and the last-resort handler: an error no handler knew answers a ProblemDetails 500 in
one log line and keeps the client's keep-alive connection usable (docs/security.md "Bad input")."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from backends import sqlite_only
from cityos.errors import MAX_LOGGED_TRACEBACK
from cityos.last_resort import LastResort
from server_process import LoggedServer

pytestmark = pytest.mark.slow(seconds=70)

BASE = "/ngsi-ld/v1"


def registration(endpoint: str) -> dict[str, Any]:
    information = [{"entities": [{"type": "Room"}]}]
    return {"type": "ContextSourceRegistration", "information": information, "endpoint": endpoint}


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.fixture
def api(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server + BASE, timeout=30) as client:
        yield client


@pytest.mark.parametrize("endpoint", ["http://example.org:99999", "http://example.org:-1", "http://[::1", "urn:x:y"])
def test_a_registration_endpoint_that_cannot_be_connected_to_is_refused(api: httpx.Client, endpoint: str) -> None:
    response = api.post("/csourceRegistrations", json=registration(endpoint))
    assert response.status_code == 400, response.text
    assert response.json()["type"].endswith("/BadRequestData")
    assert api.get("/csourceRegistrations", params={"type": "Room"}).json() == []
    assert api.get("/entities/urn:ngsi-ld:Room:elsewhere").status_code == 404


def test_a_registration_patched_to_a_bad_endpoint_keeps_the_old_one(api: httpx.Client) -> None:
    created = api.post("/csourceRegistrations", json=registration("http://example.org:8080"))
    assert created.status_code == 201
    location = created.headers["location"].split(BASE, 1)[1]
    assert api.patch(location, json={"endpoint": "http://example.org:99999"}).status_code == 400
    assert api.get(location).json()["endpoint"] == "http://example.org:8080"


@sqlite_only
def test_a_stored_broken_registration_never_breaks_a_local_retrieve(db_url: str, tmp_path: Path) -> None:
    """Registrations stored before endpoints were validated (written into the file as an older
    version stored them): forwarding skips them, a retrieve answers as if they were not there."""
    database = Path(db_url)
    server = LoggedServer(tmp_path / "server.log", "--allow-private-networks", env={"CITYOS_DATABASE": str(database)})
    server.start()
    try:
        with httpx.Client(base_url=server.base + BASE, timeout=30) as api:
            for _ in range(2):
                assert api.post("/csourceRegistrations", json=registration("http://127.0.0.1:8080")).status_code == 201
            with sqlite3.connect(database) as db:
                rows = db.execute("SELECT pk, doc FROM registrations ORDER BY pk").fetchall()
                for (pk, doc), endpoint in zip(rows, ["http://[::1", "http://127.0.0.1:99999"], strict=True):
                    broken = orjson.dumps({**orjson.loads(doc), "endpoint": endpoint})
                    db.execute("UPDATE registrations SET doc = ? WHERE pk = ?", (broken, pk))
            db.close()
            assert api.get("/entities/urn:ngsi-ld:Room:elsewhere").status_code == 404
            assert api.post("/entities", json={"id": "urn:ngsi-ld:Room:here", "type": "Room"}).status_code == 201
            assert api.get("/entities/urn:ngsi-ld:Room:here").status_code == 200
    finally:
        server.stop()
    assert "context source" in server.log() and "Traceback" not in server.log()


@pytest.mark.parametrize("levels", [65, 300, 600])
def test_a_value_nested_too_deep_is_a_400(api: httpx.Client, levels: int) -> None:
    body = {"id": "urn:ngsi-ld:Room:deep", "type": "Room", "a": {"type": "Property", "value": nested(levels)}}
    response = api.post("/entities", content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "max_nesting_depth" in response.json()["detail"]
    assert api.get("/entities/urn:ngsi-ld:Room:deep").status_code == 404


def test_a_value_nested_up_to_the_limit_is_stored(api: httpx.Client) -> None:
    # the entity is level 1, the attribute 2, its value 3: 62 more arrays reach the default 64
    body = {"id": "urn:ngsi-ld:Room:deep", "type": "Room", "a": {"type": "Property", "value": nested(62)}}
    assert api.post("/entities", json=body).status_code == 201
    assert api.get("/entities/urn:ngsi-ld:Room:deep").json()["a"]["value"] == nested(62)


def test_nesting_too_deep_is_a_400_in_every_body(api: httpx.Client) -> None:
    deep = nested(200)
    assert api.post("/entityOperations/upsert", json=[{"id": "urn:x:1", "type": "T", "a": deep}]).status_code == 400
    assert api.post("/subscriptions", json={"type": "Subscription", "q": deep}).status_code == 400
    assert api.post(str(api.base_url.join("/iot/services")), json={"services": [deep]}).status_code == 400


def test_a_nul_character_is_a_400_on_both_backends(api: httpx.Client) -> None:
    """PostgreSQL's text and jsonb cannot hold U+0000 (it was a 500 there): refused alike."""
    for body in (
        {"id": "urn:ngsi-ld:Room:nul", "type": "Room", "a": {"type": "Property", "value": "x\u0000"}},
        {"id": "urn:ngsi-ld:Room:nul", "type": "Room", "a": {"type": "Property", "value": 1, "b\u0000": 2}},
    ):
        response = api.post("/entities", json=body)
        assert response.status_code == 400 and "U+0000" in response.json()["detail"], response.text
    assert api.get("/entities/urn:ngsi-ld:Room:nul").status_code == 404
    escaped = b'{"id": "urn:ngsi-ld:Room:nul", "type": "Room", "a": {"type": "Property", "value": "x\\\\u0000"}}'
    assert api.post("/entities", content=escaped, headers={"content-type": "application/json"}).status_code == 201
    assert api.get("/entities/urn:ngsi-ld:Room:nul").json()["a"]["value"] == "x\\u0000"  # a backslash, then u0000


@pytest.mark.parametrize(
    "attribute", [{"type": {}}, {"type": []}, {"type": {}, "value": 1}, {"type": 5, "coordinates": [1, 2]}]
)
def test_an_attribute_type_that_is_not_a_string_is_a_400(api: httpx.Client, attribute: Any) -> None:
    response = api.post("/entities", json={"id": "urn:ngsi-ld:Room:1", "type": "Room", "a": attribute})
    assert response.status_code == 400, response.text
    assert api.get("/entities/urn:ngsi-ld:Room:1").status_code == 404


def test_a_geoproperty_value_whose_type_is_an_object_is_a_400(api: httpx.Client) -> None:
    body = {"id": "urn:ngsi-ld:Room:1", "type": "Room", "location": {"type": "GeoProperty", "value": {"type": {}}}}
    assert api.post("/entities", json=body).status_code == 400


@pytest.mark.parametrize(
    "query", ["offset=9223372036854775808", "offset=9007199254740992", "limit=9223372036854775808", "limit=-1"]
)
def test_integer_parameters_out_of_range_are_4xx(api: httpx.Client, query: str) -> None:
    for path in ("/entities?type=Room&", "/temporal/entities?type=Room&", "/subscriptions?", "/csourceRegistrations?"):
        response = api.get(path + query)
        assert 400 <= response.status_code < 500, (path, response.text)


def test_last_n_out_of_range_is_a_400(api: httpx.Client) -> None:
    assert api.post("/entities", json={"id": "urn:ngsi-ld:Room:1", "type": "Room", "t": 1}).status_code == 201
    for value in ("9223372036854775808", "99999999999999999999999"):
        response = api.get(f"/temporal/entities/urn:ngsi-ld:Room:1?lastN={value}")
        assert response.status_code == 400, response.text
    assert api.get("/temporal/entities/urn:ngsi-ld:Room:1?lastN=9007199254740991").status_code == 200


@pytest.mark.parametrize(
    ("notification", "reason"),
    [({"joinLevel": 2}, "joinLevel needs join"), ({"join": "inline", "joinLevel": 99}, "joinLevel must be between")],
)
def test_a_subscription_that_could_never_render_is_refused(
    api: httpx.Client, notification: dict[str, Any], reason: str
) -> None:
    body = {
        "type": "Subscription",
        "entities": [{"type": "Room"}],
        "notification": {"endpoint": {"uri": "http://example.org/notify"}, **notification},
    }
    response = api.post("/subscriptions", json=body)
    assert response.status_code == 400, response.text
    assert reason in response.json()["detail"]
    assert api.get("/subscriptions").json() == []


# -- the last-resort handler -----------------------------------------------------------------------


async def failing_app(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("x" * 10_000)


async def half_answer(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise RuntimeError("failed while streaming")


def test_last_resort_answers_problem_details_in_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cityos")
    response = TestClient(LastResort(failing_app)).get("/anything")
    assert response.status_code == 500
    problem = response.json()
    assert problem["type"] == "https://uri.etsi.org/ngsi-ld/errors/InternalError"
    request_id = problem["instance"].rsplit(":", 1)[1]
    records = [r for r in caplog.records if r.name == "cityos"]
    assert len(records) == 1
    line = records[0].getMessage()
    assert request_id in line and "RuntimeError" in line and "\n" not in line and len(line) < 600
    assert records[0].exc_info is None


def test_last_resort_traceback_is_at_debug_and_cut(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cityos")
    assert TestClient(LastResort(failing_app)).get("/anything").status_code == 500
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and r.name == "cityos"]
    assert len(debug) == 1 and "Traceback" in debug[0] and len(debug[0]) < MAX_LOGGED_TRACEBACK + 200


def test_last_resort_cannot_replace_an_answer_already_started() -> None:
    with pytest.raises(RuntimeError):
        TestClient(LastResort(half_answer)).get("/anything")


@sqlite_only
def test_a_500_keeps_the_keep_alive_connection_usable(db_url: str, tmp_path: Path) -> None:
    """A real server and one keep-alive client: a row the store cannot read (a damaged database
    file, here written by hand) makes a 500; the next request goes over the same connection and
    works, and the server wrote one line about it, with the request id the client got."""
    database = Path(db_url)
    server = LoggedServer(tmp_path / "server.log", "--log-level", "info", env={"CITYOS_DATABASE": str(database)})
    server.start()
    try:
        with httpx.Client(base_url=server.base + BASE, timeout=30) as api:
            assert api.post("/entities", json={"id": "urn:ngsi-ld:Room:1", "type": "Room"}).status_code == 201
            with sqlite3.connect(database) as db:
                db.execute("UPDATE entities SET doc = x'7b7b' WHERE id = 'urn:ngsi-ld:Room:1'")
            db.close()
            failed = api.get("/entities/urn:ngsi-ld:Room:1")
            assert failed.status_code == 500
            after = api.post("/entities", json={"id": "urn:ngsi-ld:Room:2", "type": "Room"})
            assert after.status_code == 201
            sockets = [r.extensions["network_stream"].get_extra_info("client_addr") for r in (failed, after)]
            assert sockets[0] == sockets[1], "the 500 closed the connection"
            assert failed.headers.get("connection") != "close"
            request_id = failed.json()["instance"].rsplit(":", 1)[1]
    finally:
        server.stop()
    log = server.log()
    lines = [line for line in log.splitlines() if request_id in line]
    assert len(lines) == 1 and "JSONDecodeError" in lines[0]
    assert "Traceback" not in log
