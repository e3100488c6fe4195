"""The identity part of the storage contract (store/identity_base.py), on both back-ends: credentials
round trip, revoke, delete with what the credential owns, a new secret, the version other processes
poll, and on PostgreSQL the "credential" event every other worker hears when a revoke commits.
The same Authenticator runs over both, so a revoke made by another worker (or process) is seen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cityos.audit.events import AuditEvent, NullAudit
from cityos.auth.authenticator import Authenticator
from cityos.auth.credentials import Credentials
from cityos.auth.errors import Unauthorized
from cityos.auth.principal import ADMIN_ROLE, ANONYMOUS, Principal
from cityos.errors import AlreadyExists
from cityos.store.base import StoreEvent
from cityos.store.identity_base import CredentialRow
from test_store_contract import Backend, postgres_backend, postgres_workers, sqlite_backend


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, postgres_skip_reason: str | None) -> Iterator[Backend]:
    if request.param == "sqlite":
        with sqlite_backend(tmp_path / "contract.db") as opened:
            yield opened
    else:
        with postgres_backend(postgres_skip_reason) as opened:
            yield opened


ROOT = Principal(id="cli", kind="cli", tenants=None, roles=frozenset({ADMIN_ROLE}))


def _row(kind: str, ident: str, **extra: object) -> CredentialRow:
    base: dict[str, object] = {"name": ident, "secret_hash": "$argon2id$x", "created_at": "2026-01-01T00:00:00Z"}
    base.update(extra)
    return CredentialRow(kind, ident, **base)  # type: ignore[arg-type]


def test_credentials_round_trip(backend: Backend) -> None:
    store, run = backend.store, backend.run
    key = _row("key", "ck_1", tenants=["", "t1"], roles=["reader"], groups=["g"], expires_at="2999-01-01T00:00:00Z")
    admin = _row("key", "ck_2", tenants=None, roles=["admin"])
    user = _row("user", "alice", roles=["operator"])
    session = _row("session", "cs_1", name="alice", owner="user:alice")
    for row in (key, admin, user, session):
        run(store.add_credential(row))
    with pytest.raises(AlreadyExists):
        run(store.add_credential(_row("key", "ck_1")))
    run(store.add_credential(_row("user", "ck_1")))  # ids are unique per kind
    assert run(store.get_credential("key", "ck_1")) == key
    assert run(store.get_credential("key", "ck_2")) == admin  # tenants None: every tenant
    assert run(store.get_credential("key", "nope")) is None
    assert run(store.list_credentials("key")) == [key, admin]  # creation order
    assert [r.id for r in run(store.list_credentials("user"))] == ["alice", "ck_1"]

    version = run(store.credentials_version())
    assert run(store.revoke_credential("key", "ck_1", "2026-02-01T00:00:00Z"))
    assert not run(store.revoke_credential("key", "ck_1", "2026-03-01T00:00:00Z"))  # revoked already
    assert not run(store.revoke_credential("key", "none", "2026-03-01T00:00:00Z"))
    revoked = run(store.get_credential("key", "ck_1"))
    assert revoked is not None and revoked.revoked_at == "2026-02-01T00:00:00Z"
    after_revoke = run(store.credentials_version())
    assert after_revoke != version

    assert run(store.set_credential_secret("user", "alice", "$argon2id$new"))
    fresh = run(store.get_credential("user", "alice"))
    assert fresh is not None and fresh.secret_hash == "$argon2id$new"
    assert run(store.get_credential("session", "cs_1")) is None  # a new password ends the sessions
    assert not run(store.set_credential_secret("user", "bob", "$argon2id$new"))
    assert run(store.credentials_version()) != after_revoke

    run(store.add_credential(_row("session", "cs_old", name="alice", expires_at="2026-01-01T00:00:00Z")))
    run(store.add_credential(_row("session", "cs_new", name="alice", expires_at="2999-01-01T00:00:00Z")))
    assert run(store.delete_expired_credentials("session", "2026-06-01T00:00:00Z")) == 1
    assert run(store.delete_expired_credentials("key", "2026-06-01T00:00:00Z")) == 0  # another kind
    assert [r.id for r in run(store.list_credentials("session"))] == ["cs_new"]
    run(store.add_credential(_row("session", "cs_2", name="alice", owner="user:alice")))
    assert run(store.delete_credential("user", "alice"))
    assert not run(store.delete_credential("user", "alice"))
    assert run(store.get_credential("session", "cs_2")) is None  # gone with its user
    assert run(store.get_credential("user", "ck_1")) is not None  # others stay


def test_authenticator_over_the_store(backend: Backend) -> None:
    """Real argon2 hashes: the token works, is cached, and a revoke by another process is seen
    within the poll interval although that process cannot tell this one."""
    store, run = backend.store, backend.run
    recorded: list[AuditEvent] = []

    class Sink:
        async def record(self, events: list[AuditEvent]) -> None:
            recorded.extend(events)

    async def scenario() -> None:
        here = Authenticator(store, Sink)
        elsewhere = Credentials(store, NullAudit)  # another process: it cannot reach `here`
        issued = await elsewhere.create_key(ROOT, name="reader", roles=["reader"], tenants=["t1"])
        principal = await here.authenticate(f"Bearer {issued.token}")
        assert principal.id == f"key:{issued.row.id}" and principal.tenants == frozenset({"t1"})
        assert principal.roles == frozenset({"reader"}) and principal.client == "reader"
        assert await here.lookup(principal.id) == principal
        started = time.perf_counter()
        for _ in range(200):
            assert await here.authenticate(f"Bearer {issued.token}") == principal
        assert time.perf_counter() - started < 0.5  # cached: no argon2 per request
        assert await here.authenticate(None) == ANONYMOUS
        wrong = issued.token[:-4] + ("AAAA" if not issued.token.endswith("AAAA") else "BBBB")
        with pytest.raises(Unauthorized):
            await here.authenticate(f"Bearer {wrong}")
        assert recorded[-1].operation == "auth.failed" and recorded[-1].targets == (f"key:{issued.row.id}",)
        assert issued.token.split(".")[1] not in repr(recorded)  # never the secret

        await elsewhere.revoke_key(ROOT, issued.row.id)
        await asyncio.sleep(1.1)  # the poll interval
        with pytest.raises(Unauthorized):
            await here.authenticate(f"Bearer {issued.token}")
        assert await here.lookup(principal.id) is None

    run(scenario())


def test_postgres_revoke_reaches_other_workers_at_once(postgres_skip_reason: str | None) -> None:
    with postgres_workers(postgres_skip_reason) as (loop, (writer, reader)):
        run = loop.run_until_complete
        heard: list[StoreEvent] = []
        reader_auth = Authenticator(reader, NullAudit)

        def follow(event: StoreEvent) -> None:
            heard.append(event)
            if event.kind == "credential":
                reader_auth.forget_event(event.key)

        reader.set_event_listener(follow)
        for worker in (writer, reader):
            run(asyncio.wait_for(worker._events.listening.wait(), 10))
        credentials = Credentials(writer, NullAudit)
        issued = run(credentials.create_key(ROOT, name="k", roles=["reader"]))
        run(reader_auth.authenticate(f"Bearer {issued.token}"))
        reader_auth._polled = time.monotonic() + 3600  # the poll must not be what notices it
        run(credentials.revoke_key(ROOT, issued.row.id))

        async def settle() -> None:
            for _ in range(100):
                if heard:
                    break
                await asyncio.sleep(0.02)

        run(settle())
        assert heard == [StoreEvent("credential", "", f"key:{issued.row.id}")]  # the create sent none
        with pytest.raises(Unauthorized):
            run(reader_auth.authenticate(f"Bearer {issued.token}"))
