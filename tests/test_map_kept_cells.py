"""mapdata/kept_cells.py on both back-ends: a q-filtered tile's clusters come from counts read once
per view and zoom and followed from each committed change, and stay what the store would count."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.mapdata import kept_cells
from cityos.mapdata.changes import RETOUCH
from cityos.mapdata.tiles import Tile
from cityos.settings import Settings
from cityos.store.cell_key import KEY_ZOOM, cell_key, cell_of, key_of, tile_range
from mvt_decode import decode
from test_map_tiles import BATCH, JSON, cell_counts, inside, parking, tile_of, url

API = "/ngsi-ld/v1"
Q = "availableSpotNumber>100"
TYPE = "OffStreetParking"


def test_key_of_is_cell_ofs_inverse() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        lon, lat = rng.uniform(-180, 180), rng.uniform(-85, 85)
        key = cell_key(lon, lon, lat, lat)
        z = rng.randrange(0, 17)
        level = rng.randrange(0, KEY_ZOOM - z + 1)
        tile = tile_of(lon, lat, z)
        low, high = tile_range(tile.z, tile.x, tile.y)
        assert low <= key < high, (lon, lat, z)
        col, row = cell_of(key, tile.z, tile.x, tile.y, level)
        assert key_of(col, row, tile.z, tile.x, tile.y, level) == key >> (2 * (KEY_ZOOM - z - level))


def _expected(entities: dict[str, dict[str, Any]], tile: Tile) -> list[int]:
    met = [
        e
        for e in entities.values()
        if e["type"] == TYPE and e.get("availableSpotNumber", {}).get("value", 0) > 100 and inside(e, tile)
    ]
    return cell_counts(met, tile)


def _clusters(client: TestClient, tile: Tile) -> list[int]:
    response = client.get(url(tile), params={"type": TYPE, "q": Q})
    assert response.status_code == 200, response.text
    assert response.headers["x-tile-layer"] == "clusters"
    features = decode(response.content)["clusters"]["features"]
    assert {f["properties"]["types"] for f in features} <= {TYPE}
    return sorted(f["properties"]["count"] for f in features)


def test_q_clusters_are_read_once_and_follow_each_committed_change(db_url: str) -> None:
    rng = random.Random(31)
    entities = {p["id"]: p for p in (parking(i * 3, rng) for i in range(300))}
    whole = next(
        t for z in range(12, 0, -1) if all(inside(e, t := tile_of(-8.61, 41.15, z)) for e in entities.values())
    )
    quarter = max(  # the quarter of it holding most
        (Tile(whole.z + 1, 2 * whole.x + dx, 2 * whole.y + dy) for dx in (0, 1) for dy in (0, 1)),
        key=lambda t: sum(inside(e, t) for e in entities.values()),
    )
    settings = Settings(database=db_url, tile_max_features=10, tile_cache_mb=0, tile_q_views=4)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        assert client.post(BATCH, json=list(entities.values()), headers=JSON).status_code == 201
        kept = client.app.state["changes"].kept  # type: ignore[attr-defined]
        time.sleep(RETOUCH + 0.1)  # the load's changes, unfollowed, are RETOUCH old: a read now is kept
        assert _clusters(client, whole) == _expected(entities, whole)
        assert (kept.reads, kept.hits) == (1, 0)
        assert _clusters(client, quarter) == _expected(entities, quarter)  # another zoom: summed, not read
        assert (kept.reads, kept.hits) == (1, 1)
        ids = sorted(entities)
        first, second, third = ids[0], ids[1], ids[2]
        moved = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [-8.6005, 41.1405]}}
        fresh = parking(1001, rng)
        low = {"type": "Property", "value": 7}
        steps: list[tuple[str, str, Any, Any]] = [
            ("PATCH", f"/entities/{first}/attrs", {"availableSpotNumber": {"type": "Property", "value": 5}}, None),
            ("PATCH", f"/entities/{first}/attrs", {"availableSpotNumber": {"type": "Property", "value": 500}}, None),
            ("PATCH", f"/entities/{second}/attrs", {"location": moved}, None),
            ("POST", "/entities", fresh, None),
            ("DELETE", f"/entities/{third}", None, None),
            ("DELETE", f"/entities/{ids[3]}/attrs/availableSpotNumber", None, None),
            ("POST", "/entityOperations/upsert", [{**entities[i], "availableSpotNumber": low} for i in ids[4:9]], None),
        ]
        hits = 1
        for method, path, body, _ in steps:
            answer = client.request(method, API + path, json=body)
            assert answer.status_code < 300, (path, answer.text)
            _apply(entities, method, path, body)
            for tile in (whole, quarter):
                assert _clusters(client, tile) == _expected(entities, tile), (method, path, tile)
                hits += 1
            assert (kept.reads, kept.hits) == (1, hits), (method, path)  # followed, never read again
        assert kept.followed >= len(steps)
        # an entity of two types, one the view's: the store counts it under its first type, which the
        # kept counts cannot tell: the view is given up and read again
        both = {**entities[ids[10]], "id": "urn:ngsi-ld:OffStreetParking:both", "type": [TYPE, "Building"]}
        assert client.post(f"{API}/entities", json=both, headers=JSON).status_code == 201
        time.sleep(RETOUCH + 0.1)
        counted = _clusters(client, whole)
        assert kept.reads == 2
        assert sum(counted) == sum(_expected(entities, whole)) + 1
        # without a q, or deeper than zoom 12: the store counts each tile
        deep = tile_of(-8.61, 41.15, 13)
        client.get(url(deep), params={"type": TYPE, "q": Q})
        client.get(url(whole), params={"type": TYPE})
        assert kept.reads == 2


def _apply(entities: dict[str, dict[str, Any]], method: str, path: str, body: Any) -> None:
    """The test's own model of the store after a step."""
    parts = path.strip("/").split("/")
    if parts[0] == "entityOperations":
        for entity in body:
            entities[entity["id"]] = {**entities.get(entity["id"], {}), **entity}
    elif method == "POST":
        entities[body["id"]] = body
    elif method == "DELETE" and len(parts) == 2:
        del entities[parts[1]]
    elif method == "DELETE":
        del entities[parts[1]][parts[3]]
    else:
        entities[parts[1]] = {**entities[parts[1]], **body}


def test_kept_counts_stay_exact_while_changes_come_during_their_read(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes from another thread while the view is read: the read is held 0.15 s before its
    snapshot is taken and 0.3 s after, so changes commit on both sides of it. On SQLite the
    snapshot is fixed where the followed changes it holds are known (LayoutWatch.fixed): the
    counts are kept, and the changes delivered during the read that the snapshot does not hold
    are counted in (`caught_up`); on PostgreSQL the same, the snapshot known when no change was in
    flight from just before its statement to its answer (LayoutWatch.mark, confirm), the count held
    0.3 s after it. Every tile is exact: after the writes stop, the kept counts equal a fresh
    listing of the matches."""
    import threading

    rng = random.Random(47)
    entities = [parking(i * 3, rng) for i in range(300)]
    tile = tile_of(-8.61, 41.15, 10)
    assert all(inside(e, tile) for e in entities)
    settings = Settings(database=db_url, tile_max_features=10, tile_cache_mb=0, tile_q_views=4)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        assert client.post(BATCH, json=entities, headers=JSON).status_code == 201
        hub = client.app.state["changes"]  # type: ignore[attr-defined]
        kept, store = hub.kept, client.app.state.services.store  # type: ignore[attr-defined]
        original = store.geo_grid

        class Slow:  # SQLite: the read held before and after its snapshot is taken
            def __init__(self, inner: Any) -> None:
                self.inner = inner

            def hold(self, establish: Any) -> bool:  # the store's reading thread
                time.sleep(0.15)
                known: bool = self.inner.hold(establish)
                time.sleep(0.3)
                return known

            def before(self) -> object:
                return self.inner.before()

            def after(self, mark: object) -> bool:
                known: bool = self.inner.after(mark)
                return known

        async def held(tenant: str, query: Any, grid: Any, fixed: Any = None) -> Any:
            return await original(tenant, query, grid, None if fixed is None else Slow(fixed))

        monkeypatch.setattr(store, "geo_grid", held)
        if db_url.startswith("postgresql"):  # PostgreSQL: the count held after the snapshot is taken
            from cityos.store.postgres.grid import PostgresGrid

            counted = PostgresGrid._index_only

            async def later(self: Any, *args: Any) -> Any:
                await asyncio.sleep(0.3)
                return await counted(self, *args)

            monkeypatch.setattr(PostgresGrid, "_index_only", later)
        # a read that overlaps a change in flight (not known) is tried again soon
        monkeypatch.setattr(kept_cells, "FIRST_WAIT", 0.05)
        monkeypatch.setattr(kept_cells, "MAX_WAIT", 0.2)
        time.sleep(RETOUCH + 0.1)
        assert _clusters(client, tile)  # read quietly and kept: the tenant's changes are followed
        assert (kept.reads, kept.caught_up) == (1, 0)
        stop = threading.Event()
        failures: list[str] = []

        def write() -> None:
            writes = random.Random(5)
            while not stop.is_set():
                batch = [
                    {**e, "availableSpotNumber": {"type": "Property", "value": writes.randrange(300)}}
                    for e in writes.sample(entities, 5)
                ]
                answer = client.post(f"{BATCH}?options=update", json=batch, headers=JSON)
                if answer.status_code not in (201, 204):
                    failures.append(answer.text)
                time.sleep(0.01)

        writer = threading.Thread(target=write)
        writer.start()
        try:
            deadline = time.monotonic() + 20
            time.sleep(0.2)
            hub.values.lost()  # as another worker's change would: the kept counts are read again
            while time.monotonic() < deadline and (kept.caught_up == 0 or kept.reads < 2):
                _clusters(client, tile)
            for _ in range(5):
                _clusters(client, tile)
        finally:
            stop.set()
            writer.join(30)
        assert not failures
        time.sleep(RETOUCH + 0.1)
        matches = client.get(f"{API}/entities", params={"type": TYPE, "q": Q, "limit": 1000}).json()
        expected = cell_counts([m for m in matches if inside(m, tile)], tile)
        assert _clusters(client, tile) == expected
        assert _clusters(client, tile) == expected
        # read during the writes, kept, and brought up to date
        assert kept.caught_up > 0 and kept.hits > 0, (kept.reads, kept.hits, kept.caught_up)
