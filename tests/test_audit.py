"""The tamper-evident audit trail (docs/security.md, "The audit trail").

- `cityos audit verify` (offline: an export and the public key) passes on a real export and fails on
  every kind of tampering: an edited, deleted, inserted or reordered record, a chain recomputed after
  an edit, records cut from the end, a forged truncation anchor, another deployment's key;
- retention replaces old records with a signed anchor, and what remains still verifies;
- the query API and the access report, admins only, paged, on both back-ends;
- a real server killed with SIGKILL under write load: after a restart every acknowledged write has
  its record and the export verifies;
- PostgreSQL with two workers writing at once: one chain, no fork, no gap.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from backends import cli_env, db_rows, make_key, sqlite_only
from cityos.app import create_app
from cityos.audit.chain import GENESIS, record_hash
from cityos.audit.events import AuditEvent
from cityos.auth.principal import Principal, current_principal
from cityos.cli import main as cli_main
from cityos.pipeline import open_pipeline
from cityos.settings import Settings
from cityos.store import is_postgres
from notify_helpers import BrokerProcess
from server_process import LoggedServer

pytestmark = pytest.mark.slow(seconds=70)

ENTITIES = "/ngsi-ld/v1/entities"
AUDIT = "/cityos/v1/audit"


def entity(number: int) -> dict[str, Any]:
    return {"id": f"urn:ngsi-ld:Thing:{number}", "type": "Thing", "n": {"type": "Property", "value": number}}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cityos", "audit", *args], capture_output=True, text=True, timeout=120, env=cli_env()
    )


def export_and_key(database: str, folder: Path, key: str = "") -> tuple[Path, Path]:
    """`cityos audit export` and `cityos audit pubkey`, as an operator runs them."""
    extra = ["--audit-key", key] if key else []
    export, public = folder / "audit.jsonl", folder / "audit.pub"
    done = cli("export", "--database", database, "-o", str(export), *extra)
    assert done.returncode == 0, done.stderr
    pem = cli("pubkey", "--database", database, *extra)
    assert pem.returncode == 0, pem.stderr
    public.write_text(pem.stdout)
    return export, public


def verify(export: Path, public: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`cityos audit verify`, in-process (it reads only the two files)."""
    code = cli_main(["audit", "verify", str(export), "--public-key", str(public)])
    return code, capsys.readouterr().out


# -- offline verification -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real SQLite database with 12 audited writes (through the write pipeline, as `cityos import`
    writes), its export and public key."""
    folder = tmp_path_factory.mktemp("trail")
    database = str(folder / "city.db")
    with TestClient(create_app(Settings(database=database))) as client:
        for number in range(10):
            assert client.post(ENTITIES, json=entity(number)).status_code == 201
        assert client.patch(f"{ENTITIES}/urn:ngsi-ld:Thing:3/attrs", json={"n": 33}).status_code == 204
        assert client.delete(f"{ENTITIES}/urn:ngsi-ld:Thing:4").status_code == 204
    return export_and_key(database, folder)


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def tampered(trail: tuple[Path, Path], tmp_path: Path, lines: list[bytes]) -> tuple[Path, Path]:
    copy = tmp_path / "tampered.jsonl"
    copy.write_bytes(b"\n".join(lines) + b"\n")
    return copy, trail[1]


def test_a_real_export_verifies(trail: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    lines = lines_of(trail[0])
    records = [orjson.loads(line) for line in lines if b'"checkpoint"' not in line]
    assert [r["operation"] for r in records] == ["entity.create"] * 10 + ["entity.update", "entity.delete"]
    assert records[0]["prev"] == GENESIS and all(r["principal"] == "open" for r in records)
    code, out = verify(*trail, capsys)
    assert code == 0 and out.startswith("OK: 12 records (seq 1-12)") and "signed through seq 12" in out


def _edit(line: bytes, **changes: Any) -> bytes:
    return orjson.dumps({**orjson.loads(line), **changes})


def test_an_edited_record_is_detected(
    trail: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = lines_of(trail[0])
    lines[4] = _edit(lines[4], principal="user:somebody-else")
    code, out = verify(*tampered(trail, tmp_path, lines), capsys)
    assert code == 1 and "seq 5: the content does not match its hash (record edited)" in out


def test_an_edit_with_its_hash_recomputed_is_detected(
    trail: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = lines_of(trail[0])
    record = {**orjson.loads(lines[4]), "targets": ["urn:ngsi-ld:Thing:other"]}
    record["hash"] = record_hash(record)
    lines[4] = orjson.dumps(record)
    code, out = verify(*tampered(trail, tmp_path, lines), capsys)
    assert code == 1 and "seq 6: prev does not match" in out


def test_a_whole_chain_recomputed_after_an_edit_fails_the_signatures(
    trail: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An attacker with the database but without the key rewrites every later hash: the links hold,
    the signed checkpoints do not."""
    lines = lines_of(trail[0])
    records = [orjson.loads(line) for line in lines if b'"checkpoint"' not in line]
    checkpoints = [line for line in lines if b'"checkpoint"' in line]
    records[2]["outcome"] = "denied"
    prev = records[1]["hash"]
    for record in records[2:]:
        record["prev"] = prev
        record["hash"] = prev = record_hash(record)
    code, out = verify(*tampered(trail, tmp_path, [orjson.dumps(r) for r in records] + checkpoints), capsys)
    assert code == 1 and "checkpoint at seq 12: the record's hash differs from the signed one" in out
    assert "record edited" not in out and "link broken" not in out


@pytest.mark.parametrize("where", [0, 5, 11])
def test_a_deleted_record_is_detected(
    trail: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], where: int
) -> None:
    lines = lines_of(trail[0])
    del lines[where]
    code, out = verify(*tampered(trail, tmp_path, lines), capsys)
    assert code == 1 and "TAMPERED" in out
    if where == 11:  # the last one: only the export's closing checkpoint tells
        assert "checkpoint at seq 12: that record is missing" in out
    elif where == 0:  # the first one: the export now starts inside the chain, with nothing to vouch for it
        assert "the export starts at seq 2, neither the chain's first record nor a signed truncation" in out
    else:
        assert f"seq {where + 2} where {where + 1} was expected" in out


def test_an_inserted_record_is_detected(
    trail: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = lines_of(trail[0])
    forged = {**orjson.loads(lines[6]), "seq": 8, "targets": ["urn:ngsi-ld:Thing:forged"], "prev": ""}
    forged["prev"] = orjson.loads(lines[6])["hash"]
    forged["hash"] = record_hash(forged)
    lines.insert(7, orjson.dumps(forged))
    code, out = verify(*tampered(trail, tmp_path, lines), capsys)
    assert code == 1 and "seq 8 where 9 was expected" in out and "seq 8: prev does not match" in out


def test_reordered_records_are_detected(
    trail: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = lines_of(trail[0])
    lines[3], lines[4] = lines[4], lines[3]
    code, out = verify(*tampered(trail, tmp_path, lines), capsys)
    assert code == 1 and "seq 5 where 4 was expected" in out


def test_another_key_does_not_verify(
    trail: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cityos.audit.signing import public_pem

    other = tmp_path / "other.pub"
    other.write_text(public_pem(Ed25519PrivateKey.generate()))
    code, out = verify(trail[0], other, capsys)
    assert code == 1 and "the signature is not valid for this key" in out


def test_the_key_file_is_private(trail: tuple[Path, Path]) -> None:
    key = trail[0].parent / "city.db.audit-key"
    assert key.stat().st_mode & 0o777 == 0o600 and b"PRIVATE KEY" in key.read_bytes()
    assert b"PRIVATE" not in trail[1].read_bytes()


# -- retention -----------------------------------------------------------------------------------------
@sqlite_only
def test_retention_leaves_a_signed_anchor_and_a_verifiable_chain(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(database=db_url, audit_retention_days=30)

    async def scenario() -> int:
        async with open_pipeline(settings) as pipeline:
            store = pipeline.store
            await pipeline.audit.store.append_audit(
                [_old_row(f"k{n}", datetime.now(UTC) - timedelta(days=40 - n)) for n in range(3)]
            )
            await store.append_audit([_old_row("recent", datetime.now(UTC))])
            await pipeline.audit.checkpoint()
            return await pipeline.audit.apply_retention()

    assert asyncio.run(scenario()) == 3
    operations = [row[0] for row in db_rows(db_url, "SELECT operation FROM audit_log ORDER BY seq")]
    assert operations == ["audit.truncate", "key.create", "audit.retention"]
    export, public = export_and_key(db_url, tmp_path)
    code, out = verify(export, public, capsys)
    assert code == 0 and "OK: 3 records (seq 3-5)" in out

    lines = lines_of(export)
    lines[0] = _edit(lines[0], detail={"before": "2000-01-01T00:00:00.000000Z"})  # a forged anchor
    code, out = verify(*tampered((export, public), tmp_path, lines), capsys)
    assert code == 1 and "the truncation record's signature is not valid" in out
    code, out = verify(*tampered((export, public), tmp_path, lines_of(export)[1:]), capsys)
    assert code == 1 and "the export starts at seq 4" in out  # without its anchor it no longer proves its start


def _old_row(target: str, moment: datetime) -> Any:
    from cityos.audit.chain import AuditRow
    from cityos.audit.service import time_key

    return AuditRow("key.create", "", [target], "user:admin", time=time_key(moment))


# -- the query API ---------------------------------------------------------------------------------------
class ActAs:
    """Stands in for the auth middleware (built on another branch): the principal a test names in
    a header becomes current_principal, as the real middleware makes it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        acting = dict(scope.get("headers", [])).get(b"x-test-principal")
        if acting:
            name, _, role = acting.decode().partition(";")
            current_principal.set(Principal(name, "user", None, frozenset({role}) if role else frozenset()))
        await self.app(scope, receive, send)


@pytest.fixture
def audited_client(db_url: str) -> Iterator[TestClient]:
    app = create_app(Settings(database=db_url))
    app.add_middleware(ActAs)
    with TestClient(app, base_url="http://127.0.0.1:7550") as client:
        yield client


def test_query_api_filters_and_pages(audited_client: TestClient) -> None:
    client = audited_client
    for number in range(5):
        assert client.post(ENTITIES, json=entity(number), headers={"x-test-principal": "user:ana"}).status_code == 201
    assert client.delete(f"{ENTITIES}/urn:ngsi-ld:Thing:1").status_code == 204
    found = client.get(AUDIT, params={"entity": "urn:ngsi-ld:Thing:1"}).json()
    assert [(r["operation"], r["principal"]) for r in found] == [
        ("entity.create", "user:ana"),
        ("entity.delete", "open"),
    ]
    by_ana = client.get(AUDIT, params={"principal": "user:ana", "limit": 2})
    assert [r["seq"] for r in by_ana.json()] == [1, 2] and 'rel="next"' in by_ana.headers["Link"]
    following = client.get(by_ana.headers["Link"].split(">")[0].lstrip("<"))
    assert [r["seq"] for r in following.json()] == [3, 4]
    last = client.get(AUDIT, params={"principal": "user:ana", "after": 4})
    assert [r["seq"] for r in last.json()] == [5] and "Link" not in last.headers
    assert client.get(AUDIT, params={"to": "2000-01-01"}).json() == []
    for bad in ({"limit": "0"}, {"limit": "x"}, {"from": "yesterday"}, {"colour": "red"}):
        answer = client.get(AUDIT, params=bad)
        assert answer.status_code == 400 and answer.json()["type"].endswith("BadRequestData"), bad


def test_only_admins_read_the_trail_and_a_denial_is_recorded(audited_client: TestClient) -> None:
    client = audited_client
    denied = client.get(AUDIT, headers={"x-test-principal": "user:eve;reader", "X-Request-Id": "r1"})
    assert denied.status_code == 403 and "admin role" in denied.json()["detail"]
    assert client.get(AUDIT + "/access-report?subject=x", headers={"x-test-principal": "user:eve"}).status_code == 403
    assert client.get(AUDIT, headers={"x-test-principal": "user:root;admin"}).status_code == 200
    records = client.get(AUDIT, params={"operation": "request.denied"}).json()
    assert [(r["principal"], r["outcome"], r["targets"]) for r in records] == [("user:eve", "denied", [AUDIT])] * 2


def test_the_access_report_lists_who_read_a_subjects_data(audited_client: TestClient) -> None:
    client = audited_client
    services = client.app.state.services  # type: ignore[attr-defined]
    reads = [
        AuditEvent("user:officer", "entity.read-personal", "", ("urn:ngsi-ld:Person:7",), detail={"purpose": "fine"}),
        AuditEvent("user:clerk", "entity.read-personal", "", ("urn:ngsi-ld:Person:8",)),
        AuditEvent("user:nurse", "entity.read-personal", "", ("urn:ngsi-ld:Person:7", "urn:ngsi-ld:Person:9")),
    ]
    client.portal.call(services.audit.record, reads)  # type: ignore[union-attr]
    report = client.get(AUDIT + "/access-report", params={"subject": "urn:ngsi-ld:Person:7"}).json()
    assert [(r["principal"], r["purpose"]) for r in report] == [("user:officer", "fine"), ("user:nurse", "")]
    assert client.get(AUDIT + "/access-report").status_code == 400
    assert client.get(AUDIT + "/access-report", params={"subject": "x", "principal": "y"}).status_code == 400


# -- durability and many workers --------------------------------------------------------------------------
def _write_load(base: str, stop: threading.Event, acknowledged: list[str], prefix: str) -> None:
    number = 0
    with httpx.Client(base_url=base, timeout=10) as client:
        while not stop.is_set():
            item = {**entity(number), "id": f"urn:ngsi-ld:Thing:{prefix}-{number}"}
            try:
                if client.post(ENTITIES, json=item).status_code == 201:
                    acknowledged.append(item["id"])
            except httpx.TransportError:
                return
            number += 1


def _chain_is_whole(database: str) -> int:
    """Every record's seq, prev and hash in order from 1; returns the number of records."""
    rows = db_rows(
        database,
        "SELECT seq, time, principal, operation, tenant, targets, outcome, request_id, detail, prev, hash"
        f" FROM {'audit_log' if is_postgres(database) else 'audit_records'} ORDER BY seq",  # SQLite: compact rows
    )
    prev = GENESIS
    for expected, row in enumerate(rows, start=1):
        targets = row[5] if isinstance(row[5], list) else orjson.loads(row[5])
        record = {
            "seq": row[0],
            "time": row[1],
            "principal": row[2],
            "operation": row[3],
            "tenant": row[4],
            "targets": targets,
            "outcome": row[6],
            "request_id": row[7],
            "detail": orjson.loads(row[8]),
            "prev": row[9],
        }
        assert row[0] == expected and row[9] == prev, f"fork or gap at seq {row[0]}"
        assert record_hash(record) == row[10], f"seq {row[0]} does not match its hash"
        prev = row[10]
    return len(rows)


def test_every_acknowledged_write_has_its_record_after_sigkill(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = BrokerProcess(db_url, audit_key=str(tmp_path / "audit.key"))
    broker.start()
    acknowledged: list[str] = []
    stop = threading.Event()
    writers = [threading.Thread(target=_write_load, args=(broker.base, stop, acknowledged, f"w{n}")) for n in range(3)]
    try:
        for writer in writers:
            writer.start()
        time.sleep(3)
        broker.kill()  # SIGKILL while writes are in flight
    finally:
        stop.set()
        for writer in writers:
            writer.join()
        broker.stop()
    assert len(acknowledged) > 20
    broker.start()  # the restart opens (and recovers) the database as a server does
    broker.stop()
    rows = db_rows(db_url, "SELECT targets FROM audit_log WHERE operation = 'entity.create'")
    audited = {(orjson.loads(t) if isinstance(t, str) else t)[0] for (t,) in rows}
    assert set(acknowledged) <= audited, set(acknowledged) - audited
    assert _chain_is_whole(db_url) >= len(acknowledged)
    export, public = export_and_key(db_url, tmp_path, str(tmp_path / "audit.key"))
    code, out = verify(export, public, capsys)
    assert code == 0, out


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_two_workers_write_one_chain(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert is_postgres(db_url)
    key = str(tmp_path / "shared.key")  # both workers race to make it: they must agree on one
    server = LoggedServer(
        tmp_path / "serve.log", "--workers", "2", env={"CITYOS_DATABASE": db_url, "CITYOS_AUDIT_KEY": key}
    )
    server.start()
    acknowledged: list[str] = []
    stop = threading.Event()
    writers = [threading.Thread(target=_write_load, args=(server.base, stop, acknowledged, f"w{n}")) for n in range(4)]
    try:
        for writer in writers:
            writer.start()
        time.sleep(4)
    finally:
        stop.set()
        for writer in writers:
            writer.join()
        server.stop()
    assert len(acknowledged) > 40, server.log()[-2000:]
    records = _chain_is_whole(db_url)
    creates = db_rows(db_url, "SELECT count(*) FROM audit_log WHERE operation = 'entity.create'")[0][0]
    assert creates == len(acknowledged) and records == creates
    export, public = export_and_key(db_url, tmp_path, key)
    code, out = verify(export, public, capsys)
    assert code == 0 and f"OK: {records} records" in out, out
    assert os.stat(key).st_mode & 0o777 == 0o600


@sqlite_only
def test_audit_off_records_no_write_but_still_the_events(db_url: str) -> None:
    with TestClient(create_app(Settings(database=db_url, audit="off"))) as client:
        assert client.post(ENTITIES, json=entity(1)).status_code == 201
        assert client.get(AUDIT).json() == []
        services = client.app.state.services  # type: ignore[attr-defined]
        client.portal.call(services.audit.record, [AuditEvent("user:x", "key.revoke", "", ("k1",))])  # type: ignore[union-attr]
        assert [r["operation"] for r in client.get(AUDIT).json()] == ["key.revoke"]


@sqlite_only
def test_a_running_server_signs_checkpoints_and_one_more_when_it_stops(db_url: str, tmp_path: Path) -> None:
    broker = BrokerProcess(db_url, audit_checkpoint_seconds="0.2")
    broker.start()
    try:
        assert httpx.post(broker.base + ENTITIES, json=entity(1)).status_code == 201
        deadline = time.monotonic() + 10
        while not db_rows(db_url, "SELECT seq FROM audit_checkpoints"):
            assert time.monotonic() < deadline, "no checkpoint was signed"
            time.sleep(0.1)
        assert db_rows(db_url, "SELECT seq FROM audit_checkpoints") == [(1,)]
        assert httpx.post(broker.base + ENTITIES, json=entity(2)).status_code == 201
    finally:
        broker.stop()  # SIGTERM: the closing checkpoint signs the last write at the latest
    assert db_rows(db_url, "SELECT max(seq) FROM audit_checkpoints") == [(2,)]


def test_a_time_range_export_verifies_as_partial(
    trail: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = str(trail[0].parent / "city.db")
    fifth = orjson.loads(lines_of(trail[0])[4])["time"]
    ranged = tmp_path / "range.jsonl"
    done = cli("export", "--database", database, "--from", fifth, "-o", str(ranged))
    assert done.returncode == 0, done.stderr
    assert orjson.loads(lines_of(ranged)[0])["seq"] == 5
    code, out = verify(ranged, trail[1], capsys)
    assert code == 1 and "verify with --partial" in out
    code = cli_main(["audit", "verify", str(ranged), "--public-key", str(trail[1]), "--partial"])
    out = capsys.readouterr().out
    assert code == 0 and "OK: 8 records (seq 5-12) (a partial export" in out
    assert cli("export", "--database", database, "--from", "last week").returncode == 1


@sqlite_only
def test_commands_never_make_a_key(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`cityos import` writes audited records but signs nothing; an export without the key warns,
    and its chain still verifies once the unsigned tail is accepted explicitly."""
    from cityos.entities import update

    async def load() -> None:
        async with open_pipeline(Settings(database=db_url)) as pipeline:
            for number in range(3):
                item = {"id": f"urn:x:{number}", "type": ["T"], "attrs": {}, "createdAt": "x", "modifiedAt": "x"}
                await pipeline.store.mutate("", [(item["id"], update.create(item))], atomic=True)

    asyncio.run(load())
    assert not Path(db_url + ".audit-key").exists()
    export = tmp_path / "audit.jsonl"
    done = cli("export", "--database", db_url, "-o", str(export))
    assert done.returncode == 0 and "no audit key" in done.stderr and not Path(db_url + ".audit-key").exists()
    assert cli("pubkey", "--database", db_url).returncode == 1
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cityos.audit.signing import public_pem

    public = tmp_path / "any.pub"
    public.write_text(public_pem(Ed25519PrivateKey.generate()))
    code, out = verify(export, public, capsys)
    assert code == 1 and "records 1-3 are after the last signed checkpoint" in out
    code = cli_main(["audit", "verify", str(export), "--public-key", str(public), "--allow-unsigned-tail"])
    assert code == 0 and "OK: 3 records" in capsys.readouterr().out


def test_a_malformed_export_is_reported_not_a_traceback(
    trail: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = lines_of(trail[0])
    lines[2] = b"{not json"
    lines[3] = _edit(lines[3], seq="4")
    lines[5] = b"[1, 2]"
    lines.append(b'{"checkpoint": {"seq": "x"}}')
    code, out = verify(*tampered(trail, tmp_path, lines), capsys)
    assert code == 1 and "line 3: not JSON" in out and "line 6: not a JSON object" in out
    assert "a record lacks a member or has the wrong type" in out and "a checkpoint lacks a member" in out
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    code, out = verify(empty, trail[1], capsys)
    assert code == 1 and "the export holds no record" in out
    assert cli_main(["audit", "verify", str(tmp_path / "missing.jsonl"), "--public-key", str(trail[1])]) == 1
    assert cli_main(["audit", "verify", str(empty), "--public-key", str(empty)]) == 1


def test_with_auth_required_records_name_the_key_and_the_request(db_url: str, tmp_path: Path) -> None:
    """The real door (--auth required, API keys made by `cityos keys create`): a write's record names
    the key's principal and the request id; a reader's key may not read the trail (403, recorded)."""

    admin = make_key(db_url, "--name", "ops", "--role", "admin")
    reader = make_key(db_url, "--name", "viewer", "--role", "reader")
    server = LoggedServer(tmp_path / "serve.log", "--auth", "required", env={"CITYOS_DATABASE": db_url})
    server.start()
    try:
        with httpx.Client(base_url=server.base, timeout=10) as http:
            as_admin = {"Authorization": f"Bearer {admin}"}
            made = http.post(ENTITIES, json=entity(1), headers={**as_admin, "X-Request-Id": "req-audit-1"})
            assert made.status_code == 201, made.text
            denied = http.get(AUDIT, headers={"Authorization": f"Bearer {reader}"})
            assert denied.status_code == 403
            assert http.get(AUDIT).status_code == 401  # anonymous: the door says who first
            records = http.get(AUDIT, params={"entity": "urn:ngsi-ld:Thing:1"}, headers=as_admin).json()
            refusals = http.get(AUDIT, params={"operation": "request.denied"}, headers=as_admin).json()
    finally:
        server.stop()
    admin_id, reader_id = admin.split(".")[0], reader.split(".")[0]
    assert [(r["operation"], r["principal"]) for r in records] == [("entity.create", f"key:{admin_id}")]
    assert records[0]["request_id"] and records[0]["request_id"] == made.headers["X-Request-Id"]
    assert [r["principal"] for r in refusals] == [f"key:{reader_id}", "anonymous"]
    assert admin not in server.log() and reader not in server.log()


def test_the_operators_key_commands_are_audited(db_url: str, tmp_path: Path) -> None:
    """`cityos keys create|revoke` change who may do what as much as the admin API does: their
    records (principal "cli") are in the trail that `cityos audit export` writes."""
    token = make_key(db_url, "--name", "ops", "--role", "admin")
    key_id = token.split(".")[0]
    revoked = subprocess.run(
        [sys.executable, "-m", "cityos", "keys", "revoke", key_id, "--database", db_url],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert revoked.returncode == 0, revoked.stderr
    export = tmp_path / "trail.jsonl"
    done = cli("export", "--database", db_url, "-o", str(export))
    assert done.returncode == 0, done.stderr
    records = [orjson.loads(line) for line in export.read_bytes().splitlines() if line.strip()]
    mine = [(r["principal"], r["operation"]) for r in records if key_id in r.get("targets", [])]
    assert mine == [("cli", "key.create"), ("cli", "key.revoke")]
    assert token.split(".")[1] not in export.read_text()  # the secret is never recorded
