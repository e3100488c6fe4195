"""The /ngsi-ld/v1/subscriptions API (spec 5.8, 6.10-6.11): create, retrieve, query, update and
delete, validation, and compaction with the reading request's @context."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.settings import Settings
from notify_helpers import free_port

BASE = "/ngsi-ld/v1/subscriptions"
ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.9.jsonld"
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
EX = "https://example.org/city#"
TERMS = {"Building": EX + "Building", "Vehicle": EX + "Vehicle", "name": EX + "name", "height": EX + "height"}
ENDPOINT = "http://127.0.0.1:9/notify"  # never contacted: these subscriptions watch nothing that changes


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(database=db_url, allow_private_networks=True)


@pytest.fixture
def context_url(client: TestClient) -> str:
    """A hosted @context (served by the broker itself, so no network is needed)."""
    response = client.post("/ngsi-ld/v1/jsonldContexts", json={"@context": TERMS})
    assert response.status_code == 201, response.text
    return "http://127.0.0.1:1026" + response.headers["location"]


def link(url: str) -> dict[str, str]:
    return {"Link": f'<{url}>; rel="{CONTEXT_REL}"; type="application/ld+json"'}


def subscription(**members: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "Subscription",
        "entities": [{"type": "Building"}],
        "notification": {"endpoint": {"uri": ENDPOINT}},
    }
    body.update(members)
    return body


def create(client: TestClient, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
    response = client.post(BASE, json=body, headers=headers or {})
    assert response.status_code == 201, response.text
    return str(response.headers["location"].rsplit("/", 1)[1])


def assert_problem(response: httpx.Response, status: int, type_name: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == ERRORS + type_name, body
    assert body["title"]


class TestCreate:
    def test_created_with_its_id_in_location(self, client: TestClient) -> None:
        response = client.post(BASE + "/", json=subscription(id="urn:ngsi-ld:Subscription:s1"))
        assert response.status_code == 201
        assert response.headers["location"] == BASE + "/urn:ngsi-ld:Subscription:s1"

    def test_an_id_is_generated_when_missing(self, client: TestClient) -> None:
        sub_id = create(client, subscription())
        assert sub_id.startswith("urn:ngsi-ld:Subscription:")
        assert client.get(f"{BASE}/{sub_id}").status_code == 200

    def test_duplicate_id_is_409(self, client: TestClient) -> None:
        create(client, subscription(id="urn:ngsi-ld:Subscription:dup"))
        assert_problem(client.post(BASE, json=subscription(id="urn:ngsi-ld:Subscription:dup")), 409, "AlreadyExists")

    def test_invalid_json_is_invalid_request(self, client: TestClient) -> None:
        response = client.post(BASE, content=b'{"id": ,,}', headers={"Content-Type": "application/json"})
        assert_problem(response, 400, "InvalidRequest")

    @pytest.mark.parametrize(
        "members",
        [
            {"id": "invalidId"},
            {"id": ""},
            {"type": "Registration"},
            {"timeInterval": 10, "throttling": 30},
            {"throttling": -30},
            {"timeInterval": 0},
            {"jsonldContext": "unknownContext"},
            {"expiresAt": "2000-01-01T00:00:00Z"},
            {"notificationTrigger": ["entityChanged"]},
            {"notificationTrigger": []},
            {"csf": "(("},
            {"q": "name=="},
            {"isActive": "yes"},
            {"entities": []},
            {"entities": [{"id": "urn:ngsi-ld:Building:1"}]},
            {"entities": None, "watchedAttributes": None},
            {"notification": {"endpoint": {"uri": "ftp://example.org/x"}}},
            {"notification": {"format": "keyValues"}},
            {"notification": {"endpoint": {"uri": ENDPOINT}, "format": "xml"}},
        ],
    )
    def test_invalid_members_are_bad_request_data(self, client: TestClient, members: dict[str, Any]) -> None:
        body = {k: v for k, v in subscription(**members).items() if v is not None}
        assert_problem(client.post(BASE, json=body), 400, "BadRequestData")

    @pytest.mark.parametrize(
        "notification",
        [
            {"pick": ["id"], "omit": ["id"]},
            {"pick": ["id"], "attributes": ["name"]},
            {"omit": ["id"], "attributes": ["name"]},
            {"attributes": []},
            {"pick": []},
            {"omit": []},
            {"format": "keyValues", "showChanges": True},
            {"format": "simplified", "showChanges": True},
            {"endpoint": {"uri": ENDPOINT, "receiverInfo": [{"key": "K", "value": 42}]}},
            {"endpoint": {"uri": ENDPOINT, "notifierInfo": [{"key": "Prefer", "value": {"a": 1}}]}},
            {"endpoint": {"uri": ENDPOINT, "receiverInfo": [{"key": "K"}]}},
            {"endpoint": {"uri": ENDPOINT, "receiverInfo": [{"key": 5, "value": "v"}]}},
            {"endpoint": {"uri": "mqtt://127.0.0.1/t", "notifierInfo": [{"key": "MQTT-QoS", "value": "3"}]}},
            {"endpoint": {"uri": ENDPOINT, "accept": "text/plain"}},
        ],
    )
    def test_invalid_notification_params(self, client: TestClient, notification: dict[str, Any]) -> None:
        body = subscription()
        body["notification"] = {"endpoint": {"uri": ENDPOINT}, **notification}
        assert_problem(client.post(BASE, json=body), 400, "BadRequestData")

    def test_valid_notification_params_are_accepted(self, client: TestClient) -> None:
        body = subscription(
            notificationTrigger=[
                "entityCreated",
                "entityUpdated",
                "entityDeleted",
                "attributeCreated",
                "attributeUpdated",
                "attributeDeleted",
            ]
        )
        body["notification"] = {
            "format": "normalized",
            "showChanges": True,
            "endpoint": {
                "uri": ENDPOINT,
                "receiverInfo": [{"key": "Authorization", "value": "Bearer abc"}],
                "notifierInfo": [{"key": "Prefer", "value": "body=json"}],
            },
        }
        create(client, body)

    def test_read_only_members_are_dropped(self, client: TestClient) -> None:
        body = subscription(status="expired", createdAt="x")
        body["notification"]["timesSent"] = 42
        sub_id = create(client, body)
        got = client.get(f"{BASE}/{sub_id}").json()
        assert got["status"] == "active"
        assert "createdAt" not in got
        assert "timesSent" not in got["notification"]

    def test_unknown_members_are_ignored_and_named(self, client: TestClient) -> None:
        """Members 5.2.12 does not define are not stored (a retrieved Subscription is that data
        type, ETSI 5811_02_04) but never dropped silently (issue 12): a 299 Warning names them."""
        body = subscription(__context="http://localhost:1111/hijacked.jsonld", myTag={"team": "roads"})
        body["notification"]["myHint"] = "x"
        body["notification"]["endpoint"]["myHeader"] = 1
        created = client.post(BASE, json=body)
        assert created.status_code == 201, created.text
        warning = created.headers["warning"]
        assert warning.startswith('299 cityos "')
        for name in ("__context", "myTag", "notification.myHint", "notification.endpoint.myHeader"):
            assert name in warning
        sub_id = created.headers["location"].rsplit("/", 1)[-1]
        got = client.get(f"{BASE}/{sub_id}")
        assert "hijacked" not in got.text and "myTag" not in got.text and "myHint" not in got.text
        patched = client.patch(f"{BASE}/{sub_id}", json={"other": [1], "description": "d"})
        assert patched.status_code == 204, patched.text
        assert "other" in patched.headers["warning"]
        assert "other" not in client.get(f"{BASE}/{sub_id}").json()

    def test_no_warning_for_a_subscription_of_known_members(self, client: TestClient) -> None:
        body = subscription(status="active", subscriptionName="n")  # a read-only member is ignored quietly
        created = client.post(BASE, json=body)
        assert created.status_code == 201
        assert "warning" not in created.headers

    def test_name_is_read_as_subscription_name(self, client: TestClient) -> None:
        """`name` is the older spelling that clients written against Orion-LD still send."""
        sub_id = create(client, subscription(name="roads"))
        doc = client.get(f"{BASE}/{sub_id}").json()
        assert doc["subscriptionName"] == "roads" and "name" not in doc
        assert client.patch(f"{BASE}/{sub_id}", json={"name": "roads-2"}).status_code == 204
        assert client.get(f"{BASE}/{sub_id}").json()["subscriptionName"] == "roads-2"
        both = client.post(BASE, json=subscription(name="a", subscriptionName="b"))
        assert_problem(both, 400, "BadRequestData")

    def test_unknown_query_parameters_are_invalid_request(self, client: TestClient) -> None:
        response = client.post(BASE + "?invalidParams=invalidValue", json=subscription())
        assert_problem(response, 400, "InvalidRequest")
        assert_problem(client.get(BASE + "?invalidParams=invalidValue"), 400, "InvalidRequest")
        assert client.get(BASE).json() == []

    def test_an_unreachable_jsonld_context_is_504(self, client: TestClient) -> None:
        url = f"http://127.0.0.1:{free_port()}/missing.jsonld"
        assert_problem(client.post(BASE, json=subscription(jsonldContext=url)), 504, "LdContextNotAvailable")

    def test_private_endpoints_are_refused_unless_allowed(self, db_url: str) -> None:
        with TestClient(create_app(Settings(database=db_url))) as strict:
            for uri in ("http://127.0.0.1:8080/n", "http://localhost/n", "mqtt://10.0.0.1/topic"):
                body = subscription()
                body["notification"]["endpoint"]["uri"] = uri
                refused = strict.post(BASE, json=body)
                assert_problem(refused, 400, "BadRequestData")
                assert "--allow-private-networks" in refused.json()["detail"]  # the way out is named
            body = subscription()
            body["notification"]["endpoint"]["uri"] = "https://receiver.example.org/n"
            create(strict, body)


class TestRetrieve:
    def test_echoes_what_was_sent_plus_status_and_default_triggers(self, client: TestClient, context_url: str) -> None:
        body = subscription(
            id="urn:ngsi-ld:Subscription:echo",
            watchedAttributes=["name"],
            q="height>10",
            throttling=5,
            datasetId=["urn:ngsi-ld:Dataset:french-name"],
        )
        body["notification"] = {"format": "keyValues", "attributes": ["name"], "endpoint": {"uri": ENDPOINT}}
        create(client, body, link(context_url))
        got = client.get(f"{BASE}/urn:ngsi-ld:Subscription:echo", headers=link(context_url))
        assert got.status_code == 200
        assert got.headers["content-type"] == "application/json"
        assert "@context" not in got.json()
        expected = {**body, "status": "active", "notificationTrigger": ["attributeCreated", "attributeUpdated"]}
        assert got.json() == expected

    def test_compaction_uses_the_reading_request_context(self, client: TestClient, context_url: str) -> None:
        sub_id = create(client, subscription(watchedAttributes=["name"]), link(context_url))
        expanded = client.get(f"{BASE}/{sub_id}").json()
        assert expanded["entities"] == [{"type": EX + "Building"}]
        assert expanded["watchedAttributes"] == [EX + "name"]
        as_ld = client.get(f"{BASE}/{sub_id}", headers={**link(context_url), "Accept": "application/ld+json"})
        assert as_ld.json()["@context"] == context_url
        assert as_ld.json()["entities"] == [{"type": "Building"}]

    def test_an_inline_context_and_a_type_expression(self, client: TestClient) -> None:
        body = subscription(entities=[{"type": "(Building|Vehicle)"}], **{"@context": TERMS})
        response = client.post(BASE, json=body, headers={"Content-Type": "application/ld+json"})
        assert response.status_code == 201, response.text
        got = client.get(response.headers["location"]).json()
        assert got["entities"] == [{"type": f"({EX}Building|{EX}Vehicle)"}]

    def test_a_context_that_is_not_one_url_is_hosted_implicitly(self, client: TestClient, context_url: str) -> None:
        body = subscription(**{"@context": [context_url, {"extra": EX + "extra"}]})
        response = client.post(BASE, json=body, headers={"Content-Type": "application/ld+json"})
        assert response.status_code == 201, response.text
        implicit = client.get(response.headers["location"]).json()["jsonldContext"]
        local_id = implicit.rsplit("/", 1)[1]
        details = client.get(f"/ngsi-ld/v1/jsonldContexts/{local_id}?details=true").json()
        assert details["kind"] == "ImplicitlyCreated" and details["URL"] == implicit
        served = client.get(f"/ngsi-ld/v1/jsonldContexts/{local_id}").json()
        assert served == {"@context": [context_url, {"extra": EX + "extra"}]}
        single = client.post(BASE, json=subscription(), headers=link(context_url))
        assert "jsonldContext" not in client.get(single.headers["location"]).json()

    def test_status_follows_is_active_and_expires_at(self, client: TestClient) -> None:
        paused = create(client, subscription(isActive=False))
        assert client.get(f"{BASE}/{paused}").json()["status"] == "paused"
        assert client.get(f"{BASE}/{paused}").json()["isActive"] is False

    @pytest.mark.parametrize("path", ["InvalidUri", "not a uri"])
    def test_an_id_that_is_not_a_uri_is_400(self, client: TestClient, path: str) -> None:
        for method in ("GET", "PATCH", "DELETE"):
            response = client.request(method, f"{BASE}/{path}", json={"isActive": True})
            assert_problem(response, 400, "BadRequestData")

    def test_unknown_is_404(self, client: TestClient) -> None:
        for method in ("GET", "PATCH", "DELETE"):
            response = client.request(method, f"{BASE}/urn:ngsi-ld:Subscription:nope", json={"isActive": True})
            assert_problem(response, 404, "ResourceNotFound")

    @pytest.mark.parametrize(
        "prefer", ["ngsi-ld=1.0", "NGSI-LD=1.0", 'ngsi-ld="1.0"', "ngsi-ld=1.0;q=0.1", "respond-async, ngsi-ld=1.0"]
    )
    def test_prefer_ngsi_ld_version_is_applied(self, client: TestClient, prefer: str) -> None:
        sub_id = create(client, subscription())
        response = client.get(f"{BASE}/{sub_id}", headers={"Prefer": prefer})
        assert response.headers["preference-applied"] == "ngsi-ld=1.0"

    def test_no_version_preference_no_header(self, client: TestClient) -> None:
        sub_id = create(client, subscription())
        response = client.get(f"{BASE}/{sub_id}", headers={"Prefer": "respond-async"})
        assert response.status_code == 200
        assert "preference-applied" not in response.headers


class TestQuery:
    def test_pages_with_prev_and_next_links(self, client: TestClient) -> None:
        ids = [create(client, subscription(id=f"urn:ngsi-ld:Subscription:q{i}")) for i in range(3)]
        response = client.get(BASE + "/?limit=1&offset=1", headers={"Accept": "application/ld+json"})
        assert [s["id"] for s in response.json()] == [ids[1]]
        links = sorted(v.replace(" ", "") for v in response.headers.get_list("link"))
        assert links == [
            f'<{BASE}?limit=1&offset=0>;rel="prev";type="application/ld+json"',
            f'<{BASE}?limit=1&offset=2>;rel="next";type="application/ld+json"',
        ]
        last = client.get(BASE + "?limit=1&offset=2")
        assert [v.replace(" ", "") for v in last.headers.get_list("link") if "prev" in v or "next" in v] == [
            f'<{BASE}?limit=1&offset=1>;rel="prev";type="application/json"'
        ]
        everything = client.get(BASE + "?limit=15&count=true")
        assert len(everything.json()) == 3 and everything.headers["ngsild-results-count"] == "3"
        assert all("@context" not in item for item in everything.json())

    def test_subscriptions_belong_to_their_tenant(self, client: TestClient) -> None:
        create(client, subscription(), {"NGSILD-Tenant": "north"})
        assert client.get(BASE).json() == []
        assert len(client.get(BASE, headers={"NGSILD-Tenant": "north"}).json()) == 1
        assert_problem(client.get(BASE, headers={"NGSILD-Tenant": "nowhere"}), 404, "NonexistentTenant")

    def test_collection_patch_and_delete_are_405(self, client: TestClient) -> None:
        assert client.patch(BASE + "/", json={"isActive": True}).status_code == 405
        assert client.delete(BASE + "/").status_code == 405


class TestUpdate:
    def test_members_are_merged_and_notification_replaced(self, client: TestClient, context_url: str) -> None:
        body = subscription(timeInterval=5)
        body["notification"] = {"format": "keyValues", "attributes": ["name"], "endpoint": {"uri": ENDPOINT}}
        sub_id = create(client, body, link(context_url))
        fragment = {"entities": [{"type": "Vehicle"}], "notification": {"endpoint": {"uri": "http://other.org/n"}}}
        response = client.patch(f"{BASE}/{sub_id}", json=fragment, headers=link(context_url))
        assert response.status_code == 204 and response.text == ""
        got = client.get(f"{BASE}/{sub_id}", headers=link(context_url)).json()
        assert got["entities"] == [{"type": "Vehicle"}]
        assert got["timeInterval"] == 5
        assert got["notification"] == {"endpoint": {"uri": "http://other.org/n"}}

    @pytest.mark.parametrize(
        "fragment",
        [
            {"notification": {"format": "keyValues"}},
            {"type": "Subscription", "notification": {"format": "keyValues", "endpoint": None}},
            {"expiresAt": "2020-08-01T22:07:00Z"},
            {"throttling": 3, "timeInterval": 4},
            {"id": "urn:ngsi-ld:Subscription:other"},
        ],
    )
    def test_invalid_fragments(self, client: TestClient, fragment: dict[str, Any]) -> None:
        sub_id = create(client, subscription())
        assert_problem(client.patch(f"{BASE}/{sub_id}", json=fragment), 400, "BadRequestData")

    def test_is_active_and_expires_at_drive_the_status(self, client: TestClient) -> None:
        sub_id = create(client, subscription())
        client.patch(f"{BASE}/{sub_id}", json={"type": "Subscription", "isActive": False})
        assert client.get(f"{BASE}/{sub_id}").json()["status"] == "paused"
        client.patch(f"{BASE}/{sub_id}", json={"isActive": True, "expiresAt": "2090-08-01T22:07:00Z"})
        got = client.get(f"{BASE}/{sub_id}").json()
        assert got["status"] == "active" and got["expiresAt"] == "2090-08-01T22:07:00Z"


class TestDelete:
    def test_delete_then_gone(self, client: TestClient) -> None:
        sub_id = create(client, subscription())
        response = client.delete(f"{BASE}/{sub_id}")
        assert response.status_code == 204 and response.text == ""
        assert_problem(client.get(f"{BASE}/{sub_id}"), 404, "ResourceNotFound")


def test_subscriptions_survive_a_restart(settings: Settings) -> None:
    with TestClient(create_app(settings)) as first:
        sub_id = create(first, subscription(watchedAttributes=["name"]))
    with TestClient(create_app(settings)) as second:
        got = second.get(f"{BASE}/{sub_id}").json()
        assert got["watchedAttributes"] == ["name"]
