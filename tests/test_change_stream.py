"""GET /cityos/v1/changes against a real `cityos serve` (both back-ends): the events of entity
changes as server-sent events, filtered by type, q and the caller's policy; two PostgreSQL workers;
a client that falls behind is dropped, never slowing writers."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from cityos.jsonld.termmap import TermMap
from cityos.mapdata.changes import ChangeHub, events
from cityos.policy.decision import EVERYTHING
from cityos.store import open_store
from test_access_server import building, started, upsert

CHANGES = "/cityos/v1/changes"
ENTITIES = "/ngsi-ld/v1/entities"
JSON = {"Content-Type": "application/json"}


class Stream:
    """One SSE client on a thread: each event lands in `events` as (kind, data)."""

    def __init__(self, base: str, params: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> None:
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.opened = threading.Event()
        self.status = 0
        self.content_type = ""
        self._client = httpx.Client(base_url=base, timeout=httpx.Timeout(10, read=None))
        self._thread = threading.Thread(target=self._run, args=(params or {}, headers or {}), daemon=True)
        self._thread.start()
        assert self.opened.wait(10)

    def _run(self, params: dict[str, str], headers: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", CHANGES, params=params, headers=headers) as response:
                self.status, self.content_type = response.status_code, response.headers.get("content-type", "")
                self.opened.set()
                kind = ""
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        self.events.put((kind, orjson.loads(line[6:])))
                    elif line.startswith(":"):
                        self.events.put(("comment", line))
        except httpx.HTTPError:
            pass
        finally:
            self.opened.set()

    def next_change(self, timeout: float = 10) -> dict[str, Any]:
        while True:
            kind, data = self.events.get(timeout=timeout)
            if kind in ("change", "dropped"):
                assert kind == "change", data
                return data  # type: ignore[no-any-return]

    def quiet(self, seconds: float = 0.5) -> list[Any]:
        found = []
        try:
            while True:
                kind, data = self.events.get(timeout=seconds)
                if kind == "change":
                    found.append(data)
        except queue.Empty:
            return found

    def close(self) -> None:
        self._client.close()


@pytest.fixture
def streams() -> Iterator[list[Stream]]:
    opened: list[Stream] = []
    yield opened
    for stream in opened:
        stream.close()


def parking(i: int, spots: int) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:OffStreetParking:s{i}",
        "type": "OffStreetParking",
        "availableSpotNumber": {"type": "Property", "value": spots},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [-8.61, 41.15]}},
    }


def test_changes_arrive_filtered_by_type_and_q(server: str, streams: list[Stream]) -> None:
    every = Stream(server, {"type": "OffStreetParking"})
    busy = Stream(server, {"type": "OffStreetParking", "q": "availableSpotNumber<5"})
    streams += [every, busy]
    assert every.status == 200 and every.content_type.startswith("text/event-stream")
    other = {"id": "urn:ngsi-ld:Thing:1", "type": "Thing", "name": {"type": "Property", "value": "x"}}
    assert httpx.post(server + ENTITIES, json=other, headers=JSON).status_code == 201
    assert httpx.post(server + ENTITIES, json=parking(1, 50), headers=JSON).status_code == 201
    event = every.next_change()
    assert event["id"] == "urn:ngsi-ld:OffStreetParking:s1" and event["type"] == "OffStreetParking"
    assert event["attrs"] == {"availableSpotNumber": 50}
    assert event["location"] == {"type": "Point", "coordinates": [-8.61, 41.15]}
    assert event["modifiedAt"].endswith("Z")
    patch = {"availableSpotNumber": {"type": "Property", "value": 3}}
    path = f"{ENTITIES}/urn:ngsi-ld:OffStreetParking:s1/attrs"
    assert httpx.patch(server + path, json=patch, headers=JSON).status_code == 204
    assert every.next_change()["attrs"]["availableSpotNumber"] == 3
    assert busy.next_change()["attrs"]["availableSpotNumber"] == 3  # the first it matches
    assert httpx.delete(server + f"{ENTITIES}/urn:ngsi-ld:OffStreetParking:s1").status_code == 204
    gone = every.next_change()
    assert gone["deleted"] is True and gone["id"] == "urn:ngsi-ld:OffStreetParking:s1"
    assert busy.next_change()["deleted"] is True
    assert every.quiet() == [] and busy.quiet() == []


def test_bad_filters_are_a_400(server: str) -> None:
    for params in ({"q": "(("}, {"type": ";;"}, {"bbox": "1"}):
        response = httpx.get(server + CHANGES, params=params)
        assert response.status_code == 400 and response.json()["status"] == 400


def test_a_restricted_caller_gets_only_what_it_may_read(db_url: str, tmp_path: Path, streams: list[Stream]) -> None:
    with started(db_url, tmp_path) as city:
        planner = Stream(city.base, headers=city.planner.headers)
        admin = Stream(city.base, headers=city.admin.headers)
        streams += [planner, admin]
        assert planner.status == 200
        assert httpx.get(city.base + CHANGES).status_code == 401
        put = httpx.post(city.base + ENTITIES, json=parking(2, 9), headers={**JSON, **city.admin.headers})
        assert put.status_code == 201
        upsert(city, building(name="Tower", height=300))
        seen = planner.next_change()
        assert seen["type"] == "Building" and seen["attrs"] == {"name": "Tower"}  # no height, no parking
        assert {admin.next_change()["type"], admin.next_change()["type"]} == {"OffStreetParking", "Building"}
        assert planner.quiet() == []


def test_two_workers_push_every_change_to_every_client(
    fresh_postgres: str, tmp_path: Path, streams: list[Stream]
) -> None:
    """Connections and writes land on either worker: each client gets every change all the same."""
    with started(fresh_postgres, tmp_path, "--workers", "2") as city:
        clients = [Stream(city.base, {"type": "Building"}, headers=city.admin.headers) for _ in range(4)]
        streams += clients
        for value in range(10):
            upsert(city, building(name=f"Tower {value}", height=value))
        for client in clients:
            names = [client.next_change(timeout=15)["attrs"]["name"] for _ in range(10)]
            assert sorted(names) == sorted(f"Tower {v}" for v in range(10))


def test_too_many_clients_is_a_503(db_url: str, tmp_path: Path, streams: list[Stream]) -> None:
    from server_process import LoggedServer

    server = LoggedServer(tmp_path / "server.log", env={"CITYOS_DATABASE": db_url, "CITYOS_CHANGES_MAX_CLIENTS": "1"})
    server.start()
    try:
        streams.append(Stream(server.base))
        refused = httpx.get(server.base + CHANGES)
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert refused.json()["type"] == "urn:cityos:errors:TooManyClients"
    finally:
        server.stop()


def test_a_client_that_falls_behind_is_dropped_without_slowing_writers(tmp_path: Path) -> None:
    async def run() -> list[bytes]:
        store = open_store(str(tmp_path / "city.db"))
        await store.open()
        try:
            hub = ChangeHub(store, max_clients=5, queue_size=3, shared=False)
            await hub.start()
            client = hub.client("", lambda entity: True, EVERYTHING, TermMap())
            stream = events(client, hub, keepalive=30)
            first = await anext(stream)  # connected
            for i in range(10):  # the client reads nothing meanwhile
                hub.publish("", None, {"id": f"urn:x:{i}", "type": ["https://x/T"], "attrs": {}})
            assert client.dropped and client.queue.qsize() == 3
            rest = [chunk async for chunk in stream]
            assert not hub.clients
            await hub.stop()
            return [first, *rest]
        finally:
            await store.close()

    chunks = asyncio.run(run())
    assert chunks[-1].startswith(b"event: dropped\n")
    assert len(chunks) == 2  # what was queued is not sent after the drop: the client reloads anyway
