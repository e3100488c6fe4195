"""The /ngsi-ld/v1/jsonldContexts API (NGSI-LD 5.13, 6.29-6.30) through the in-process client."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.settings import Settings

BASE = "/ngsi-ld/v1/jsonldContexts"
ENTITIES = "/ngsi-ld/v1/entities"
ORIGIN = "http://127.0.0.1:1026"
ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.9.jsonld"
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
EX = "http://example.org/"
DEFAULT = "https://uri.etsi.org/ngsi-ld/default-context/"
VEHICLE = {"Vehicle": EX + "Vehicle", "speed": EX + "speed", "ex": EX}


def add(client: TestClient, context: Any, tenant: str | None = None) -> str:
    """Add a hosted context; returns its local id."""
    headers = {"NGSILD-Tenant": tenant} if tenant else {}
    response = client.post(BASE, json={"@context": context}, headers=headers)
    assert response.status_code == 201, response.text
    location = response.headers["location"]
    assert location.startswith(BASE + "/")
    return location[len(BASE) + 1 :]


def hosted_url(local_id: str) -> str:
    return f"{ORIGIN}{BASE}/{local_id}"


def link(url: str) -> dict[str, str]:
    return {"Link": f'<{url}>; rel="{CONTEXT_REL}"; type="application/ld+json"'}


def assert_problem(response: httpx.Response, status: int, type_name: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == ERRORS + type_name, body
    assert body["status"] == status
    assert response.headers["content-type"].startswith("application/json")


def parse_time(value: str) -> datetime:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value[:-1] + "+00:00")


# ---------------------------------------------------------------------------------------------
# Add
# ---------------------------------------------------------------------------------------------


class TestAdd:
    def test_add_returns_201_with_a_relative_location_and_no_body(self, client: TestClient) -> None:
        response = client.post(BASE, json={"@context": VEHICLE})
        assert response.status_code == 201
        location = response.headers["location"]
        assert location.startswith(BASE + "/")
        local_id = location.rsplit("/", 1)[1]
        assert local_id
        assert "://" not in location
        assert response.content == b""
        assert client.get(location).status_code == 200

    def test_each_add_gets_a_new_id(self, client: TestClient) -> None:
        assert add(client, VEHICLE) != add(client, VEHICLE)

    def test_add_as_json_ld(self, client: TestClient) -> None:
        body = b'{"@context": {"speed": "http://example.org/speed"}}'
        response = client.post(BASE, content=body, headers={"Content-Type": "application/ld+json"})
        assert response.status_code == 201, response.text

    @pytest.mark.parametrize(
        "context",
        [
            VEHICLE,
            [VEHICLE, {"fuel": EX + "fuel"}],
            CORE,
            [CORE, VEHICLE],
        ],
    )
    def test_valid_context_values(self, client: TestClient, context: Any) -> None:
        local_id = add(client, context)
        assert client.get(f"{BASE}/{local_id}").json() == {"@context": context}

    def test_unsupported_content_type(self, client: TestClient) -> None:
        response = client.post(BASE, content=b'{"@context": {}}', headers={"Content-Type": "text/plain"})
        assert_problem(response, 415, "UnsupportedMediaType")

    @pytest.mark.parametrize(
        "payload",
        [
            {"speed": EX + "speed"},
            {},
            [{"@context": VEHICLE}],
            "just a string",
        ],
    )
    def test_payload_without_context_member(self, client: TestClient, payload: Any) -> None:
        assert_problem(client.post(BASE, json=payload), 400, "InvalidRequest")

    @pytest.mark.parametrize("body", [b'{"@context": ', b"{bad json}", b"not json at all"])
    def test_malformed_json(self, client: TestClient, body: bytes) -> None:
        response = client.post(BASE, content=body, headers={"Content-Type": "application/json"})
        assert_problem(response, 400, "InvalidRequest")

    def test_empty_body(self, client: TestClient) -> None:
        response = client.post(BASE, content=b"", headers={"Content-Type": "application/json"})
        assert_problem(response, 400, "InvalidRequest")

    @pytest.mark.parametrize(
        "context",
        [
            42,
            True,
            None,
            [42],
            [VEHICLE, 3.5],
            {"speed": 42},
            {"speed": {"@id": 7}},
            {"Vehicle": {"@id": EX + "Vehicle", "@context": {"speed": EX + "vehicleSpeed"}}},
        ],
    )
    def test_bad_context_values(self, client: TestClient, context: Any) -> None:
        assert_problem(client.post(BASE, json={"@context": context}), 400, "BadRequestData")

    def test_rejected_payloads_store_nothing(self, client: TestClient) -> None:
        client.post(BASE, json={"@context": 42})
        client.post(BASE, json={"nothing": 1})
        assert client.get(BASE, params={"kind": "Hosted"}).json() == []

    def test_unknown_query_parameter(self, client: TestClient) -> None:
        response = client.post(BASE, params={"foo": "bar"}, json={"@context": VEHICLE})
        assert response.status_code == 400
        assert client.get(BASE, params={"kind": "Hosted"}).json() == []


# ---------------------------------------------------------------------------------------------
# Serve
# ---------------------------------------------------------------------------------------------


class TestServe:
    def test_serves_the_exact_document(self, client: TestClient) -> None:
        context = [{"b": EX + "b", "a": {"@id": EX + "a", "@type": "@vocab"}}, CORE]
        local_id = add(client, context)
        response = client.get(f"{BASE}/{local_id}")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"@context": context}

    def test_serve_by_url(self, client: TestClient) -> None:
        local_id = add(client, VEHICLE)
        response = client.get(f"{BASE}/{quote(hosted_url(local_id), safe='')}")
        assert response.status_code == 200, response.text
        assert response.json() == {"@context": VEHICLE}

    def test_details(self, client: TestClient) -> None:
        before = datetime.now(UTC) - timedelta(seconds=5)
        local_id = add(client, VEHICLE)
        response = client.get(f"{BASE}/{local_id}", params={"details": "true"})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        details = response.json()
        assert details["URL"] == hosted_url(local_id)
        assert details["localId"] == local_id
        assert details["kind"] == "Hosted"
        created = parse_time(details["createdAt"])
        assert before <= created <= datetime.now(UTC) + timedelta(seconds=5)
        assert details["numberOfHits"] == 0
        assert set(details) <= {"URL", "localId", "kind", "createdAt", "lastUsage", "numberOfHits"}

    def test_details_false_serves_the_document(self, client: TestClient) -> None:
        local_id = add(client, VEHICLE)
        assert client.get(f"{BASE}/{local_id}", params={"details": "false"}).json() == {"@context": VEHICLE}

    def test_invalid_details_value(self, client: TestClient) -> None:
        local_id = add(client, VEHICLE)
        assert_problem(client.get(f"{BASE}/{local_id}", params={"details": "yes"}), 400, "BadRequestData")

    def test_unknown_context_is_404(self, client: TestClient) -> None:
        assert_problem(client.get(f"{BASE}/0123456789abcdef"), 404, "ResourceNotFound")
        unknown_url = quote("http://example.org/never-seen.jsonld", safe="")
        assert_problem(client.get(f"{BASE}/{unknown_url}"), 404, "ResourceNotFound")

    def test_core_context_is_served(self, client: TestClient) -> None:
        response = client.get(f"{BASE}/{quote(CORE, safe='')}")
        assert response.status_code == 200, response.text
        document = response.json()
        assert document["@context"]["location"] == "ngsi-ld:location"


# ---------------------------------------------------------------------------------------------
# List
# ---------------------------------------------------------------------------------------------


class TestList:
    def test_list_urls(self, client: TestClient) -> None:
        first, second = add(client, VEHICLE), add(client, {"fuel": EX + "fuel"})
        response = client.get(BASE)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        urls = response.json()
        assert all(isinstance(url, str) for url in urls)
        assert {hosted_url(first), hosted_url(second)} <= set(urls)
        assert client.get(BASE, params={"details": "false"}).json() == urls

    def test_list_details(self, client: TestClient) -> None:
        local_id = add(client, VEHICLE)
        entries = client.get(BASE, params={"details": "true"}).json()
        mine = [entry for entry in entries if entry["localId"] == local_id]
        assert len(mine) == 1
        assert mine[0]["URL"] == hosted_url(local_id)
        assert mine[0]["kind"] == "Hosted"
        parse_time(mine[0]["createdAt"])
        assert isinstance(mine[0]["numberOfHits"], int)

    def test_kind_filter(self, client: TestClient) -> None:
        local_id = add(client, VEHICLE)
        assert client.get(BASE, params={"kind": "Hosted"}).json() == [hosted_url(local_id)]
        assert hosted_url(local_id) not in client.get(BASE, params={"kind": "Cached"}).json()
        assert hosted_url(local_id) not in client.get(BASE, params={"kind": "ImplicitlyCreated"}).json()
        details = client.get(BASE, params={"kind": "Hosted", "details": "true"}).json()
        assert [entry["localId"] for entry in details] == [local_id]
        assert all(
            entry["kind"] == "Cached" for entry in client.get(BASE, params={"kind": "Cached", "details": "true"}).json()
        )

    @pytest.mark.parametrize(
        "params",
        [{"kind": "Bogus"}, {"kind": "hosted"}, {"details": "yes"}, {"details": "1"}],
    )
    def test_invalid_parameters(self, client: TestClient, params: dict[str, str]) -> None:
        assert_problem(client.get(BASE, params=params), 400, "BadRequestData")

    def test_unknown_query_parameter(self, client: TestClient) -> None:
        assert client.get(BASE, params={"foo": "bar"}).status_code == 400


# ---------------------------------------------------------------------------------------------
# Delete
# ---------------------------------------------------------------------------------------------


class TestDelete:
    def test_delete(self, client: TestClient) -> None:
        local_id = add(client, VEHICLE)
        response = client.delete(f"{BASE}/{local_id}")
        assert response.status_code == 204
        assert response.content == b""
        assert_problem(client.get(f"{BASE}/{local_id}"), 404, "ResourceNotFound")
        assert hosted_url(local_id) not in client.get(BASE).json()
        assert_problem(client.delete(f"{BASE}/{local_id}"), 404, "ResourceNotFound")

    def test_delete_by_url(self, client: TestClient) -> None:
        local_id = add(client, VEHICLE)
        assert client.delete(f"{BASE}/{quote(hosted_url(local_id), safe='')}").status_code == 204
        assert client.get(f"{BASE}/{local_id}").status_code == 404

    def test_delete_leaves_other_contexts(self, client: TestClient) -> None:
        keep, drop = add(client, VEHICLE), add(client, {"fuel": EX + "fuel"})
        assert client.delete(f"{BASE}/{drop}").status_code == 204
        assert client.get(f"{BASE}/{keep}").json() == {"@context": VEHICLE}

    def test_delete_unknown(self, client: TestClient) -> None:
        assert_problem(client.delete(f"{BASE}/0123456789abcdef"), 404, "ResourceNotFound")

    def test_core_context_cannot_be_deleted(self, client: TestClient) -> None:
        response = client.delete(f"{BASE}/{quote(CORE, safe='')}")
        assert_problem(response, 400, "BadRequestData")
        assert client.get(f"{BASE}/{quote(CORE, safe='')}").status_code == 200

    def test_reload_of_a_hosted_context_is_refused(self, client: TestClient) -> None:
        local_id = add(client, VEHICLE)
        assert_problem(client.delete(f"{BASE}/{local_id}", params={"reload": "true"}), 400, "BadRequestData")
        assert client.get(f"{BASE}/{local_id}").json() == {"@context": VEHICLE}

    def test_invalid_reload_value(self, client: TestClient) -> None:
        local_id = add(client, VEHICLE)
        assert_problem(client.delete(f"{BASE}/{local_id}", params={"reload": "maybe"}), 400, "BadRequestData")
        assert client.get(f"{BASE}/{local_id}").status_code == 200

    def test_deleted_context_no_longer_expands(self, client: TestClient) -> None:
        local_id = add(client, VEHICLE)
        assert client.delete(f"{BASE}/{local_id}").status_code == 204
        entity = {"id": "urn:ngsi-ld:Vehicle:gone", "type": "Vehicle"}
        response = client.post(ENTITIES, json=entity, headers=link(hosted_url(local_id)))
        assert_problem(response, 504, "LdContextNotAvailable")
        assert client.get(f"{ENTITIES}/urn:ngsi-ld:Vehicle:gone").status_code == 404


# ---------------------------------------------------------------------------------------------
# Tenants and persistence
# ---------------------------------------------------------------------------------------------


class TestTenants:
    def test_hosted_contexts_are_per_tenant(self, client: TestClient) -> None:
        city1 = {"NGSILD-Tenant": "city1"}
        city2 = {"NGSILD-Tenant": "city2"}
        local_id = add(client, VEHICLE, tenant="city1")
        shared = add(client, {"fuel": EX + "fuel"})

        served = client.get(f"{BASE}/{local_id}", headers=city1)
        assert served.status_code == 200
        assert served.json() == {"@context": VEHICLE}
        assert served.headers["ngsild-tenant"] == "city1"
        assert_problem(client.get(f"{BASE}/{local_id}"), 404, "ResourceNotFound")
        assert_problem(client.get(f"{BASE}/{local_id}", headers=city2), 404, "ResourceNotFound")
        assert_problem(client.get(f"{BASE}/{shared}", headers=city1), 404, "ResourceNotFound")

        assert client.get(BASE, params={"kind": "Hosted"}, headers=city1).json() == [hosted_url(local_id)]
        assert client.get(BASE, params={"kind": "Hosted"}).json() == [hosted_url(shared)]
        assert client.get(BASE, params={"kind": "Hosted"}, headers=city2).json() == []

        assert_problem(client.delete(f"{BASE}/{local_id}", headers=city2), 404, "ResourceNotFound")
        assert_problem(client.delete(f"{BASE}/{local_id}"), 404, "ResourceNotFound")
        assert client.get(f"{BASE}/{local_id}", headers=city1).status_code == 200
        assert client.delete(f"{BASE}/{local_id}", headers=city1).status_code == 204
        assert client.get(f"{BASE}/{shared}").status_code == 200

    def test_invalid_tenant_name(self, client: TestClient) -> None:
        response = client.post(BASE, json={"@context": VEHICLE}, headers={"NGSILD-Tenant": "bad tenant/name"})
        assert response.status_code == 400


class TestPersistence:
    def test_hosted_contexts_survive_a_restart(self, settings: Settings) -> None:
        with TestClient(create_app(settings), base_url=ORIGIN) as first:
            kept = add(first, VEHICLE)
            tenant_kept = add(first, {"fuel": EX + "fuel"}, tenant="city1")
            dropped = add(first, {"gone": EX + "gone"})
            assert first.delete(f"{BASE}/{dropped}").status_code == 204
            details = first.get(f"{BASE}/{kept}", params={"details": "true"}).json()

        with TestClient(create_app(settings), base_url=ORIGIN) as second:
            assert second.get(f"{BASE}/{kept}").json() == {"@context": VEHICLE}
            again = second.get(f"{BASE}/{kept}", params={"details": "true"}).json()
            assert again["URL"] == hosted_url(kept)
            assert again["localId"] == kept
            assert again["kind"] == "Hosted"
            assert again["createdAt"] == details["createdAt"]
            assert second.get(BASE, params={"kind": "Hosted"}).json() == [hosted_url(kept)]
            city1 = {"NGSILD-Tenant": "city1"}
            assert second.get(f"{BASE}/{tenant_kept}", headers=city1).json() == {"@context": {"fuel": EX + "fuel"}}
            assert second.get(f"{BASE}/{tenant_kept}").status_code == 404
            assert second.get(f"{BASE}/{dropped}").status_code == 404
            # the restored context is usable in a Link header
            entity = {"id": "urn:ngsi-ld:Vehicle:R1", "type": "Vehicle", "speed": {"type": "Property", "value": 1}}
            created = second.post(ENTITIES, json=entity, headers=link(hosted_url(kept)))
            assert created.status_code == 201, created.text
            assert second.get(f"{ENTITIES}/urn:ngsi-ld:Vehicle:R1").json()["type"] == EX + "Vehicle"


# ---------------------------------------------------------------------------------------------
# Using a hosted context in requests
# ---------------------------------------------------------------------------------------------


class TestHostedContextInUse:
    ENTITY = {
        "id": "urn:ngsi-ld:Vehicle:H1",
        "type": "Vehicle",
        "speed": {"type": "Property", "value": 80},
        "fuel": {"type": "Property", "value": 0.5},
    }

    def test_link_to_a_hosted_context_expands_terms(self, client: TestClient) -> None:
        local_id = add(client, VEHICLE)
        url = hosted_url(local_id)
        created = client.post(ENTITIES, json=self.ENTITY, headers=link(url))
        assert created.status_code == 201, created.text

        expanded = client.get(f"{ENTITIES}/urn:ngsi-ld:Vehicle:H1")
        assert expanded.status_code == 200
        body = expanded.json()
        assert body["type"] == EX + "Vehicle"
        assert body[EX + "speed"]["value"] == 80
        assert "speed" not in body
        assert body["fuel"]["value"] == 0.5  # not in the hosted context: default vocabulary

        compacted = client.get(f"{ENTITIES}/urn:ngsi-ld:Vehicle:H1", headers=link(url))
        assert compacted.status_code == 200
        body = compacted.json()
        assert body["type"] == "Vehicle"
        assert body["speed"]["value"] == 80
        assert body["fuel"]["value"] == 0.5
        assert EX + "speed" not in body
        assert url in compacted.headers["link"]

    def test_query_by_type_uses_the_link(self, client: TestClient) -> None:
        local_id = add(client, VEHICLE)
        url = hosted_url(local_id)
        assert client.post(ENTITIES, json=self.ENTITY, headers=link(url)).status_code == 201
        found = client.get(ENTITIES, params={"type": "Vehicle"}, headers=link(url))
        assert found.status_code == 200
        assert [e["id"] for e in found.json()] == ["urn:ngsi-ld:Vehicle:H1"]
        assert client.get(ENTITIES, params={"type": "Vehicle"}).json() == []
        by_iri = client.get(ENTITIES, params={"type": EX + "Vehicle"}).json()
        assert [e["id"] for e in by_iri] == ["urn:ngsi-ld:Vehicle:H1"]

    def test_inline_reference_to_a_hosted_context(self, client: TestClient) -> None:
        local_id = add(client, VEHICLE)
        payload = {**self.ENTITY, "@context": [hosted_url(local_id)]}
        created = client.post(ENTITIES, json=payload, headers={"Content-Type": "application/ld+json"})
        assert created.status_code == 201, created.text
        assert client.get(f"{ENTITIES}/urn:ngsi-ld:Vehicle:H1").json()["type"] == EX + "Vehicle"

    def test_hosted_context_referencing_another_hosted_context(self, client: TestClient) -> None:
        base = add(client, {"ex": EX})
        derived = add(client, [hosted_url(base), {"Vehicle": "ex:Vehicle", "speed": "ex:speed"}])
        created = client.post(ENTITIES, json=self.ENTITY, headers=link(hosted_url(derived)))
        assert created.status_code == 201, created.text
        body = client.get(f"{ENTITIES}/urn:ngsi-ld:Vehicle:H1").json()
        assert body["type"] == EX + "Vehicle"
        assert EX + "speed" in body

    def test_use_counts_as_a_hit(self, client: TestClient) -> None:
        local_id = add(client, VEHICLE)
        before = client.get(f"{BASE}/{local_id}", params={"details": "true"}).json()
        assert client.post(ENTITIES, json=self.ENTITY, headers=link(hosted_url(local_id))).status_code == 201
        after = client.get(f"{BASE}/{local_id}", params={"details": "true"}).json()
        assert after["numberOfHits"] > before["numberOfHits"]
        assert "lastUsage" in after
        assert parse_time(after["lastUsage"]) >= parse_time(after["createdAt"])

    def test_unknown_hosted_context_in_link(self, client: TestClient) -> None:
        response = client.post(ENTITIES, json=self.ENTITY, headers=link(hosted_url("0" * 32)))
        assert_problem(response, 504, "LdContextNotAvailable")

    def test_other_tenants_hosted_context_is_not_used(self, client: TestClient) -> None:
        local_id = add(client, VEHICLE, tenant="city1")
        response = client.post(ENTITIES, json=self.ENTITY, headers=link(hosted_url(local_id)))
        assert_problem(response, 504, "LdContextNotAvailable")
        tenant_headers = {**link(hosted_url(local_id)), "NGSILD-Tenant": "city1"}
        assert client.post(ENTITIES, json=self.ENTITY, headers=tenant_headers).status_code == 201
        got = client.get(f"{ENTITIES}/urn:ngsi-ld:Vehicle:H1", headers={"NGSILD-Tenant": "city1"}).json()
        assert got["type"] == EX + "Vehicle"


# ---------------------------------------------------------------------------------------------
# Cached (remote) contexts as the API reports them
# ---------------------------------------------------------------------------------------------


class RemoteContexts(ThreadingHTTPServer):
    """Serves JSON documents on 127.0.0.1 and counts the requests per path."""

    daemon_threads = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RemoteHandler)
        self.documents: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class RemoteHandler(BaseHTTPRequestHandler):
    server: RemoteContexts
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.hits[self.path] = self.server.hits.get(self.path, 0) + 1
        body = self.server.documents.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/ld+json")
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def remote() -> Iterator[RemoteContexts]:
    server = RemoteContexts()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def open_client(db_url: str) -> Iterator[TestClient]:
    """A client whose broker may fetch @contexts from loopback (the test's own server)."""
    settings = Settings(database=db_url, allow_private_networks=True, context_fetch_timeout=2.0)
    with TestClient(create_app(settings), base_url=ORIGIN) as test_client:
        yield test_client


class TestCachedContexts:
    def test_remote_context_is_cached_listed_reloaded_and_deleted(
        self, open_client: TestClient, remote: RemoteContexts
    ) -> None:
        remote.documents["/vehicle.jsonld"] = b'{"@context": {"Vehicle": "http://example.org/Vehicle"}}'
        url = remote.url("/vehicle.jsonld")
        entity = {"id": "urn:ngsi-ld:Vehicle:C1", "type": "Vehicle"}
        assert open_client.post(ENTITIES, json=entity, headers=link(url)).status_code == 201
        assert open_client.get(f"{ENTITIES}/urn:ngsi-ld:Vehicle:C1").json()["type"] == EX + "Vehicle"
        assert remote.hits["/vehicle.jsonld"] == 1

        assert open_client.get(BASE, params={"kind": "Cached"}).json() == [url]
        assert open_client.get(BASE, params={"kind": "Hosted"}).json() == []
        encoded = quote(url, safe="")
        assert open_client.get(f"{BASE}/{encoded}").json() == {"@context": {"Vehicle": EX + "Vehicle"}}
        details = open_client.get(f"{BASE}/{encoded}", params={"details": "true"}).json()
        assert details["URL"] == url
        assert details["kind"] == "Cached"
        assert details["numberOfHits"] >= 1

        remote.documents["/vehicle.jsonld"] = b'{"@context": {"Vehicle": "http://other.example/Vehicle"}}'
        assert open_client.delete(f"{BASE}/{encoded}", params={"reload": "true"}).status_code == 204
        assert remote.hits["/vehicle.jsonld"] == 2
        assert open_client.get(f"{BASE}/{encoded}").json() == {"@context": {"Vehicle": "http://other.example/Vehicle"}}
        second = {"id": "urn:ngsi-ld:Vehicle:C2", "type": "Vehicle"}
        assert open_client.post(ENTITIES, json=second, headers=link(url)).status_code == 201
        got = open_client.get(f"{ENTITIES}/urn:ngsi-ld:Vehicle:C2").json()
        assert got["type"] == "http://other.example/Vehicle"

        assert open_client.delete(f"{BASE}/{encoded}").status_code == 204
        assert open_client.get(BASE, params={"kind": "Cached"}).json() == []
        assert open_client.get(f"{BASE}/{encoded}").status_code == 404

    def test_reload_failure_keeps_the_cached_copy(self, open_client: TestClient, remote: RemoteContexts) -> None:
        remote.documents["/vehicle.jsonld"] = b'{"@context": {"Vehicle": "http://example.org/Vehicle"}}'
        url = remote.url("/vehicle.jsonld")
        entity = {"id": "urn:ngsi-ld:Vehicle:C3", "type": "Vehicle"}
        assert open_client.post(ENTITIES, json=entity, headers=link(url)).status_code == 201
        del remote.documents["/vehicle.jsonld"]
        encoded = quote(url, safe="")
        assert_problem(open_client.delete(f"{BASE}/{encoded}", params={"reload": "true"}), 504, "LdContextNotAvailable")
        assert open_client.get(f"{BASE}/{encoded}").json() == {"@context": {"Vehicle": EX + "Vehicle"}}

    def test_unavailable_remote_context_in_link(self, open_client: TestClient, remote: RemoteContexts) -> None:
        entity = {"id": "urn:ngsi-ld:Vehicle:C4", "type": "Vehicle"}
        response = open_client.post(ENTITIES, json=entity, headers=link(remote.url("/missing.jsonld")))
        assert_problem(response, 504, "LdContextNotAvailable")
        assert open_client.get(BASE, params={"kind": "Cached"}).json() == []
