"""Which engine evaluates access policies on the hot path (docs/performance.md, "Access policy engine").

The same two policies (the public reads parking without the operator's contracts; the police read
vehicles inside a district) in three engines: Cedar (cedarpy), casbin, and CityOS's compiled
predicates (policy/compiled.py). Measured: the per-request step (read_view) and the per-entity work
over a page of 100 entities (visible + project, i.e. one decision per entity and per attribute).

    python -m benchmarks.policy_engines [--rounds N]

cedarpy and casbin are needed only here (pip install cedarpy casbin); a missing one is skipped.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from cityos.auth.principal import ANONYMOUS, Principal
from cityos.entities.model import NGSI, Entity
from cityos.jsonld.registry import ContextRegistry
from cityos.net import OutboundPolicy
from cityos.policy.compiled import PolicyAuthorizer
from cityos.policy.model import parse_policy

D = "https://uri.etsi.org/ngsi-ld/default-context/"
DISTRICT = [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0], [0.0, 0.0]]
POLICIES = [
    {
        "id": "public",
        "effect": "allow",
        "principals": {"anonymous": True},
        "actions": ["read"],
        "resources": {"types": ["OffStreetParking"], "exceptAttrs": ["contract"]},
    },
    {
        "id": "police",
        "effect": "allow",
        "principals": {"roles": ["police"]},
        "actions": ["read"],
        "resources": {"types": ["Vehicle"], "area": {"type": "Polygon", "coordinates": [DISTRICT]}},
    },
]
POLICE = Principal("key:police", "key", None, frozenset({"police"}))


def page() -> list[Entity]:
    entities: list[Entity] = []
    for n in range(50):
        entities.append(
            {
                "id": f"urn:ngsi-ld:OffStreetParking:{n}",
                "type": [D + "OffStreetParking"],
                "attrs": {
                    D + "availableSpotNumber": [{"value": n}],
                    D + "contract": [{"value": "x"}],
                    D + "name": [{"value": "p"}],
                },
            }
        )
        entities.append(
            {
                "id": f"urn:ngsi-ld:Vehicle:{n}",
                "type": [D + "Vehicle"],
                "attrs": {
                    D + "licensePlate": [{"value": f"P{n}"}],
                    D + "speed": [{"value": n}],
                    NGSI + "location": [
                        {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [n % 20, 5]}}
                    ],
                },
            }
        )
    return entities


def timed(fn: Callable[[], Any], rounds: int) -> float:
    """Microseconds per call (best of 3 runs of `rounds`)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(rounds):
            fn()
        best = min(best, (time.perf_counter() - start) / rounds)
    return best * 1e6


def compiled(rounds: int) -> dict[str, float]:
    expand = ContextRegistry(OutboundPolicy()).core_terms().expand
    engine = PolicyAuthorizer([parse_policy(p, expand) for p in POLICIES])
    entities = page()

    def per_page() -> None:
        for principal in (ANONYMOUS, POLICE):
            view = engine.read_view(principal, "")
            [view.project(e) for e in entities if view.visible(e)]

    return {"read_view": timed(lambda: engine.read_view(POLICE, ""), rounds * 100), "page": timed(per_page, rounds)}


CEDAR = """
permit (principal == User::"anonymous", action == Action::"read", resource is Entity)
  when { resource.etype == "OffStreetParking" };
permit (principal == User::"anonymous", action == Action::"readAttr", resource is Attr)
  when { resource.etype == "OffStreetParking" && resource.name != "contract" };
permit (principal in Role::"police", action in [Action::"read", Action::"readAttr"], resource)
  when { resource.etype == "Vehicle" && resource.x >= 0 && resource.x <= 10 && resource.y >= 0 && resource.y <= 10 };
"""


def cedar(rounds: int) -> dict[str, float] | None:
    try:
        import cedarpy
    except ImportError:
        return None
    entities = page()

    def requests_for(principal: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        requests, store = (
            [],
            [
                {"uid": {"type": "User", "id": "anonymous"}, "attrs": {}, "parents": []},
                {"uid": {"type": "User", "id": "police"}, "attrs": {}, "parents": [{"type": "Role", "id": "police"}]},
                {"uid": {"type": "Role", "id": "police"}, "attrs": {}, "parents": []},
            ],
        )
        for e in entities:
            etype = e["type"][0].rsplit("/", 1)[-1]
            loc = e["attrs"].get(NGSI + "location")
            x, y = loc[0]["value"]["coordinates"] if loc else (-1, -1)
            base = {"etype": etype, "x": int(x), "y": int(y)}
            store.append({"uid": {"type": "Entity", "id": e["id"]}, "attrs": base, "parents": []})
            requests.append(
                {
                    "principal": f'User::"{principal}"',
                    "action": 'Action::"read"',
                    "resource": f'Entity::"{e["id"]}"',
                    "context": {},
                }
            )
            for attr in e["attrs"]:
                uid = f"{e['id']}#{attr}"
                store.append(
                    {
                        "uid": {"type": "Attr", "id": uid},
                        "attrs": {**base, "name": attr.rsplit("/", 1)[-1]},
                        "parents": [],
                    }
                )
                requests.append(
                    {
                        "principal": f'User::"{principal}"',
                        "action": 'Action::"readAttr"',
                        "resource": f'Attr::"{uid}"',
                        "context": {},
                    }
                )
        return requests, store

    prepared = [requests_for("anonymous"), requests_for("police")]

    def per_page() -> None:
        for requests, store in prepared:
            cedarpy.is_authorized_batch(requests, CEDAR, store)

    return {"read_view": 0.0, "page": timed(per_page, max(1, rounds // 10))}


CASBIN_MODEL = """
[request_definition]
r = sub, etype, attr, x, y, act
[policy_definition]
p = sub, etype, attr, area, act
[role_definition]
g = _, _
[policy_effect]
e = some(where (p.eft == allow))
[matchers]
m = g(r.sub, p.sub) && r.etype == p.etype && r.act == p.act && (p.attr == "*" || r.attr != p.attr) \
  && (p.area == "" || inArea(r.x, r.y))
"""


def casbin_engine(rounds: int) -> dict[str, float] | None:
    try:
        import casbin
    except ImportError:
        return None
    model = casbin.Model()
    model.load_model_from_text(CASBIN_MODEL)
    enforcer = casbin.Enforcer(model)
    enforcer.add_function("inArea", lambda x, y: 0 <= x <= 10 and 0 <= y <= 10)
    enforcer.add_policy("anonymous", "OffStreetParking", "contract", "", "read")
    enforcer.add_policy("police", "Vehicle", "*", "district", "read")
    enforcer.add_grouping_policy("key:police", "police")
    entities = page()

    def per_page() -> None:
        for sub in ("anonymous", "key:police"):
            for e in entities:
                etype = e["type"][0].rsplit("/", 1)[-1]
                loc = e["attrs"].get(NGSI + "location")
                x, y = loc[0]["value"]["coordinates"] if loc else (-1, -1)
                if enforcer.enforce(sub, etype, "", x, y, "read"):
                    [a for a in e["attrs"] if enforcer.enforce(sub, etype, a.rsplit("/", 1)[-1], x, y, "read")]

    return {"read_view": 0.0, "page": timed(per_page, max(1, rounds // 10))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    print("engine               read_view (us)   page of 100 x 2 principals (us)")
    for name, run in (("compiled predicates", compiled), ("cedarpy", cedar), ("casbin", casbin_engine)):
        result = run(args.rounds)
        if result is None:
            print(f"{name:20} not installed")
            continue
        print(f"{name:20} {result['read_view']:14.2f}   {result['page']:12.1f}")


if __name__ == "__main__":
    main()
