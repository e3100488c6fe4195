"""Benchmark entities derived from the Smart Data Models OffStreetParking example (CC BY 4.0, see data/README.md).

A realistic, ten-attribute NGSI-LD entity in normalized form: strings, numbers, arrays, a structured
address, an observedAt timestamp and a GeoProperty. Generated deterministically, so two runs send the
same bodies and the raw-SQLite baseline stores exactly the documents the broker receives.
"""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path
from typing import Any

import orjson

EXAMPLE = Path(__file__).parent / "data" / "OffStreetParking-example-normalized.jsonld"
ENTITY_TYPE = "OffStreetParking"
KEPT = (
    "name",
    "description",
    "address",
    "category",
    "allowedVehicleType",
    "availableSpotNumber",
    "totalSpotNumber",
    "occupancy",
    "maximumParkingDuration",
    "location",
)
# Porto, around the example's own car park: ~12 km x 7 km
LON = (-8.69, -8.55)
LAT = (41.13, 41.19)
STREETS = (
    "Rua de Fernandes Tomas",
    "Rua de Santa Catarina",
    "Avenida dos Aliados",
    "Rua do Almada",
    "Rua de Cedofeita",
)


def entity_id(index: int) -> str:
    return f"urn:ngsi-ld:{ENTITY_TYPE}:bench-{index}"


@cache
def _template() -> bytes:
    """The kept part of the example, as bytes: orjson.loads is a fast deep copy."""
    example: dict[str, Any] = orjson.loads(EXAMPLE.read_bytes())
    return orjson.dumps({"id": example["id"], "type": example["type"], **{name: example[name] for name in KEPT}})


def random_point(rng: random.Random) -> list[float]:
    return [round(rng.uniform(*LON), 6), round(rng.uniform(*LAT), 6)]


def make_entity(index: int, *, id_: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Entity number `index`: the example's shape with values drawn from a generator seeded by the index,
    so entity i is the same document in every scenario, process and run; another `seed` gives the same
    entity other values (a refresh of it)."""
    rng = random.Random(index + (seed << 32))
    entity: dict[str, Any] = orjson.loads(_template())
    total = rng.randrange(50, 600)
    available = rng.randrange(0, total + 1)
    entity["id"] = id_ or entity_id(index)
    entity["name"]["value"] = f"Parque de estacionamento {index}"
    entity["address"]["value"]["streetAddress"] = f"{rng.choice(STREETS)} {rng.randrange(1, 400)}"
    entity["availableSpotNumber"]["value"] = available
    entity["availableSpotNumber"]["observedAt"] = timestamp(rng)
    entity["totalSpotNumber"]["value"] = total
    entity["occupancy"]["value"] = round(1 - available / total, 3)
    entity["location"]["value"]["coordinates"] = random_point(rng)
    return entity


def timestamp(rng: random.Random) -> str:
    return f"2026-11-22T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z"
