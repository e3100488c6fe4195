"""Make cityos.db and answers.json here with the CityOS whose src/ is on PYTHONPATH (the file of
the old history layout was made with main at 05bed84): a small city with history, and what the
temporal API answered about it. tests/test_history_layout.py opens a copy with today's code and
asks the same questions.

    PYTHONPATH=<old checkout>/src python tests/data/history-layout-0/make.py
"""

from __future__ import annotations

import asyncio
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

API = "/ngsi-ld/v1"
QUESTIONS = [
    "/temporal/entities/urn:ngsi-ld:Station:1",
    "/temporal/entities/urn:ngsi-ld:Station:1?options=temporalValues",
    "/temporal/entities/urn:ngsi-ld:Station:1?lastN=2",
    "/temporal/entities?type=Station&timerel=after&timeAt=2020-01-01T00:00:00Z",
    "/temporal/entities?type=Station&timerel=after&timeAt=2020-01-01T00:00:00Z&timeproperty=modifiedAt"
    "&attrs=temperature",
    "/temporal/entities/urn:ngsi-ld:Station:1?options=aggregatedValues&aggrMethods=totalCount,distinctCount,"
    "sum,avg,min,max,stddev&aggrPeriodDuration=P1D",
    "/temporal/entities/urn:ngsi-ld:Station:2",
    "/temporal/entities/urn:ngsi-ld:Station:2?options=sysAttrs",
    "/temporal/entities/urn:ngsi-ld:Station:2?options=aggregatedValues&aggrMethods=min,max,distinctCount"
    "&aggrPeriodDuration=P1Y",
    "/temporal/entities?type=Station&q=temperature>20",
]


def station(number: int, temperature: Any, observed: str) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:Station:{number}",
        "type": "Station",
        "temperature": {"type": "Property", "value": temperature, "observedAt": observed, "unitCode": "CEL"},
        "status": {"type": "Property", "value": "ok"},
        "reading": [
            {"type": "Property", "value": 1, "datasetId": "urn:ngsi-ld:Dataset:a"},
            {"type": "Property", "value": 2.5},
        ],
        "near": {"type": "Relationship", "object": "urn:ngsi-ld:Station:9"},
        "label": {"type": "LanguageProperty", "languageMap": {"en": "north", "fr": "nord"}},
        "config": {"type": "Property", "value": {"b": 1, "a": [1, 2]}},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [2.1, 48.9]}},
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

        await send(
            "POST",
            "/entityOperations/upsert",
            [station(1, 21, "2024-03-01T10:00:00Z"), station(2, 5.5, "2024-03-01T10:00:00.000Z")],
        )
        for hour, value in enumerate((21.5, 22, -0.0, 19, 2**60)):
            at = f"2024-03-0{1 + hour % 2}T1{hour}:00:00Z"
            await send("PATCH", "/entities/urn:ngsi-ld:Station:1/attrs/temperature", {"value": value, "observedAt": at})
        await send("PATCH", "/entities/urn:ngsi-ld:Station:2/attrs/status", {"value": "degraded"})
        await send("DELETE", "/entities/urn:ngsi-ld:Station:2/attrs/reading?datasetId=urn:ngsi-ld:Dataset:a")
        await send("DELETE", "/entities/urn:ngsi-ld:Station:2/attrs/near")
        await send(
            "POST",
            "/temporal/entities/urn:ngsi-ld:Station:2/attrs",
            {"temperature": [{"type": "Property", "value": 7, "observedAt": "2023-12-31T23:59:59.123456Z"}]},
        )
        answers = {}
        for question in QUESTIONS:
            answers[question] = await get(app, API + question)
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("VACUUM")
    (HERE / "answers.json").write_bytes(orjson.dumps(answers, option=orjson.OPT_INDENT_2))


async def get(app: Any, target: str) -> Any:
    """The body of a GET, parsed."""
    path, _, query = target.partition("?")
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def respond(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 1026),
        "scheme": "http",
        "root_path": "",
    }
    await app(scope, receive, respond)
    assert sent[0]["status"] == 200, (target, sent)
    return orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))


if __name__ == "__main__":
    asyncio.run(main())
