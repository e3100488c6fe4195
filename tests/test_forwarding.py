"""GET /entities/{id} of an entity held by a registered context source: forwarded, and the
requester's tenant does not flow through a registration that names none (spec 4.14)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.settings import Settings
from notify_helpers import serving

REMOTE_ID = "urn:ngsi-ld:Vehicle:remote-1"


class Source(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        Source.seen.append({key.lower(): value for key, value in self.headers.items()})
        if self.path == f"/ngsi-ld/v1/entities/{REMOTE_ID}":
            body = json.dumps({"id": REMOTE_ID, "type": "Vehicle", "speed": {"type": "Property", "value": 42}})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def source() -> Iterator[str]:
    Source.seen = []
    with serving(Source) as url:
        yield url


def registration(endpoint: str, **extra: object) -> dict[str, object]:
    return {
        "id": "urn:ngsi-ld:ContextSourceRegistration:fwd",
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"id": REMOTE_ID, "type": "Vehicle"}]}],
        "endpoint": endpoint,
        "operations": ["redirectionOps"],
        **extra,
    }


def test_retrieve_is_forwarded_without_the_requesters_tenant(db_url: str, source: str) -> None:
    settings = Settings(database=db_url, allow_private_networks=True)
    with TestClient(create_app(settings)) as client:
        tenant = {"NGSILD-Tenant": "city-a"}
        created = client.post("/ngsi-ld/v1/csourceRegistrations", json=registration(source), headers=tenant)
        assert created.status_code == 201, created.text
        got = client.get(f"/ngsi-ld/v1/entities/{REMOTE_ID}", headers=tenant)
        assert got.status_code == 200, got.text
        assert got.json()["speed"]["value"] == 42
        assert Source.seen and "ngsild-tenant" not in Source.seen[-1]
        # another tenant has no registration: nothing is forwarded
        assert client.get(f"/ngsi-ld/v1/entities/{REMOTE_ID}").status_code == 404


def test_a_registration_naming_a_tenant_forwards_it(db_url: str, source: str) -> None:
    settings = Settings(database=db_url, allow_private_networks=True)
    with TestClient(create_app(settings)) as client:
        created = client.post("/ngsi-ld/v1/csourceRegistrations", json=registration(source, tenant="peer"))
        assert created.status_code == 201, created.text
        assert client.get(f"/ngsi-ld/v1/entities/{REMOTE_ID}").status_code == 200
        assert Source.seen[-1]["ngsild-tenant"] == "peer"


def test_loopback_sources_are_refused_by_default(db_url: str, source: str) -> None:
    with TestClient(create_app(Settings(database=db_url))) as client:
        assert client.post("/ngsi-ld/v1/csourceRegistrations", json=registration(source)).status_code == 201
        assert client.get(f"/ngsi-ld/v1/entities/{REMOTE_ID}").status_code == 404
        assert Source.seen == []
