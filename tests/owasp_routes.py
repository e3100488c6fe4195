"""The authorization matrix of tests/test_owasp_matrix.py: every route of the application, each
with a decision (who may call it) and concrete requests that exercise it against the objects a
test city holds. A route that is not in MATRIX fails the suite (test_every_route_is_classified): a
new route cannot ship without an authorization decision.

Kinds (the decision for each route):
- PUBLIC: answered without credentials (listed in PUBLIC_ROUTES, documented in docs/security.md).
- DEVICE: IoT measures, a device key only (auth/devices.py).
- READ: reads of entities and what is derived from them; with a reader key the hidden attribute is
  absent, with another tenant's key nothing of the first tenant is seen.
- WRITE: changes to entities (and their history); a reader key gets 403 (404 when invisible).
- OWNED: subscriptions, entity maps and snapshots, which belong to their creator: another principal
  of the same tenant gets 404 and sees none of them in listings.
- ADMIN: changes to registrations and @contexts; IoT provisioning, keys, users, policies, audit:
  403 for a reader (registrations are read with the `read` right on resource `registration`).
  Making, cloning and purging snapshots too (`administer` on resource `snapshot`; someone else's
  snapshot answers 404 to a clone).
- PARTNER: the data channel's partner API (/dsp/..., the notification inbox): a partner city's
  RFC 9421 signature only (dataspace/door.py); any other caller, an admin too, gets 401.
- MALFORMED: no such operation (`/entities/` and `/entities//attrs...` without an entity id, PUT
  under /temporal/entities/): 400 or 405 for every authenticated caller.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.routing import BaseRoute, Mount, Route

Kind = Literal[
    "public",
    "device",
    "read",
    "write",
    "owned-read",
    "owned-write",
    "admin-read",
    "admin-write",
    "partner",
    "malformed",
]
API = "/ngsi-ld/v1"
TEMPORAL = f"{API}/temporal/entities"
ADMIN = "/cityos/v1/admin"
SPACE = f"{ADMIN}/dataspace"

BUILDING = "urn:ngsi-ld:Building:1"
SECRET_VALUE = "TOPSECRET-7f3a"  # the value of the attribute the reader may not read
HIDDEN = "secret"  # its name: absent from everything the reader gets
NEAR = {"lat": "36.9", "lon": "-116.76"}  # a place for the citizens' "near me" questions
FORM = {"Content-Type": "application/x-www-form-urlencoded"}  # the console's sign-in and its forms

# the routes anyone may call without credentials (docs/security.md, "The authorization matrix")
PUBLIC_ROUTES = {
    ("GET", "/version"),  # the broker's version, for health checks
    ("POST", "/cityos/v1/auth/token"),  # a local user's password for a token: its own Basic check
    ("GET", f"{API}/jsonldContexts"),  # @contexts are public documents (clients must fetch them)
    ("GET", f"{API}/jsonldContexts/{{context_id:path}}"),
    ("GET", "/iot/about"),  # the IoT Agent's version, as the FIWARE agent answers it
    ("POST", "/ngsi-ld/ex/remote-notify"),  # context sources' notifications: the random subscription id
    ("GET", "/cityos/v1/indicators"),  # how each indicator is computed: public, as an algorithm register
    ("GET", "/cityos/v1/rules"),  # how each alert is decided: public, as an algorithm register
    ("GET", "/cityos/v1/insight/register"),  # the register of models: every indicator and forecaster, public
    # Open311 GeoReport v2 (open311/http.py): its clients send no Authorization header; a report
    # proves its own api_key, and no answer carries the reporters' contact details
    ("GET", "/open311/v2/services.{format}"),
    ("GET", "/open311/v2/services/{service_code}.{format}"),
    ("GET", "/open311/v2/requests.{format}"),
    ("POST", "/open311/v2/requests.{format}"),
    ("GET", "/open311/v2/requests/{request_id}.{format}"),
    ("GET", "/open311/v2/tokens/{token}.{format}"),
    ("GET", "/open311/v2/media/{name}"),
    ("GET", "/openapi.json"),  # the API description (routes and schemas, no data): ops/openapi.py
    ("GET", "/docs"),  # its documentation page and the page's own assets
    ("GET", "/docs/{asset}"),
    ("GET", "/health/live"),  # load balancers' and Kubernetes probes: ops/health.py
    ("GET", "/health/ready"),
    # the web console (console/http.py): its pages pass the door (a browser sends no Authorization
    # header) and ask the API with the session cookie's token; with --auth required and no session
    # they answer 303 to the sign-in page, which is public, as the language switch and the assets
    ("GET", "/"),
    ("GET", "/console/entities"),
    ("GET", "/console/entity"),
    ("GET", "/console/map"),
    ("GET", "/console/operations"),
    ("GET", "/console/admin"),
    ("POST", "/console/alerts/acknowledge"),
    ("POST", "/console/entity/edit"),
    ("POST", "/console/subscriptions"),
    ("GET", "/console/signin"),
    ("POST", "/console/signin"),
    ("POST", "/console/signout"),
    ("GET", "/console/oidc/signin"),  # the sign-in at the OpenID Connect provider (404 when not configured)
    ("GET", "/console/oidc/callback"),
    ("GET", "/console/language"),
    ("GET", "/console/static/{path:path}"),
    # open data (docs/open-data.md): the catalogue, its downloads and the CKAN read API answer anyone
    # with what the policies give the anonymous caller, never personal attributes
    ("GET", "/catalog"),
    ("GET", "/catalog/datasets"),
    ("GET", "/catalog/datasets/{dataset_id}"),
    ("GET", "/catalog/datasets/{dataset_id}/counts"),
    ("GET", "/catalog/datasets/{dataset_id}/entities.csv-metadata.json"),
    ("GET", "/catalog/datasets/{dataset_id}/{kind:str}.{fmt:str}"),
    ("GET", "/api/3/action/{action}"),
    ("POST", "/api/3/action/{action}"),
    ("GET", "/api/action/{action}"),
    ("POST", "/api/action/{action}"),
    # the citizens' page and API (citizen/http.py): for anyone; each answer is a query of the API as
    # the anonymous caller, so it holds only what the policies make public (nothing, when none does)
    ("GET", "/city/api/air"),
    ("GET", "/city/api/parking"),
    ("GET", "/city/api/places"),
    ("GET", "/city/api/stops"),
    ("GET", "/city/api/departures"),
    ("POST", "/city/api/reports"),  # relayed to Open311, which checks the page's api_key
    ("GET", "/city/"),
    ("GET", "/city/manifest.webmanifest"),
    ("GET", "/city/sw.js"),
    ("GET", "/city/static/{path:path}"),
}
# the handler that only answers 400 for a missing entity id (`/entities/`, `/entities//attrs`)
MALFORMED = "missing_entity_id"


@dataclass(frozen=True)
class Ids:
    """The objects of the test city the concrete requests name."""

    subscription: str = ""
    csource_subscription: str = ""
    entity_map: str = ""
    registration: str = ""
    context: str = ""
    key: str = ""
    user: str = ""
    policy: str = ""
    instance: str = ""
    device: str = ""
    snapshot: str = ""


@dataclass(frozen=True)
class Probe:
    """One concrete request for a route (method and path template as in the route table)."""

    method: str
    route: str
    kind: Kind
    url: str
    json: Any = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: str | None = None

    @property
    def label(self) -> str:
        return f"{self.method} {self.url}"


def _prop(value: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value}


def probes(ids: Ids) -> list[Probe]:
    """Every route, each with at least one request (the twins with a trailing slash included)."""
    e = f"{API}/entities"
    one = f"{e}/{BUILDING}"
    new = {"id": "urn:ngsi-ld:Building:new", "type": "Building", "name": _prop("New")}
    frag = {"name": _prop("Changed")}
    batch = [{"id": BUILDING, "type": "Building", "name": _prop("Changed")}]
    query = {"type": "Query", "entities": [{"type": "Building"}]}
    temporal_new = {"id": "urn:ngsi-ld:Building:new", "type": "Building", "name": [_prop("x")]}
    history = {"name": [{**_prop("Old"), "observedAt": "2020-01-01T00:00:00Z"}]}
    temporal_q = {"type": "Building", "timerel": "after", "timeAt": "2000-01-01T00:00:00Z"}
    sub = f"{API}/subscriptions/{ids.subscription}"
    csub = f"{API}/csourceSubscriptions/{ids.csource_subscription}"
    emap = f"{API}/entityMaps/{ids.entity_map}"
    reg = f"{API}/csourceRegistrations/{ids.registration}"
    snap = f"{API}/snapshots/{ids.snapshot}"
    snapshot = {"type": "Snapshot", "snapshotQueries": [query]}
    registration = {
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "Building"}]}],
        "endpoint": "http://csource.example.org:1026",
    }
    subscription = {
        "type": "Subscription",
        "entities": [{"type": "Building"}],
        "notification": {"endpoint": {"uri": "http://127.0.0.1:9/none"}},
    }
    p = Probe
    table = [
        # entities
        p("POST", f"{e}", "write", e, json=new),
        p("POST", f"{e}/", "write", e + "/", json=new),
        p("GET", f"{e}", "read", e, params={"type": "Building"}),
        p("GET", f"{e}", "read", e, params={"type": "Building", "format": "keyValues"}),
        p("GET", f"{e}", "read", e, params={"type": "Building", "format": "concise"}),
        p("GET", f"{e}", "read", e, params={"type": "Building", "attrs": HIDDEN}),
        p("GET", f"{e}", "read", e, params={"type": "Building", "q": f'{HIDDEN}=="{SECRET_VALUE}"'}),
        p("GET", f"{e}", "read", e, params={"type": "Building"}, headers={"Accept": "application/geo+json"}),
        p("GET", f"{e}/", "read", e + "/", params={"type": "Building", "count": "true"}),
        p("DELETE", f"{e}", "write", e, params={"type": "Building"}),
        p("DELETE", f"{e}/", "write", e + "/", params={"type": "Building"}),
        p("GET", f"{e}/{{entity_id}}", "read", one),
        p("GET", f"{e}/{{entity_id}}", "read", one, params={"format": "keyValues"}),
        p("GET", f"{e}/{{entity_id}}", "read", one, params={"format": "concise"}),
        p("GET", f"{e}/{{entity_id}}", "read", one, params={"attrs": HIDDEN}),
        p("GET", f"{e}/{{entity_id}}", "read", one, headers={"Accept": "application/geo+json"}),
        p("GET", f"{e}/{{entity_id}}", "read", one, params={"pick": f"id,{HIDDEN}"}),
        p("GET", f"{e}/{{entity_id}}", "read", one, params={"omit": "name", "options": "sysAttrs"}),
        p("PUT", f"{e}/{{entity_id}}", "write", one, json={"type": "Building", "name": _prop("Replaced")}),
        p("PATCH", f"{e}/{{entity_id}}", "write", one, json=frag),
        p("DELETE", f"{e}/{{entity_id}}", "write", one),
        p("POST", f"{e}/{{entity_id}}/attrs", "write", one + "/attrs", json={"extra": _prop(1)}),
        p("POST", f"{e}/{{entity_id}}/attrs/", "write", one + "/attrs/", json={"extra": _prop(1)}),
        p("PATCH", f"{e}/{{entity_id}}/attrs", "write", one + "/attrs", json=frag),
        p("PATCH", f"{e}/{{entity_id}}/attrs/", "write", one + "/attrs/", json=frag),
        p("PATCH", f"{e}/{{entity_id}}/attrs/{{attr}}", "write", one + "/attrs/name", json={"value": "Changed"}),
        p("PUT", f"{e}/{{entity_id}}/attrs/{{attr}}", "write", one + "/attrs/name", json=_prop("Changed")),
        p("DELETE", f"{e}/{{entity_id}}/attrs/{{attr}}", "write", one + "/attrs/name"),
        # batch
        p("POST", f"{API}/entityOperations/create", "write", f"{API}/entityOperations/create", json=[new]),
        p("POST", f"{API}/entityOperations/upsert", "write", f"{API}/entityOperations/upsert", json=batch),
        p("POST", f"{API}/entityOperations/update", "write", f"{API}/entityOperations/update", json=batch),
        p("POST", f"{API}/entityOperations/merge", "write", f"{API}/entityOperations/merge", json=batch),
        p("POST", f"{API}/entityOperations/delete", "write", f"{API}/entityOperations/delete", json=[BUILDING]),
        p("POST", f"{API}/entityOperations/query", "read", f"{API}/entityOperations/query", json=query),
        p(
            "POST",
            f"{API}/entityOperations/query",
            "read",
            f"{API}/entityOperations/query",
            json={**query, "q": f'{HIDDEN}=="{SECRET_VALUE}"'},
        ),
        # @contexts
        p("GET", f"{API}/jsonldContexts", "public", f"{API}/jsonldContexts"),
        p("POST", f"{API}/jsonldContexts", "admin-write", f"{API}/jsonldContexts", json={"@context": {"a": "urn:a"}}),
        p("GET", f"{API}/jsonldContexts/{{context_id:path}}", "public", f"{API}/jsonldContexts/{ids.context}"),
        p("DELETE", f"{API}/jsonldContexts/{{context_id:path}}", "admin-write", f"{API}/jsonldContexts/{ids.context}"),
        # information and discovery
        p("GET", f"{API}/info/sourceIdentity", "read", f"{API}/info/sourceIdentity"),
        p("GET", f"{API}/types", "read", f"{API}/types", params={"details": "true"}),
        p("GET", f"{API}/types/", "read", f"{API}/types/"),
        p("GET", f"{API}/types/{{name:path}}", "read", f"{API}/types/Building"),
        p("GET", f"{API}/attributes", "read", f"{API}/attributes", params={"details": "true"}),
        p("GET", f"{API}/attributes/", "read", f"{API}/attributes/"),
        p("GET", f"{API}/attributes/{{name:path}}", "read", f"{API}/attributes/name"),
        # subscriptions: they belong to their creator
        p("POST", f"{API}/subscriptions", "owned-write", f"{API}/subscriptions", json=subscription),
        p("POST", f"{API}/subscriptions/", "owned-write", f"{API}/subscriptions/", json=subscription),
        p("GET", f"{API}/subscriptions", "owned-read", f"{API}/subscriptions"),
        p("GET", f"{API}/subscriptions/", "owned-read", f"{API}/subscriptions/"),
        p("GET", f"{API}/subscriptions/{{subscription_id}}", "owned-read", sub),
        p("PATCH", f"{API}/subscriptions/{{subscription_id}}", "owned-write", sub, json={"description": "x"}),
        p("DELETE", f"{API}/subscriptions/{{subscription_id}}", "owned-write", sub),
        # registrations
        p("POST", f"{API}/csourceRegistrations", "admin-write", f"{API}/csourceRegistrations", json=registration),
        p("POST", f"{API}/csourceRegistrations/", "admin-write", f"{API}/csourceRegistrations/", json=registration),
        p("GET", f"{API}/csourceRegistrations", "read", f"{API}/csourceRegistrations", params={"type": "Building"}),
        p("GET", f"{API}/csourceRegistrations/", "read", f"{API}/csourceRegistrations/", params={"type": "Building"}),
        p("GET", f"{API}/csourceRegistrations/{{registration_id}}", "read", reg),
        p("PATCH", f"{API}/csourceRegistrations/{{registration_id}}", "admin-write", reg, json={"description": "x"}),
        p("DELETE", f"{API}/csourceRegistrations/{{registration_id}}", "admin-write", reg),
        # context source registration subscriptions: they belong to their creator
        p("POST", f"{API}/csourceSubscriptions", "owned-write", f"{API}/csourceSubscriptions", json=subscription),
        p("POST", f"{API}/csourceSubscriptions/", "owned-write", f"{API}/csourceSubscriptions/", json=subscription),
        p("GET", f"{API}/csourceSubscriptions", "owned-read", f"{API}/csourceSubscriptions"),
        p("GET", f"{API}/csourceSubscriptions/", "owned-read", f"{API}/csourceSubscriptions/"),
        p("GET", f"{API}/csourceSubscriptions/{{subscription_id}}", "owned-read", csub),
        p("PATCH", f"{API}/csourceSubscriptions/{{subscription_id}}", "owned-write", csub, json={"description": "x"}),
        p("DELETE", f"{API}/csourceSubscriptions/{{subscription_id}}", "owned-write", csub),
        # entity maps: they belong to their creator
        p("GET", f"{API}/entityMaps", "read", f"{API}/entityMaps", params={"type": "Building"}),
        p("GET", f"{API}/entityMaps/{{map_id}}", "owned-read", emap),
        p("PATCH", f"{API}/entityMaps/{{map_id}}", "owned-write", emap, json={"expiresAt": "2020-01-01T00:00:00Z"}),
        p("DELETE", f"{API}/entityMaps/{{map_id}}", "owned-write", emap),
        p("GET", f"{e}", "owned-read", e, params={"type": "Building"}, headers={"NGSILD-EntityMap": ids.entity_map}),
        # snapshots: resource "snapshot" (read / administer), and each belongs to its creator
        p("POST", f"{API}/snapshots", "admin-write", f"{API}/snapshots", json=snapshot),
        p("GET", f"{API}/snapshots", "owned-read", f"{API}/snapshots"),
        p("DELETE", f"{API}/snapshots", "admin-write", f"{API}/snapshots", params={"q": "snapshotPriority>0"}),
        p("GET", f"{API}/snapshots/{{snapshot_id}}", "owned-read", snap),
        p("PATCH", f"{API}/snapshots/{{snapshot_id}}", "owned-write", snap, json={"snapshotPriority": 1}),
        p("DELETE", f"{API}/snapshots/{{snapshot_id}}", "owned-write", snap),
        p("POST", f"{API}/snapshots/{{snapshot_id}}/clone", "admin-write", snap + "/clone", json={"type": "Snapshot"}),
        # temporal (a query over someone else's entity map makes a new map, as above)
        p(
            "GET",
            TEMPORAL,
            "owned-read",
            TEMPORAL,
            params=temporal_q,
            headers={"NGSILD-EntityMap": ids.entity_map},
        ),
        p("GET", TEMPORAL, "read", TEMPORAL, params=temporal_q),
        p("POST", TEMPORAL, "write", TEMPORAL, json=temporal_new),
        p("GET", f"{TEMPORAL}/{{rest:path}}", "read", f"{TEMPORAL}/{BUILDING}"),
        p("GET", f"{TEMPORAL}/{{rest:path}}", "read", f"{TEMPORAL}/{BUILDING}", params={"format": "temporalValues"}),
        p(
            "GET",
            f"{TEMPORAL}/{{rest:path}}",
            "read",
            f"{TEMPORAL}/{BUILDING}",
            params={
                "aggrMethods": "totalCount,distinctCount",
                "aggrPeriodDuration": "P1D",
                "format": "aggregatedValues",
            },
        ),
        p("GET", f"{TEMPORAL}/{{rest:path}}", "read", f"{TEMPORAL}/{BUILDING}", params={"lastN": "1", "attrs": HIDDEN}),
        p("POST", f"{TEMPORAL}/{{rest:path}}", "write", f"{TEMPORAL}/{BUILDING}/attrs", json=history),
        p("DELETE", f"{TEMPORAL}/{{rest:path}}", "write", f"{TEMPORAL}/{BUILDING}"),
        p("DELETE", f"{TEMPORAL}/{{rest:path}}", "write", f"{TEMPORAL}/{BUILDING}/attrs/name"),
        p(
            "PATCH",
            f"{TEMPORAL}/{{rest:path}}",
            "write",
            f"{TEMPORAL}/{BUILDING}/attrs/name/{ids.instance}",
            json={"name": _prop("Patched")},
        ),
        p("DELETE", f"{TEMPORAL}/{{rest:path}}", "write", f"{TEMPORAL}/{BUILDING}/attrs/name/{ids.instance}"),
        p("PUT", f"{TEMPORAL}/{{rest:path}}", "malformed", f"{TEMPORAL}/{BUILDING}", json=temporal_new),
        p(
            "POST",
            f"{API}/temporal/entityOperations/query",
            "read",
            f"{API}/temporal/entityOperations/query",
            json={**query, "temporalQ": {"timerel": "after", "timeAt": "2000-01-01T00:00:00Z"}},
        ),
        p("GET", f"{API}/temporal/entityMaps", "read", f"{API}/temporal/entityMaps", params=temporal_q),
        # IoT agent
        p("GET", "/iot/about", "public", "/iot/about"),
        # context sources' notifications: an id this broker did not make answers 404, changing nothing
        p(
            "POST",
            "/ngsi-ld/ex/remote-notify",
            "public",
            "/ngsi-ld/ex/remote-notify",
            json={"type": "Notification", "subscriptionId": "urn:ngsi-ld:Subscription:guess", "data": []},
        ),
        p(
            "POST",
            "/iot/services",
            "admin-write",
            "/iot/services",
            json={"services": [{"apikey": "k2", "entity_type": "T", "resource": "/iot/d"}]},
        ),
        p("GET", "/iot/services", "admin-read", "/iot/services"),
        p("DELETE", "/iot/services", "admin-write", "/iot/services", params={"apikey": "k1", "resource": "/iot/d"}),
        p(
            "POST",
            "/iot/devices",
            "admin-write",
            "/iot/devices",
            json={"devices": [{"device_id": "d2", "entity_type": "T"}]},
        ),
        p("GET", "/iot/devices", "admin-read", "/iot/devices"),
        p("GET", "/iot/devices/{device_id}", "admin-read", f"/iot/devices/{ids.device}"),
        p("DELETE", "/iot/devices/{device_id}", "admin-write", f"/iot/devices/{ids.device}"),
        p("POST", "/iot/d", "device", "/iot/d", params={"k": "k1", "i": ids.device}, content="t|21"),
        p("POST", "/iot/json", "device", "/iot/json", params={"k": "k1", "i": ids.device}, json={"t": 21}),
        # audit, policies, keys, users, tokens, version, metrics
        p("GET", "/cityos/v1/audit", "admin-read", "/cityos/v1/audit"),
        p("GET", "/cityos/v1/audit/verification", "admin-read", "/cityos/v1/audit/verification"),
        # import runs (ingest/runs_http.py): admins of every tenant
        p("GET", "/cityos/v1/imports", "admin-read", "/cityos/v1/imports"),
        p("GET", "/cityos/v1/imports/{run_id}", "admin-read", "/cityos/v1/imports/0123456789abcdef"),
        p(
            "PUT",
            "/cityos/v1/imports/{run_id}",
            "admin-write",
            "/cityos/v1/imports/0123456789abcdef",
            json={"kind": "csv", "source": "x.csv", "started_at": "2026-01-01T00:00:00Z"},
        ),
        p("GET", "/metrics", "admin-read", "/metrics"),  # counts span every tenant (docs/operations.md)
        p(
            "GET",
            "/cityos/v1/audit/access-report",
            "admin-read",
            "/cityos/v1/audit/access-report",
            params={"subject": BUILDING},
        ),
        p("GET", f"{ADMIN}/policies", "admin-read", f"{ADMIN}/policies"),
        p(
            "POST",
            f"{ADMIN}/policies",
            "admin-write",
            f"{ADMIN}/policies",
            json={"id": "x", "effect": "allow", "principals": {"authenticated": True}, "actions": ["*"]},
        ),
        p("POST", f"{ADMIN}/policies/reload", "admin-write", f"{ADMIN}/policies/reload"),
        p("GET", f"{ADMIN}/policies/{{policy_id}}", "admin-read", f"{ADMIN}/policies/{ids.policy}"),
        p("GET", f"{ADMIN}/policies/{{policy_id}}/history", "admin-read", f"{ADMIN}/policies/{ids.policy}/history"),
        p(
            "PUT",
            f"{ADMIN}/policies/{{policy_id}}",
            "admin-write",
            f"{ADMIN}/policies/{ids.policy}",
            json={"id": ids.policy, "effect": "allow", "principals": {"authenticated": True}, "actions": ["*"]},
        ),
        p("DELETE", f"{ADMIN}/policies/{{policy_id}}", "admin-write", f"{ADMIN}/policies/{ids.policy}"),
        p("GET", "/version", "public", "/version"),
        p("POST", f"{ADMIN}/keys", "admin-write", f"{ADMIN}/keys", json={"name": "x", "roles": ["admin"]}),
        p("GET", f"{ADMIN}/keys", "admin-read", f"{ADMIN}/keys"),
        p("GET", f"{ADMIN}/keys/{{key_id}}", "admin-read", f"{ADMIN}/keys/{ids.key}"),
        p("DELETE", f"{ADMIN}/keys/{{key_id}}", "admin-write", f"{ADMIN}/keys/{ids.key}"),
        p(
            "POST",
            f"{ADMIN}/users",
            "admin-write",
            f"{ADMIN}/users",
            json={"name": "mallory", "password": "long enough words"},
        ),
        p("GET", f"{ADMIN}/users", "admin-read", f"{ADMIN}/users"),
        p("DELETE", f"{ADMIN}/users/{{name}}", "admin-write", f"{ADMIN}/users/{ids.user}"),
        p(
            "PUT",
            f"{ADMIN}/users/{{name}}/password",
            "admin-write",
            f"{ADMIN}/users/{ids.user}/password",
            json={"password": "a new long password"},
        ),
        p("POST", "/cityos/v1/auth/token", "public", "/cityos/v1/auth/token"),
        # the indicators (insight/): their declarations are public, computing them is for admins
        p("GET", "/cityos/v1/indicators", "public", "/cityos/v1/indicators"),
        p("POST", "/cityos/v1/indicators/compute", "admin-write", "/cityos/v1/indicators/compute"),
        p(
            "POST",
            "/cityos/v1/indicators/{indicator_id}/compute",
            "admin-write",
            "/cityos/v1/indicators/parking-occupancy/compute",
        ),
        p(
            "GET",
            "/cityos/v1/indicators/{indicator_id}/verify",
            "admin-read",
            "/cityos/v1/indicators/parking-occupancy/verify",
        ),
        p(
            "PUT",
            "/cityos/v1/indicators/{indicator_id}",
            "admin-write",
            "/cityos/v1/indicators/parking-occupancy",
            content='id = "x"',
        ),
        # the alert rules (insight/alerts.py): their declarations are public, changing them and
        # acknowledging an alert is for admins of every tenant
        p("GET", "/cityos/v1/rules", "public", "/cityos/v1/rules"),
        p("PUT", "/cityos/v1/rules/{rule_id}", "admin-write", "/cityos/v1/rules/pm25-high", content='id = "x"'),
        p(
            "POST",
            "/cityos/v1/alerts/{alert_id}/acknowledge",
            "admin-write",
            "/cityos/v1/alerts/urn:ngsi-ld:Alert:pm25-high:x/acknowledge",
        ),
        # forecasts (insight/forecast*.py): computing them is for admins; the register of models is public
        p("POST", "/cityos/v1/forecasters/compute", "admin-write", "/cityos/v1/forecasters/compute"),
        p(
            "POST",
            "/cityos/v1/forecasters/{forecaster_id}/compute",
            "admin-write",
            "/cityos/v1/forecasters/pm25-next-day/compute",
        ),
        p("GET", "/cityos/v1/insight/register", "public", "/cityos/v1/insight/register"),
        # Open311 (open311/http.py): the GeoReport API is public (a report checks its own api_key);
        # an operator's status change is a write of the request entity
        p("GET", "/open311/v2/services.{format}", "public", "/open311/v2/services.json"),
        p("GET", "/open311/v2/services/{service_code}.{format}", "public", "/open311/v2/services/pothole.xml"),
        p("GET", "/open311/v2/requests.{format}", "public", "/open311/v2/requests.json"),
        p("POST", "/open311/v2/requests.{format}", "public", "/open311/v2/requests.json"),
        p("GET", "/open311/v2/requests/{request_id}.{format}", "public", "/open311/v2/requests/x.json"),
        p("GET", "/open311/v2/tokens/{token}.{format}", "public", "/open311/v2/tokens/abcdefgh.json"),
        p("GET", "/open311/v2/media/{name}", "public", "/open311/v2/media/x.jpg"),
        p(
            "POST",
            "/cityos/v1/open311/requests/{request_id}/status",
            "write",
            "/cityos/v1/open311/requests/x/status",
            json={"status": "closed"},
        ),
        p("GET", "/openapi.json", "public", "/openapi.json"),
        p("GET", "/docs", "public", "/docs"),
        p("GET", "/docs/{asset}", "public", "/docs/docs.js"),
        p("GET", "/health/live", "public", "/health/live"),
        p("GET", "/health/ready", "public", "/health/ready"),
        # the web console: pages public at the door (each asks the API with the user's session), and
        # the read proxy its map and charts use, which answers as the API it forwards to
        p("GET", "/", "public", "/"),
        p("GET", "/console/entities", "public", "/console/entities", params={"type": "Building"}),
        p("GET", "/console/entity", "public", "/console/entity", params={"id": BUILDING}),
        p("GET", "/console/map", "public", "/console/map"),
        p("GET", "/console/operations", "public", "/console/operations"),
        p("GET", "/console/admin", "public", "/console/admin"),
        p(
            "POST",
            "/console/entity/edit",
            "public",
            "/console/entity/edit",
            content="id=x&attr=y&value=z",
            headers=FORM,
        ),
        p("POST", "/console/subscriptions", "public", "/console/subscriptions", content="type=Building", headers=FORM),
        p("POST", "/console/alerts/acknowledge", "public", "/console/alerts/acknowledge", content="id=x", headers=FORM),
        p("GET", "/console/signin", "public", "/console/signin"),
        p("POST", "/console/signin", "public", "/console/signin", content="username=x&password=y", headers=FORM),
        p("POST", "/console/signout", "public", "/console/signout"),
        p("GET", "/console/oidc/signin", "public", "/console/oidc/signin"),
        p("GET", "/console/oidc/callback", "public", "/console/oidc/callback", params={"code": "x", "state": "y"}),
        p("GET", "/console/language", "public", "/console/language", params={"lang": "zh"}),
        p("GET", "/console/static/{path:path}", "public", "/console/static/console.css"),
        p("GET", "/console/api/{path:path}", "read", f"/console/api{API}/entities/{BUILDING}"),
        # the citizens' API and page: public, each answer what the anonymous caller may read
        p("GET", "/city/api/air", "public", "/city/api/air", params=NEAR),
        p("GET", "/city/api/parking", "public", "/city/api/parking", params=NEAR),
        p("GET", "/city/api/places", "public", "/city/api/places", params=NEAR),
        p("GET", "/city/api/stops", "public", "/city/api/stops", params=NEAR),
        p("GET", "/city/api/departures", "public", "/city/api/departures", params={"stop": "urn:ngsi-ld:GtfsStop:x"}),
        p("POST", "/city/api/reports", "public", "/city/api/reports", content="service_code=pothole", headers=FORM),
        p("GET", "/city/", "public", "/city/"),
        p("GET", "/city/manifest.webmanifest", "public", "/city/manifest.webmanifest"),
        p("GET", "/city/sw.js", "public", "/city/sw.js"),
        p("GET", "/city/static/{path:path}", "public", "/city/static/city.js"),
        # the map's data (mapdata/): vector tiles and the change stream are reads, as a query is
        p("GET", "/tiles/{z}/{x}/{y}.mvt", "read", "/tiles/0/0/0.mvt", params={"type": "Building"}),
        p("GET", "/cityos/v1/changes", "read", "/cityos/v1/changes", params={"type": "Building", "duration": "1"}),
        # open data (catalog/, exports/): public routes over the anonymous caller's view
        p("GET", "/catalog", "public", "/catalog"),
        p("GET", "/catalog/datasets", "public", "/catalog/datasets"),
        p("GET", "/catalog/datasets/{dataset_id}", "public", "/catalog/datasets/buildings"),
        p("GET", "/catalog/datasets/{dataset_id}/counts", "public", "/catalog/datasets/buildings/counts?by=name"),
        p(
            "GET",
            "/catalog/datasets/{dataset_id}/entities.csv-metadata.json",
            "public",
            "/catalog/datasets/buildings/entities.csv-metadata.json",
        ),
        p(
            "GET",
            "/catalog/datasets/{dataset_id}/{kind:str}.{fmt:str}",
            "public",
            "/catalog/datasets/buildings/entities.csv",
        ),
        p("GET", "/api/3/action/{action}", "public", "/api/3/action/package_list"),
        p("POST", "/api/3/action/{action}", "public", "/api/3/action/package_search", json={"q": "Tower"}),
        p("GET", "/api/action/{action}", "public", "/api/action/organization_list"),
        p("POST", "/api/action/{action}", "public", "/api/action/package_show", json={"id": "buildings"}),
        # the data channel between cities (dataspace/): its admin API, and its partners' API
        p("GET", f"{SPACE}/identity", "admin-read", f"{SPACE}/identity"),
        p("GET", f"{SPACE}/partners", "admin-read", f"{SPACE}/partners"),
        p("POST", f"{SPACE}/partners", "admin-write", f"{SPACE}/partners", json={"name": "Mallory"}),
        p("DELETE", f"{SPACE}/partners/{{name}}", "admin-write", f"{SPACE}/partners/Nowhere"),
        p("GET", f"{SPACE}/offers", "admin-read", f"{SPACE}/offers"),
        p("POST", f"{SPACE}/offers", "admin-write", f"{SPACE}/offers", json={"id": "x"}),
        p("DELETE", f"{SPACE}/offers/{{offer_id}}", "admin-write", f"{SPACE}/offers/nothing"),
        p("GET", f"{SPACE}/agreements", "admin-read", f"{SPACE}/agreements"),
        p("POST", f"{SPACE}/agreements", "admin-write", f"{SPACE}/agreements", json={"partner": "Nowhere"}),
        p("GET", f"{SPACE}/agreements/{{agreement_id}}", "admin-read", f"{SPACE}/agreements/urn:uuid:0"),
        p(
            "POST",
            f"{SPACE}/agreements/{{agreement_id}}/revoke",
            "admin-write",
            f"{SPACE}/agreements/urn:uuid:0/revoke",
        ),
        p(
            "POST",
            "/cityos/v1/dataspace/inbox/{agreement_id}",
            "partner",
            "/cityos/v1/dataspace/inbox/urn:uuid:0",
            json={},
        ),
        p("GET", "/dsp/catalog", "partner", "/dsp/catalog"),
        p("POST", "/dsp/catalog/request", "partner", "/dsp/catalog/request", json={"@type": "CatalogRequestMessage"}),
        p("POST", "/dsp/negotiations/request", "partner", "/dsp/negotiations/request", json={}),
        p(
            "POST",
            "/dsp/negotiations/{pid}/agreement/verification",
            "partner",
            "/dsp/negotiations/x/agreement/verification",
            json={},
        ),
        p("POST", "/dsp/negotiations/{pid}/termination", "partner", "/dsp/negotiations/x/termination", json={}),
    ]
    for method in ("DELETE", "GET", "PATCH", "POST", "PUT"):
        for path in (f"{e}//attrs", f"{e}//attrs/", f"{e}//attrs/{{attr}}"):
            table.append(p(method, path, "malformed", path.replace("{attr}", "name"), json=frag))
    table += [p(method, f"{e}/", "malformed", e + "/", json=frag) for method in ("PATCH", "PUT")]
    return table


def route_table(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """(method, path template, handler name) of every route, mounts included; HEAD is left out
    (Starlette answers it with the GET handler, so it has the GET route's decision)."""
    for route in routes:
        if isinstance(route, Mount):
            yield from route_table(list(route.routes), prefix + route.path)
        elif isinstance(route, Route):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    yield method, prefix + route.path, route.name
        else:
            yield "?", prefix + getattr(route, "path", repr(route)), type(route).__name__
