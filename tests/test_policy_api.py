"""Access policies through a real server (`cityos serve --auth required --policy-file ...`) on both
back-ends: the admin API (versions, history, validation) and the policy file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from backends import make_key
from server_process import LoggedServer

ADMIN = "/cityos/v1/admin/policies"
D = "https://uri.etsi.org/ngsi-ld/default-context/"
DISTRICT = [[[-3.72, 40.40], [-3.68, 40.40], [-3.68, 40.43], [-3.72, 40.43], [-3.72, 40.40]]]
CITY_POLICIES: list[dict[str, Any]] = [
    {
        "id": "operator-writes-parking",
        "effect": "allow",
        "principals": {"roles": ["parking-operator"]},
        "actions": ["read", "create", "update", "delete"],
        "resources": {"types": ["OffStreetParking", "ParkingSpot"]},
    },
    {
        "id": "public-reads-parking",
        "effect": "allow",
        "principals": {"anonymous": True, "authenticated": True},
        "actions": ["read"],
        "resources": {"types": ["OffStreetParking"], "exceptAttrs": ["contract", "operatorContact"]},
    },
    {
        "id": "police-read-plates-in-district",
        "effect": "allow",
        "principals": {"roles": ["police"]},
        "actions": ["read"],
        "resources": {
            "types": ["Vehicle"],
            "attrs": ["licensePlate", "location", "speed"],
            "area": {"type": "Polygon", "coordinates": DISTRICT},
        },
        "conditions": {"purpose": ["enforcement"]},
    },
    {"id": "plates-are-personal", "personal": {"attrs": ["licensePlate"]}},
]


def admin_headers(database: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(database, '--name', 'admin', '--role', 'admin')}"}


class PolicyServer(LoggedServer):
    headers: dict[str, str] = {}


@pytest.fixture(scope="module")
def policy_server(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PolicyServer, Path]]:
    workdir = tmp_path_factory.mktemp("policies")
    policy_file = workdir / "city.yaml"
    policy_file.write_text(yaml.safe_dump({"policies": CITY_POLICIES}))
    server = PolicyServer(
        workdir / "server.log",
        "--auth",
        "required",
        "--policy-file",
        str(policy_file),
        "--log-level",
        "warning",
        env={"CITYOS_DATABASE": module_db_url},
    )
    server.headers = admin_headers(module_db_url)
    server.start()
    try:
        yield server, policy_file
    finally:
        server.stop()


def test_policy_file_is_loaded_and_versioned(policy_server: tuple[PolicyServer, Path]) -> None:
    server, _ = policy_server
    listing = httpx.get(server.base + ADMIN, headers=server.headers).json()
    assert sorted(p["id"] for p in listing["policies"]) == sorted(p["id"] for p in CITY_POLICIES)
    assert listing["version"] >= len(CITY_POLICIES)
    assert all(p["source"] == "file" and p["changedBy"].startswith("file:") for p in listing["policies"])
    one = httpx.get(server.base + ADMIN + "/public-reads-parking", headers=server.headers).json()
    assert one["policy"] == CITY_POLICIES[1] and one["version"] >= 1


def test_admin_api_create_replace_delete_history(policy_server: tuple[PolicyServer, Path]) -> None:
    server, _ = policy_server
    with httpx.Client(base_url=server.base, headers=server.headers) as http:
        before = http.get(ADMIN).json()["version"]
        document = {
            "id": "bus-operator",
            "effect": "allow",
            "principals": {"groups": ["emt"]},
            "actions": ["read", "update"],
            "resources": {"types": ["Bus"], "idPattern": "^urn:ngsi-ld:Bus:emt-"},
        }
        created = http.post(ADMIN, json=document)
        assert created.status_code == 201, created.text
        assert created.headers["location"] == ADMIN + "/bus-operator"
        assert created.json()["version"] == before + 1 and created.json()["policy"] == document
        assert http.post(ADMIN, json=document).status_code == 409
        changed = {**document, "actions": ["read"]}
        replaced = http.put(ADMIN + "/bus-operator", json=changed)
        assert replaced.status_code == 200 and replaced.json()["version"] == before + 2
        assert http.get(ADMIN + "/bus-operator").json()["policy"] == changed
        assert http.put(ADMIN + "/other-id", json=changed).status_code == 400  # id differs from the path
        assert http.delete(ADMIN + "/bus-operator").status_code == 204
        assert http.get(ADMIN + "/bus-operator").status_code == 404
        assert http.delete(ADMIN + "/bus-operator").status_code == 404
        history = http.get(ADMIN + "/bus-operator/history").json()
        assert [(h["version"], h["policy"]) for h in history] == [
            (before + 1, document),
            (before + 2, changed),
            (before + 3, None),
        ]
        assert http.get(ADMIN).json()["version"] == before + 3


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"effect": "allow"},
        {"id": "x", "effect": "allow", "principals": {"roles": ["a"]}, "actions": ["teleport"]},
        {"id": "x", "effect": "allow", "principals": {"roles": ["a"]}, "actions": ["read"], "resources": {"area": 1}},
        {"id": "x", "effect": "allow", "principals": {"roles": ["a"]}, "actions": ["read"], "extra": True},
        {
            "id": "x",
            "effect": "deny",
            "principals": {"roles": ["a"]},
            "actions": ["read"],
            "resources": {"idPattern": "(?=a)"},
        },
    ],
)
def test_admin_api_refuses_bad_policies(policy_server: tuple[PolicyServer, Path], document: Any) -> None:
    server, _ = policy_server
    response = httpx.post(server.base + ADMIN, json=document, headers=server.headers)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert httpx.get(server.base + ADMIN + "/x", headers=server.headers).status_code == 404  # nothing half-applied


def test_policy_file_reload(policy_server: tuple[PolicyServer, Path]) -> None:
    server, policy_file = policy_server
    with httpx.Client(base_url=server.base, headers=server.headers) as http:
        version = http.get(ADMIN).json()["version"]
        assert http.post(ADMIN + "/reload").json()["changed"] == []  # unchanged: no new version
        policy_file.write_text(yaml.safe_dump({"policies": CITY_POLICIES[:2] + CITY_POLICIES[3:]}))
        changed = http.post(ADMIN + "/reload").json()["changed"]
        assert [(c["id"], c["policy"], c["version"]) for c in changed] == [
            ("police-read-plates-in-district", None, version + 1)
        ]
        policy_file.write_text("policies: [{id: broken}]")
        refused = http.post(ADMIN + "/reload")
        assert refused.status_code == 400 and "broken" not in [p["id"] for p in http.get(ADMIN).json()["policies"]]
        policy_file.write_text(yaml.safe_dump({"policies": CITY_POLICIES}))
        assert len(http.post(ADMIN + "/reload").json()["changed"]) == 1


def test_a_bad_policy_file_stops_the_start_with_one_line(tmp_path: Path) -> None:
    policy_file = tmp_path / "bad.yaml"
    policy_file.write_text("policies: [{id: broken, effect: allow}]")
    server = LoggedServer(
        tmp_path / "server.log",
        "--auth",
        "required",
        "--policy-file",
        str(policy_file),
        env={"CITYOS_DATABASE": str(tmp_path / "city.db")},
    )
    server.start(wait=False)
    try:
        assert server.wait(60) != 0
    finally:
        server.stop()
    log = server.log()
    assert "policy 1: principals must name someone" in log and "Traceback" not in log
