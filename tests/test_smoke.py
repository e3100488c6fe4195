"""The real server process answers over HTTP: create, retrieve, update, delete."""

from __future__ import annotations

import httpx

ENTITY = {
    "id": "urn:ngsi-ld:OffStreetParking:smoke",
    "type": "OffStreetParking",
    "availableSpotNumber": {"type": "Property", "value": 121, "observedAt": "2026-11-22T10:00:00Z"},
    "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [-8.60, 41.15]}},
}


def test_server_process_round_trip(server: str) -> None:
    api = server + "/ngsi-ld/v1"
    with httpx.Client(timeout=10) as http:
        created = http.post(api + "/entities", json=ENTITY)
        assert created.status_code == 201, created.text
        assert created.headers["location"] == "/ngsi-ld/v1/entities/urn:ngsi-ld:OffStreetParking:smoke"
        got = http.get(api + "/entities/urn:ngsi-ld:OffStreetParking:smoke", params={"options": "keyValues"})
        assert got.status_code == 200
        assert got.json()["availableSpotNumber"] == 121
        assert got.headers["content-type"] == "application/json"
        assert "ngsi-ld-core-context" in got.headers["link"]
        patched = http.patch(
            api + "/entities/urn:ngsi-ld:OffStreetParking:smoke/attrs/availableSpotNumber",
            json={"value": 120},
        )
        assert patched.status_code == 204
        got = http.get(api + "/entities/urn:ngsi-ld:OffStreetParking:smoke")
        assert got.json()["availableSpotNumber"]["value"] == 120
        assert got.json()["availableSpotNumber"]["observedAt"] == "2026-11-22T10:00:00Z"
        assert http.delete(api + "/entities/urn:ngsi-ld:OffStreetParking:smoke").status_code == 204
        missing = http.get(api + "/entities/urn:ngsi-ld:OffStreetParking:smoke")
        assert missing.status_code == 404
        assert missing.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound"
