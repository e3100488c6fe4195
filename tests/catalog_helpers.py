"""The test city of the open-data tests (tests/test_catalog.py, tests/test_exports.py): a catalogue
file, entities with a short hourly history, and a real `cityos serve` over them."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from backends import cli_env
from notify_helpers import free_port, stop_process, wait_serving

API = "/ngsi-ld/v1"
HOURS = [f"2026-03-01T{h:02d}:00:00Z" for h in range(6)]

CATALOG = """
[catalog]
title = { en = "Test city open data", zh = "测试城市开放数据" }
description = { en = "Datasets of the test city.", zh = "测试城市的数据集。" }
publisher = "Test City"
publisher_url = "https://example.org/test-city"
attribution = "Test City open data team"

[[dataset]]
id = "parking"
type = "OffStreetParking"
title = { en = "Car parks", zh = "停车场" }
description = { en = "Car parks and their free spaces.", zh = "停车场及其空余车位。" }
keywords = { en = ["parking"], zh = ["停车"] }
themes = ["TRAN"]

[[dataset]]
id = "lamps"
type = "Streetlight"
title = { en = "Streetlights", zh = "路灯" }
description = { en = "Every streetlight.", zh = "每盏路灯。" }
keywords = { en = ["streetlight", "lighting"] }
themes = ["ENER"]
group_by = ["status"]

[[dataset]]
id = "defective-lamps"
type = "Streetlight"
q = 'status=="defectiveLamp"'
title = { en = "Defective streetlights" }
description = { en = "Streetlights reported defective." }
keywords = { en = ["streetlight", "maintenance"] }

[[dataset]]
id = "bins"
type = "WasteContainer"
title = { en = "Waste containers" }
description = { en = "Public bins." }
personal = ["licensePlate"]

[[dataset]]
id = "lamps-offer"  # listed while the dataspace offer is published (tests/test_catalog.py)
offer = "lamps-for-partners"
keywords = { en = ["dataspace"] }
themes = ["ENER"]

[[dataset]]
id = "centre"
type = "Building"
area = [10.0, 50.0, 10.1, 50.1]
title = { en = "Buildings in the centre" }
description = { en = "Buildings inside the centre." }
"""


def prop(value: Any, observed: str | None = None) -> dict[str, Any]:
    return {"type": "Property", "value": value, **({"observedAt": observed} if observed else {})}


def point(lon: float, lat: float) -> dict[str, Any]:
    return {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}


def city_entities() -> list[dict[str, Any]]:
    parks = [
        {"id": f"urn:ngsi-ld:OffStreetParking:p{i}", "type": "OffStreetParking", "location": point(*where)}
        | {"name": prop(f"Park {i}"), "availableSpotNumber": prop(10 * i, HOURS[0]), "category": prop(["public"])}
        for i, where in enumerate([(10.01, 50.02), (10.05, 50.07), (10.2, 50.3)], start=1)
    ]
    lamps = [
        {"id": f"urn:ngsi-ld:Streetlight:l{i}", "type": "Streetlight", "location": point(10.0 + i / 100, 50.0)}
        | {"status": prop("defectiveLamp" if i == 7 else "ok"), "powerState": prop("on")}
        for i in range(1, 8)
    ]
    bins = [
        {"id": f"urn:ngsi-ld:WasteContainer:b{i}", "type": "WasteContainer", "location": point(10.03, 50.03 + i / 100)}
        | {"fillingLevel": prop(0.5), "licensePlate": prop(f"PLATE-{i}"), "driverName": prop(f"Driver {i}")}
        for i in range(1, 3)
    ]
    buildings = [
        {"id": "urn:ngsi-ld:Building:in", "type": "Building", "location": point(10.05, 50.05), "name": prop("Hall")},
        {"id": "urn:ngsi-ld:Building:out", "type": "Building", "location": point(11.0, 51.0), "name": prop("Barn")},
    ]
    return parks + lamps + bins + buildings


def load(http: httpx.Client) -> None:
    answer = http.post(f"{API}/entityOperations/upsert", json=city_entities())
    assert answer.status_code in (201, 204), answer.text
    for hour in HOURS[1:]:  # hourly readings: the history a frequency and a time span come from
        for i in (1, 2, 3):
            update = {"availableSpotNumber": prop(10 * i + int(hour[11:13]), hour)}
            done = http.patch(f"{API}/entities/urn:ngsi-ld:OffStreetParking:p{i}/attrs", json=update)
            assert done.status_code == 204, done.text


@dataclass
class Served:
    base: str
    http: httpx.Client
    database: str
    catalog_file: Path


@contextlib.contextmanager
def serve_city(database: str, folder: Path) -> Iterator[Served]:
    """A real server with the test catalogue, the test city written through its API."""
    catalog_file = folder / "catalog.toml"
    catalog_file.write_text(CATALOG, encoding="utf-8")
    port = free_port()
    env = cli_env(CITYOS_DATABASE=database, CITYOS_PORT=str(port), CITYOS_CATALOG_FILE=str(catalog_file))
    log = (folder / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "cityos", "serve", "--log-level", "warning"], env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_serving(process, base, 30, lambda: (folder / "server.log").read_text(errors="replace"))
        with httpx.Client(base_url=base, timeout=30) as http:
            load(http)
            yield Served(base, http, database, catalog_file)
    finally:
        stop_process(process)
        log.close()
