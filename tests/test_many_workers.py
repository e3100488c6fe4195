"""Many workers on PostgreSQL under the failures found by probing (issue 13, section 4): real
`cityos serve --workers 2` processes on a fresh schema of the real test server.

- killing only the supervisor (SIGKILL) ends its workers, and a restart on the same port works;
- concurrent batch upserts with overlapping ids in different orders never deadlock into a 500,
  and every write is applied;
- database connections cut by the server (pg_terminate_backend) mid-traffic give 2xx or 503 with
  Retry-After, never a 500, and the server recovers.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backends import db_rows
from server_process import LoggedServer, alive

ENTITIES = "/ngsi-ld/v1/entities"
UPSERT = "/ngsi-ld/v1/entityOperations/upsert"


def children(pid: int) -> list[int]:
    """The processes whose parent is pid (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def two_workers(fresh_postgres: str, tmp_path: Path) -> Iterator[LoggedServer]:
    server = LoggedServer(tmp_path / "serve.log", "--workers", "2", env={"CITYOS_DATABASE": fresh_postgres})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_killing_the_supervisor_ends_its_workers(fresh_postgres: str, tmp_path: Path) -> None:
    server = LoggedServer(tmp_path / "serve.log", "--workers", "2", env={"CITYOS_DATABASE": fresh_postgres})
    server.start()
    assert server.process is not None
    eventually(lambda: len(children(server.process.pid)) >= 2, 30, "two workers running")  # type: ignore[union-attr]
    workers = children(server.process.pid)
    try:
        with httpx.Client(base_url=server.base, timeout=10) as client:  # a kept-alive connection, too
            assert client.post(ENTITIES, json={"id": "urn:ngsi-ld:Thing:1", "type": "Thing"}).status_code == 201
            os.kill(server.process.pid, signal.SIGKILL)  # the supervisor only
            server.process.wait()
            eventually(lambda: not any(alive(pid) for pid in workers), 15, "the workers ending with their supervisor")
        again = LoggedServer(
            tmp_path / "again.log", "--workers", "2", env={"CITYOS_DATABASE": fresh_postgres}, port=server.port
        )
        again.start()
        try:
            assert httpx.get(f"{again.base}{ENTITIES}/urn:ngsi-ld:Thing:1", timeout=10).status_code == 200
        finally:
            again.stop()
    finally:
        for pid in workers:  # orphans this test started (when the fix is missing)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_concurrent_batch_upserts_with_overlapping_ids_never_fail(two_workers: LoggedServer) -> None:
    """Six clients upsert batches of the same 24 ids, each batch in its own random order, through
    both workers: row locks taken in different orders would deadlock (PostgreSQL aborts one of
    the transactions: a 500). Each client writes an attribute of its own, so the last batch of
    each client must be visible on every entity it touched."""
    ids = [f"urn:ngsi-ld:Thing:overlap-{n:02d}" for n in range(24)]
    statuses: Counter[int] = Counter()
    last: dict[tuple[str, int], int] = {}
    lock = threading.Lock()

    def client_run(number: int) -> None:
        chooser = random.Random(number)
        with httpx.Client(base_url=two_workers.base, timeout=30) as client:
            for batch in range(12):
                chosen = chooser.sample(ids, 16)  # overlapping, each in a different order
                body = [
                    {"id": entity_id, "type": "Thing", f"w{number}": {"type": "Property", "value": batch}}
                    for entity_id in chosen
                ]
                response = client.post(UPSERT, params={"options": "update"}, json=body, headers={"Connection": "close"})
                with lock:
                    statuses[response.status_code] += 1
                    if response.status_code in (201, 204):
                        for entity_id in chosen:
                            last[(entity_id, number)] = batch

    threads = [threading.Thread(target=client_run, args=(number,)) for number in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(statuses) <= {201, 204}, (statuses, two_workers.log()[-3000:])
    with httpx.Client(base_url=two_workers.base, timeout=10) as client:
        for (entity_id, number), batch in last.items():
            got = client.get(f"{ENTITIES}/{entity_id}", params={"options": "keyValues"}).json()
            assert got[f"w{number}"] == batch


def test_connections_cut_by_the_database_give_503_or_success_never_500(fresh_postgres: str, tmp_path: Path) -> None:
    """pg_terminate_backend on every connection of the server (found by its application_name),
    again and again, while four clients write batches and read: each answer is a 2xx, or a 503
    with Retry-After; afterwards every request succeeds again."""
    import asyncpg

    from backends import POSTGRES

    name = f"cityos-cut-{os.getpid()}-{random.randrange(10**6)}"
    database = f"{fresh_postgres}&application_name={name}"
    server = LoggedServer(tmp_path / "serve.log", "--workers", "2", env={"CITYOS_DATABASE": database})
    server.start()
    statuses: Counter[int] = Counter()
    without_retry_after: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def record(send: Callable[..., httpx.Response], url: str, **options: Any) -> None:
        try:
            response = send(url, **options)
        except httpx.TransportError:  # a 500 may drop the connection (issue 13, section 2)
            with lock:
                statuses[-1] += 1
            return
        with lock:
            statuses[response.status_code] += 1
            if response.status_code == 503 and "Retry-After" not in response.headers:
                without_retry_after.append(response.text)

    def traffic(number: int) -> None:
        ids = [f"urn:ngsi-ld:Thing:cut-{number}-{n}" for n in range(10)]
        value = 0
        with httpx.Client(base_url=server.base, timeout=30) as client:
            while not stop.is_set():
                value += 1
                body = [{"id": i, "type": "Thing", "v": {"type": "Property", "value": value}} for i in ids]
                record(client.post, UPSERT, json=body)
                record(client.get, f"{ENTITIES}/{ids[value % len(ids)]}")
                record(client.get, ENTITIES, params={"type": "Thing", "q": f"v<{value + 1}", "limit": "20"})

    async def cut(rounds: int) -> int:
        admin = await asyncpg.connect(POSTGRES, timeout=5)
        ended = 0
        try:
            for _ in range(rounds):
                await asyncio.sleep(0.25)
                ended += await admin.fetchval(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = $1 AND pid <> pg_backend_pid()) AS t",
                    name,
                )
        finally:
            await admin.close()
        return ended

    threads = [threading.Thread(target=traffic, args=(number,)) for number in range(4)]
    try:
        with httpx.Client(base_url=server.base, timeout=30) as client:  # every entity read exists
            for number in range(4):
                body = [{"id": f"urn:ngsi-ld:Thing:cut-{number}-{n}", "type": "Thing"} for n in range(10)]
                assert client.post(UPSERT, json=body).status_code in (201, 204)
        for thread in threads:
            thread.start()
        time.sleep(1)
        ended = asyncio.run(cut(24))
        stop.set()
        for thread in threads:
            thread.join()
        assert ended > 10  # connections were really cut, many times
        assert set(statuses) <= {200, 201, 204, 503}, (statuses, server.log()[-3000:])
        assert not without_retry_after
        with httpx.Client(base_url=server.base, timeout=10) as client:  # recovered
            for number in range(10):
                entity = {"id": f"urn:ngsi-ld:Thing:after-{number}", "type": "Thing"}
                assert client.post(ENTITIES, json=entity).status_code == 201
                assert client.get(f"{ENTITIES}/urn:ngsi-ld:Thing:after-{number}").status_code == 200
        assert db_rows(fresh_postgres, "SELECT count(*) FROM entities WHERE id LIKE 'urn:ngsi-ld:Thing:after-%'") == [
            (10,)
        ]
    finally:
        stop.set()
        server.stop()


def test_the_store_runs_a_write_again_after_a_deadlock_or_a_cut_before_commit(fresh_postgres: str) -> None:
    """Store level, on the real database: two transactions that lock two keys in opposite orders
    (PostgreSQL aborts one of them) both complete, the victim run again; a write whose own
    connection is terminated before it commits runs once more and commits; one cut every time is
    DatabaseUnavailable; a read cut once is answered from a fresh connection."""
    import asyncpg

    from cityos.errors import DatabaseUnavailable
    from cityos.store import open_store

    async def scenario() -> None:
        store: Any = open_store(fresh_postgres)
        await store.open()
        try:
            both_hold_one = asyncio.Barrier(2)
            attempts: Counter[str] = Counter()

            def crossing(name: str, first: int, second: int) -> Callable[[Any], Any]:
                async def work(connection: Any) -> str:
                    attempts[name] += 1
                    await connection.execute("SELECT pg_advisory_xact_lock($1)", first)
                    if attempts[name] == 1:
                        await both_hold_one.wait()
                    await connection.execute("SELECT pg_advisory_xact_lock($1)", second)
                    return name

                return work

            done = await asyncio.gather(store._write(crossing("a", 1, 2)), store._write(crossing("b", 2, 1)))
            assert done == ["a", "b"] and sorted(attempts.values()) == [1, 2]  # one deadlock victim, run again

            runs: list[int] = []

            async def cut_once(connection: Any) -> int:
                runs.append(1)
                await connection.execute("INSERT INTO tenants (name) VALUES ('cut-once') ON CONFLICT DO NOTHING")
                if len(runs) == 1:
                    await connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")
                return len(runs)

            assert await store._write(cut_once) == 2
            assert await store.tenant_exists("cut-once")

            async def cut_always(connection: Any) -> None:
                await connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")

            with pytest.raises(DatabaseUnavailable):
                await store._write(cut_always)

            async with store.pool.acquire() as connection:  # an idle pooled connection, cut from outside
                pid = await connection.fetchval("SELECT pg_backend_pid()")
            admin = await asyncpg.connect(fresh_postgres)
            try:
                await admin.execute("SELECT pg_terminate_backend($1)", pid)
            finally:
                await admin.close()
            assert await store.get_entity("", "urn:ngsi-ld:Thing:none") is None
        finally:
            await store.close()

    asyncio.run(scenario())
