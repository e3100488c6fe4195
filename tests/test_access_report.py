"""The data subject's "who accessed my data" view, end to end (issue 14): a real `cityos serve` with
--auth required, keys made by `cityos keys create`, a policy file that marks licence plates as
personal data; the police read a vehicle for a declared purpose, the public reads a parking; the
admin's access report for the vehicle names the police key, the purpose and nobody else."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson

from backends import make_key
from server_process import LoggedServer

ENTITIES = "/ngsi-ld/v1/entities"
REPORT = "/cityos/v1/audit/access-report"
VEHICLE = "urn:ngsi-ld:Vehicle:report-1"
POLICIES = [
    {"id": "plates-are-personal", "personal": {"attrs": ["licensePlate"]}},
    {
        "id": "police-read-vehicles",
        "effect": "allow",
        "principals": {"roles": ["police"]},
        "actions": ["read"],
        "resources": {"types": ["Vehicle"]},
        "conditions": {"purpose": ["enforcement"]},
    },
    {
        "id": "public-reads-parking",
        "effect": "allow",
        "principals": {"anonymous": True},
        "actions": ["read"],
        "resources": {"types": ["OffStreetParking"]},
    },
]


def test_the_access_report_names_who_read_a_subjects_personal_data(db_url: str, tmp_path: Path) -> None:
    policy_file = tmp_path / "policies.json"
    policy_file.write_bytes(orjson.dumps(POLICIES))
    admin = make_key(db_url, "--name", "ops", "--role", "admin")
    police = make_key(db_url, "--name", "patrol", "--role", "police")
    server = LoggedServer(
        tmp_path / "serve.log",
        "--auth", "required", "--policy-file", str(policy_file),
        env={"CITYOS_DATABASE": db_url},
    )  # fmt: skip
    server.start()
    try:
        with httpx.Client(base_url=server.base, timeout=10) as http:
            as_admin = {"Authorization": f"Bearer {admin}"}
            vehicle = {"id": VEHICLE, "type": "Vehicle", "licensePlate": {"type": "Property", "value": "AB-123"}}
            parking = {"id": "urn:ngsi-ld:OffStreetParking:r1", "type": "OffStreetParking"}
            for body in (vehicle, parking):
                assert http.post(ENTITIES, json=body, headers=as_admin).status_code == 201
            as_police = {"Authorization": f"Bearer {police}", "Purpose": "enforcement"}
            read = http.get(f"{ENTITIES}/{VEHICLE}", headers={**as_police, "X-Request-Id": "patrol-42"})
            assert read.status_code == 200 and read.json()["licensePlate"]["value"] == "AB-123"
            assert http.get(f"{ENTITIES}/{VEHICLE}").status_code == 404  # the public cannot see it at all
            assert http.get(ENTITIES, params={"type": "OffStreetParking"}).status_code == 200
            report = http.get(REPORT, params={"subject": VEHICLE}, headers=as_admin)
            refused = http.get(REPORT, params={"subject": VEHICLE}, headers={"Authorization": f"Bearer {police}"})
    finally:
        server.stop()
    assert report.status_code == 200, report.text
    entries = report.json()
    police_id = f"key:{police.split('.')[0]}"
    assert [entry["principal"] for entry in entries] == [police_id], entries  # one read, by the police
    text = orjson.dumps(entries).decode()
    assert "enforcement" in text and "patrol-42" in text  # why, and which request
    assert refused.status_code == 403  # the report itself is for admins only
