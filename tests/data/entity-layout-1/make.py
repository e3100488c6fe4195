"""Make cityos.db and answers.json here with the CityOS whose src/ is on PYTHONPATH (the file of
layout 1, side tables keyed by IRIs and documents as JSON, was made with main at e660699): a small
city, and what the entity, discovery and temporal APIs answered about it. tests/test_entity_layout.py
opens a copy with today's code and asks the same questions.

    PYTHONPATH=<old checkout>/src python tests/data/entity-layout-1/make.py
"""

from __future__ import annotations

import asyncio
import importlib.util
import sqlite3
import sys
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent.parent.parent))  # the checkout, for benchmarks.instructions

from benchmarks.instructions import call  # noqa: E402

from cityos.app import create_app  # noqa: E402
from cityos.settings import Settings  # noqa: E402

_spec = importlib.util.spec_from_file_location("history_make", HERE.parent / "history-layout-0" / "make.py")
assert _spec is not None and _spec.loader is not None
history_make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(history_make)
get = history_make.get  # a GET through the app, its body parsed

API = "/ngsi-ld/v1"
NEAR = "georel=near;maxDistance==3000&geometry=Point&coordinates=[2.1,48.9]"
QUESTIONS = [
    "/entities?type=Station",
    "/entities?type=Station&q=temperature>20",
    "/entities?type=Station,Sensor&q=status==%22ok%22",
    "/entities?q=status~=deg",
    "/entities?q=reading==2.5",
    "/entities?q=temperature==19..22",
    "/entities?q=name==%22Station%203%22..%22Station%205%22",
    "/entities?type=Sensor&attrs=temperature",
    "/entities?attrs=near&type=Station,Sensor",
    "/entities?q=near",
    f"/entities?type=Station&{NEAR}",
    "/entities?type=Station&limit=2&offset=3&options=sysAttrs",
    "/entities/urn:ngsi-ld:Station:1?options=sysAttrs",
    "/types",
    "/types?details=true",
    "/types/Station",
    "/attributes",
    "/attributes?details=true",
    "/attributes/temperature",
    "/temporal/entities/urn:ngsi-ld:Station:1",
]


def station(number: int, kind: str = "Station") -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:{kind}:{number}",
        "type": kind,
        "name": {"type": "Property", "value": f"{kind} {number}"},
        "temperature": {"type": "Property", "value": 15 + number, "observedAt": "2024-03-01T10:00:00Z"},
        "status": {"type": "Property", "value": "ok" if number % 2 else "degraded"},
        "reading": [
            {"type": "Property", "value": number, "datasetId": "urn:ngsi-ld:Dataset:a"},
            {"type": "Property", "value": 2.5},
        ],
        "near": {"type": "Relationship", "object": f"urn:ngsi-ld:Station:{number + 1}"},
        "label": {"type": "LanguageProperty", "languageMap": {"en": "north", "fr": "nord"}},
        "tags": {"type": "Property", "value": ["a", "b", number]},
        "config": {"type": "Property", "value": {"b": 1, "a": [1, 2]}},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [2.1 + number / 100, 48.9]}},
    }


async def main() -> None:
    database = HERE / "cityos.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    app = create_app(Settings(database=str(database), log_level="warning"))
    async with app.router.lifespan_context(app):

        async def send(method: str, path: str, body: Any = None) -> None:
            payload = b"" if body is None else orjson.dumps(body)
            status = await call(app, method, API + path, payload, None)
            assert status < 300, (method, path, status)

        await send("POST", "/entityOperations/upsert", [station(n) for n in range(1, 8)])
        await send("POST", "/entityOperations/upsert", [station(n, "Sensor") for n in range(1, 4)])
        await send("PATCH", "/entities/urn:ngsi-ld:Station:1/attrs/temperature", {"value": 30})
        await send("DELETE", "/entities/urn:ngsi-ld:Station:2/attrs/near")
        await send("DELETE", "/entities/urn:ngsi-ld:Sensor:3")
        answers = {}
        for question in QUESTIONS:
            answers[question] = await get(app, API + question)
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("VACUUM")
    (HERE / "answers.json").write_bytes(orjson.dumps(answers, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    asyncio.run(main())
