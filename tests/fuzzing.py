"""A seeded request generator for tests/test_fuzz.py: every route of the app's route table, with
path values, query parameters, headers and bodies drawn from valid templates and mutated towards
what broke the server before (huge integers, deep nesting, objects where strings belong, broken
URLs, control characters). Deterministic for a given seed."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

from starlette.routing import Route

BASE = "/ngsi-ld/v1"
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.9.jsonld"
TENANTS = (None, None, None, "fuzzb")  # most requests in the default tenant
IDS = ("urn:ngsi-ld:Fuzz:1", "urn:ngsi-ld:Fuzz:2", "urn:ngsi-ld:FuzzB:1", "urn:ngsi-ld:Fuzz:gone")


UNKNOWN_PARAM = re.compile(r"unknown query parameter '([^']*)'")
DEEP_MARK = "#deep#"
DEEP_RE = re.compile(f'"{DEEP_MARK}(\\d+){DEEP_MARK}"')


def deep(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value] if levels % 2 else {"a": value}
    return value


NASTY: tuple[Any, ...] = (
    None,
    True,
    0,
    -1,
    1.5,
    2**63,
    -(2**63) - 1,
    10**30,
    1e308,
    "",
    " ",
    "\x00",
    "a\nb",
    "x" * 3000,
    "urn:ngsi-ld:Fuzz:1",
    "http://[::1",
    "http://example.org:99999",
    "*",
    "((",
    "2024-13-45T99:99:99Z",
    "2024-01-01T00:00:00Z",
    {},
    [],
    {"type": {}},
    {"type": []},
    {"value": {}},
    {"type": "Property"},
    {"type": "Relationship", "object": {}},
    {"type": "GeoProperty", "value": {"type": {}}},
    {"type": "Point", "coordinates": [[[]]]},
    {"@context": {}},
    [[[]]],
    "é\u2028\ud7ff",
)
NUMBERS = ("", "-1", "0", "1", "2", "3", "20", "1001", "9007199254740992", "9223372036854775808", "1e999", "abc")
WORDS = (
    "",
    "*",
    "Fuzz",
    "Fuzz,FuzzB",
    "temperature",
    "name,temperature",
    "urn:ngsi-ld:Fuzz:1",
    "urn:ngsi-ld:Fuzz:1,urn:ngsi-ld:Fuzz:2",
    "https://example.org/x",
    "true",
    "false",
    "x" * 2000,
    "a\x00b",
    "%",
    "é",
    "((((((((((",
    "@none",
)
PARAM_VALUES: dict[str, tuple[str, ...]] = {
    "limit": NUMBERS,
    "offset": NUMBERS,
    "lastN": NUMBERS,
    "joinLevel": NUMBERS,
    "entityMapLifetime": NUMBERS,
    "q": (
        "temperature>20",
        "temperature==9223372036854775808",
        "temperature==99999999999999999999999999",
        "temperature<1e999",
        "name~=(a+)+$",
        "name~=(?R)",
        "(" * 300 + "a==1" + ")" * 300,
        "a.b.c.d.e==1",
        "ref{x}.y==1",
        "temperature==1..2",
        "temperature=='x','y'",
        "a==",
        ";|",
    ),
    "georel": ("near;maxDistance==1000", "near;minDistance==-1", "within", "intersects", "equals", "bogus", "near"),
    "geometry": ("Point", "Polygon", "LineString", "Bogus", ""),
    "coordinates": ("[8,49]", "[[8,49],[9,50]]", "[[[8,49],[9,49],[9,50],[8,49]]]", "[999,999]", "[[[[", "[]", "x"),
    "geoproperty": ("location", "name", ""),
    "options": (
        "keyValues",
        "sysAttrs",
        "count",
        "concise",
        "normalized",
        "temporalValues",
        "bogus",
        "keyValues,sysAttrs",
    ),
    "format": ("keyValues", "simplified", "normalized", "concise", "temporalValues", "bogus"),
    "timerel": ("before", "after", "between", "bogus"),
    "timeAt": ("2024-01-01T00:00:00Z", "2024-13-01T00:00:00Z", "9999-12-31T23:59:59Z", "x"),
    "endTimeAt": ("2030-01-01T00:00:00Z", "x"),
    "timeproperty": ("observedAt", "modifiedAt", "bogus"),
    "aggrMethods": ("max,min", "sum", "bogus", ""),
    "aggrPeriodDuration": ("P1D", "PT0S", "P99999999999Y", "PT0.0000001S", "x"),
    "join": ("inline", "flat", "@none", "bogus"),
    "orderBy": ("temperature", "id", "type;desc", "!", ""),
    "count": ("true", "false", "x"),
    "local": ("true", "false", "x"),
    "k": ("key1", "", "a\nb"),
    "i": ("dev1", "", "../x"),
}
GENERIC_PARAMS = ("type", "id", "idPattern", "attrs", "pick", "omit", "scopeQ", "csf", "lang", "datasetId", "entityMap")
PARAM_NAMES = (*PARAM_VALUES, *GENERIC_PARAMS, "deleteAll", "details", "noOverwrite", "t", "bogus")
PATH_VALUES: dict[str, tuple[str, ...]] = {
    "entity_id": (*IDS, "notauri", "urn:" + "a" * 3000, "urn:x:%00"),
    "attr": ("temperature", "name", "location", "ref", "nope", "@id", "a b"),
    "subscription_id": ("urn:ngsi-ld:Subscription:fuzz", "urn:x:none", "x"),
    "registration_id": ("urn:ngsi-ld:ContextSourceRegistration:fuzz", "urn:x:none", "x"),
    "map_id": ("urn:x:none", "x"),
    "context_id": ("urn:x:none", "x", CORE),
    "device_id": ("dev1", "nope", "a%0Ab"),
    "name": ("Fuzz", "temperature", "https://example.org/x", "nope"),
}


def entity(entity_id: str = "urn:ngsi-ld:Fuzz:1", kind: str = "Fuzz") -> dict[str, Any]:
    return {
        "id": entity_id,
        "type": kind,
        "temperature": {"type": "Property", "value": 21.5, "observedAt": "2024-01-01T00:00:00Z"},
        "name": {"type": "Property", "value": "first"},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [8.4, 49.0]}},
        "ref": {"type": "Relationship", "object": "urn:ngsi-ld:Fuzz:2"},
    }


def subscription() -> dict[str, Any]:
    return {
        "id": "urn:ngsi-ld:Subscription:fuzz",
        "type": "Subscription",
        "entities": [{"type": "Fuzz"}],
        "watchedAttributes": ["temperature"],
        "q": "temperature>0",
        "notification": {"endpoint": {"uri": "http://fuzz.invalid/notify"}, "format": "normalized"},
    }


def registration() -> dict[str, Any]:
    return {
        "id": "urn:ngsi-ld:ContextSourceRegistration:fuzz",
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "Elsewhere"}]}],
        "endpoint": "http://fuzz.invalid:8080",
    }


def template(method: str, path: str) -> Any:
    """A valid body for the route, the starting point of mutation (None: no body)."""
    if method in ("GET", "HEAD", "DELETE"):
        return None
    if path.endswith("/entityOperations/delete"):
        return list(IDS[:2])
    if path.endswith("/entityOperations/query"):
        return {"type": "Query", "entities": [{"type": "Fuzz"}], "q": "temperature>1"}
    if "/entityOperations/" in path:
        return [entity(), entity("urn:ngsi-ld:Fuzz:3")]
    if "{attr}" in path:
        return {"type": "Property", "value": 5}
    if path.endswith("/attrs") or path.endswith("/attrs/") or (method == "PATCH" and "entity_id" in path):
        return {"temperature": {"type": "Property", "value": 22}, "extra": {"type": "Property", "value": [1, {"a": 2}]}}
    if "/entities" in path:
        return entity()
    if "subscriptions" in path.lower():  # entity and context source registration subscriptions
        return subscription() if method == "POST" else {"q": "temperature>5"}
    if "csourceRegistrations" in path:
        return registration() if method == "POST" else {"endpoint": "http://fuzz.invalid:9090"}
    if "jsonldContexts" in path:
        return {"@context": {"fuzz": "https://example.org/fuzz#"}}
    if "entityMaps" in path:
        return {"expiresAt": "2099-01-01T00:00:00Z"}
    if path.endswith("/iot/services"):
        return {"services": [{"apikey": "key1", "entity_type": "Fuzz", "resource": "/iot/d"}]}
    if path.endswith("/iot/devices"):
        return {"devices": [{"device_id": "dev1", "entity_name": "urn:ngsi-ld:Fuzz:dev1", "entity_type": "Fuzz"}]}
    if path.startswith("/iot/"):
        return {"t": 1, "h": "x"}
    return {}


@dataclass
class Request:
    method: str
    path: str
    params: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    route: tuple[str, str] | None = None  # (method, path template) it was drawn from

    def describe(self) -> dict[str, Any]:
        """The case as a corpus file holds it (tests/data/fuzz-corpus)."""
        body = None if self.body is None else self.body.decode("utf-8", "replace")
        return {"method": self.method, "path": self.path, "params": self.params, "headers": self.headers, "body": body}


# routes whose answer has no end of its own (server-sent events, mapdata/changes.py): asked with `duration`
ENDLESS = {("GET", "/cityos/v1/changes")}


class Generator:
    def __init__(self, seed: int, routes: list[Route]) -> None:
        self.rng = random.Random(seed)
        # every (method, path template) of the route table; HEAD is GET's twin, and the routes that
        # exist for a trailing slash or an empty id (`/entities//attrs`) are drawn less often
        every = sorted({(m, r.path) for r in routes for m in (r.methods or ()) if m != "HEAD"}, key=lambda i: i[::-1])
        self.twins = [item for item in every if "//" in item[1] or item[1].endswith("/")]
        self.routes = [item for item in every if item not in self.twins]
        self.unknown: dict[tuple[str, str], set[str]] = {}  # parameters a route said it does not know

    def nasty(self) -> Any:
        roll = self.rng.random()
        if roll < 0.05:
            return deep(self.rng.choice((65, 70, 200)))
        if roll < 0.1:  # spelled out when the body is written: json.dumps itself recurses
            return f"{DEEP_MARK}{self.rng.choice((300, 600, 1100))}{DEEP_MARK}"
        return self.rng.choice(NASTY)

    def mutate(self, value: Any, depth: int = 0) -> Any:
        """`value` with one node replaced, removed or added, chosen at random."""
        rng = self.rng
        if depth > 6 or not isinstance(value, (dict, list)) or not value or rng.random() < 0.25:
            return self.nasty()
        if isinstance(value, dict):
            out = dict(value)
            key = rng.choice(list(out))
            action = rng.random()
            if action < 0.15:
                del out[key]
            elif action < 0.3:
                out[rng.choice(("type", "value", "object", "@context", "id", "x", "observedAt", "datasetId"))] = (
                    self.nasty()
                )
            else:
                out[key] = self.mutate(out[key], depth + 1)
            return out
        items = list(value)
        index = rng.randrange(len(items))
        items[index] = self.mutate(items[index], depth + 1)
        return items

    def path(self, template: str) -> str:
        def fill(match: re.Match[str]) -> str:
            name = match.group(1).split(":")[0]
            if name == "rest":
                entity_id = self.rng.choice(PATH_VALUES["entity_id"])
                attr = self.rng.choice(PATH_VALUES["attr"])
                return self.rng.choice((entity_id, f"{entity_id}/attrs", f"{entity_id}/attrs/{attr}", f"{entity_id}/x"))
            return self.rng.choice(PATH_VALUES.get(name, ("x",)))

        return re.sub(r"\{([^}]+)\}", fill, template)

    def params(self, route: tuple[str, str]) -> list[tuple[str, str]]:
        unknown = self.unknown.get(route, set())
        known = [name for name in PARAM_NAMES if name not in unknown]
        if not known or self.rng.random() < 0.1:  # now and then one it does not know, too
            known = list(PARAM_NAMES)
        out = []
        for _ in range(self.rng.choice((0, 0, 0, 1, 1, 2, 3))):
            name = self.rng.choice(known)
            values = PARAM_VALUES.get(name, WORDS)
            out.append((name, self.rng.choice(values)))
        if "type" not in unknown and self.rng.random() < 0.5:  # most queries need a type to get further
            out.append(("type", self.rng.choice(("Fuzz", "Fuzz,FuzzB", "*", "FuzzB"))))
        return out

    def learn(self, request: Request, status: int, detail: str) -> None:
        """A 400 "unknown query parameter 'x'": draw x less often for that route from now on."""
        found = UNKNOWN_PARAM.search(detail) if status == 400 else None
        if found is not None and request.route is not None:
            self.unknown.setdefault(request.route, set()).add(found.group(1))

    def request(self) -> Request:
        rng = self.rng
        route = rng.choice(self.twins if rng.random() < 0.04 else self.routes)
        method, template_path = route
        request = Request(method, self.path(template_path), self.params(route), route=route)
        if route in ENDLESS:  # an event stream answers until the client leaves: it is asked to end
            request.params = [(k, v) for k, v in request.params if k != "duration"] + [("duration", "0.2")]
        tenant = rng.choice(TENANTS)
        if tenant is not None:
            request.headers["NGSILD-Tenant"] = tenant
        body = template(method, template_path)
        if body is None and method in ("POST", "PATCH", "PUT"):
            body = {}
        if body is not None:
            for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
                body = self.mutate(body)
            roll = rng.random()
            if roll < 0.08 and isinstance(body, dict):
                request.headers["Content-Type"] = "application/ld+json"
                body = {**body, "@context": rng.choice((CORE, [CORE], {}, 5))}
            elif roll < 0.12:
                request.headers["Content-Type"] = rng.choice(("text/plain", "application/merge-patch+json", "x/y"))
            else:
                request.headers["Content-Type"] = "application/json"
            text = json.dumps(body, ensure_ascii=rng.random() < 0.5)  # stdlib: big ints, NaN-free
            text = DEEP_RE.sub(lambda m: "[" * int(m.group(1)) + "0" + "]" * int(m.group(1)), text)
            if rng.random() < 0.05:
                text = text[: rng.randrange(len(text) + 1)]  # cut short: not JSON any more
            request.body = text.encode("utf-8", "surrogatepass")
        if rng.random() < 0.05:
            request.headers["Link"] = rng.choice(
                (
                    f'<{CORE}>; rel="http://www.w3.org/ns/json-ld#context"',
                    "<>;",
                    '<x>; rel="http://www.w3.org/ns/json-ld#context"',
                )
            )
        if rng.random() < 0.05:
            request.headers["Accept"] = rng.choice(("application/geo+json", "application/ld+json", "text/csv", "*/*"))
        return request
