"""From an Authorization header to a Principal, fast.

A token is verified against its slow hash once; the outcome (the principal, or a refusal) is kept in
a bounded in-memory cache keyed by a MAC of the whole Authorization header under a per-process random
key (keyed BLAKE2b: a third of HMAC-SHA256's cost, and every authenticated request pays it), so the
cache never holds a secret and a memory dump does not yield one. A cached header is answered before it
is even parsed. Entries go:
- at once when this process revokes or deletes the credential (Credentials calls `forget`);
- at once when another worker does, on PostgreSQL (the "credential" StoreEvent, app.py);
- within POLL_SECONDS when another process does (`cityos keys revoke` on the SQLite file of a
  running server): the store's credentials version is read at most once per POLL_SECONDS;
- after CACHE_SECONDS anyway, and at the credential's own expiry, checked on every hit.
Slow verifications run in a thread, a few at a time, and one per token however many requests
bring it at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cityos.audit.events import AuditEvent, AuditSink
from cityos.auth.credentials import is_active, principal_of
from cityos.auth.errors import Unauthorized
from cityos.auth.hashing import epoch_of, split_token, verify_secret
from cityos.auth.principal import ANONYMOUS, Principal, current_request_id
from cityos.store.identity_base import CredentialRow, IdentityStore

log = logging.getLogger("cityos.auth")
CACHE_SECONDS = 300.0  # a verified token is re-verified at the latest after this
FAILURE_SECONDS = 5.0  # a refused token is refused from the cache for this long
POLL_SECONDS = 1.0  # how often the store's credentials version is read
MAX_ENTRIES = 20_000
SLOW_CHECKS = 2  # argon2 verifications at once (each takes a core for tens of milliseconds)

# a JWT verifier (auth/oidc.py): the principal of a valid token and until when (epoch seconds) it
# stays valid; Unauthorized otherwise
JwtVerifier = Callable[[str], Awaitable[tuple[Principal, float | None]]]


@dataclass(slots=True)
class _Entry:
    principal: Principal | None  # None: refused
    credential: str  # "key:<id>", "user:<name>", "oidc:..." (what `forget` names)
    expires: float | None  # epoch seconds: the credential's own expiry
    until: float  # monotonic: when the entry is stale


class Authenticator:
    """Resolves credentials to principals; also the PrincipalDirectory of auth required."""

    def __init__(
        self,
        store: IdentityStore,
        audit: Callable[[], AuditSink],
        *,
        jwt: JwtVerifier | None = None,
    ) -> None:
        self.store = store
        self._audit = audit
        self.jwt = jwt
        self._pepper = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future[_Entry]] = {}
        self._slow = asyncio.Semaphore(SLOW_CHECKS)
        self._version: int | None = None
        self._polled = 0.0
        self._directory: dict[str, tuple[Principal | None, float]] = {}

    # -- invalidation --------------------------------------------------------------------------
    def forget(self, credential: str = "") -> None:
        """Drop what the cache holds for a credential ("key:<id>", "user:<name>"; "" drops all)."""
        if not credential:
            self._cache.clear()
            self._directory.clear()
            return
        stale = [digest for digest, entry in self._cache.items() if entry.credential == credential]
        for digest in stale:
            del self._cache[digest]
        self._directory.pop(credential, None)

    def forget_tokens(self) -> None:
        """Drop every cached OpenID Connect token (the issuer removed a signing key)."""
        for digest in [d for d, entry in self._cache.items() if entry.credential.startswith("oidc:")]:
            del self._cache[digest]

    def forget_event(self, key: str) -> None:
        """A "credential" StoreEvent's key ("<kind>:<id>"): a session's user is named by the session
        row, so any session change drops the cached sessions by their own id."""
        kind, _, ident = key.partition(":")
        self.forget(f"{kind}:{ident}" if kind in ("key", "user") else "")

    async def _poll(self) -> None:
        """Another process (the CLI on a shared SQLite file) may have revoked something."""
        now = time.monotonic()
        if now - self._polled < POLL_SECONDS:
            return
        self._polled = now
        version = await self.store.credentials_version()
        if self._version is not None and version != self._version:
            self.forget()
        self._version = version

    # -- the door ------------------------------------------------------------------------------
    def _digest(self, authorization: bytes) -> bytes:
        """The cache key of a header: a MAC under the process's random key (never the secret)."""
        return hashlib.blake2b(authorization, key=self._pepper, digest_size=32).digest()

    def cached(self, authorization: bytes) -> Principal | None:
        """The principal of a header seen and verified before, without a coroutine (the door's fast
        path: most requests); None when authenticate() must decide (also when a poll is due)."""
        if time.monotonic() - self._polled >= POLL_SECONDS:
            return None
        entry = self._fresh(self._digest(authorization))
        return None if entry is None else entry.principal

    async def authenticate(self, authorization: str | bytes | None) -> Principal:
        """The principal of an Authorization header (as sent: bytes, or text): ANONYMOUS without
        one, Unauthorized for anything that does not prove a valid credential."""
        if authorization is None:
            return ANONYMOUS
        if time.monotonic() - self._polled >= POLL_SECONDS:
            await self._poll()
        digest = self._digest(authorization.encode() if isinstance(authorization, str) else authorization)
        entry = self._fresh(digest)
        if entry is None:
            text = authorization if isinstance(authorization, str) else authorization.decode("latin-1")
            scheme, _, value = text.strip().partition(" ")
            scheme = scheme.lower()
            value = value.strip()
            if scheme not in ("bearer", "basic") or not value:
                await self._failed("unsupported authorization scheme", "")
                raise Unauthorized(token_given=True)
            entry = await self._verify_once(digest, scheme, value)
        if entry.principal is None:
            raise Unauthorized(token_given=True)
        return entry.principal

    def _fresh(self, digest: bytes) -> _Entry | None:
        entry = self._cache.get(digest)
        if entry is None:
            return None
        if time.monotonic() >= entry.until or (entry.expires is not None and time.time() >= entry.expires):
            del self._cache[digest]
            return None
        return entry

    async def _verify_once(self, digest: bytes, scheme: str, value: str) -> _Entry:
        """One verification per token however many requests bring it at once."""
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            entry = await self._verify(scheme, value)
            self._cache[digest] = entry
            if len(self._cache) > MAX_ENTRIES:
                self._cache.popitem(last=False)
            future.set_result(entry)
            return entry
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._inflight[digest]

    async def _verify(self, scheme: str, value: str) -> _Entry:
        now = time.monotonic()
        if scheme == "basic":
            return await self._verify_password(value, now)
        parts = split_token(value)
        if parts is not None:
            kind = "key" if parts[0].startswith("ck_") else "session"
            row = await self.store.get_credential(kind, parts[0])
            return await self._check(row, parts[1], f"{kind}:{parts[0]}", now)
        if self.jwt is not None and value.count(".") == 2:
            try:
                principal, expires = await self.jwt(value)
            except Unauthorized as refused:
                await self._failed(refused.detail or "invalid token", "")
                return _Entry(None, "", None, now + FAILURE_SECONDS)
            return _Entry(principal, principal.id, expires, now + CACHE_SECONDS)
        await self._failed("malformed token", "")
        return _Entry(None, "", None, now + FAILURE_SECONDS)

    async def _verify_password(self, value: str, now: float) -> _Entry:
        try:
            name, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            await self._failed("malformed basic credentials", "")
            return _Entry(None, "", None, now + FAILURE_SECONDS)
        row = await self.store.get_credential("user", name) if name else None
        return await self._check(row, password, f"user:{name}", now)

    async def _check(self, row: CredentialRow | None, secret: str, target: str, now: float) -> _Entry:
        if row is None or not is_active(row, time.time()):
            await self._failed("unknown, revoked or expired credential", target)
            return _Entry(None, target, None, now + FAILURE_SECONDS)
        async with self._slow:
            valid = await asyncio.to_thread(verify_secret, row.secret_hash, secret)
        if not valid:
            await self._failed("wrong secret", target)
            return _Entry(None, target, None, now + FAILURE_SECONDS)
        principal = principal_of(row)
        credential = f"user:{row.name}" if row.kind in ("user", "session") else f"key:{row.id}"
        return _Entry(principal, credential, epoch_of(row.expires_at), now + CACHE_SECONDS)

    async def _failed(self, reason: str, target: str) -> None:
        """An authentication failure: audited (never with the secret), logged at INFO."""
        log.info("authentication failed: %s %s", reason, target)
        event = AuditEvent(
            principal=ANONYMOUS.id,
            operation="auth.failed",
            tenant="",
            targets=(target,) if target else (),
            outcome="denied",
            request_id=current_request_id.get(),
            detail={"reason": reason},
        )
        try:
            await self._audit().record([event])
        except Exception:  # a failed audit write must not turn a 401 into a 500
            log.exception("recording an authentication failure failed")

    # -- PrincipalDirectory --------------------------------------------------------------------
    async def lookup(self, principal_id: str) -> Principal | None:
        """The principal again, for work done later on its behalf (a notification); None once its
        key is revoked or expired, or its user deleted. OpenID Connect principals are not found by
        id: a subscription keeps their attributes (subscriptions/owner.py)."""
        await self._poll()
        cached = self._directory.get(principal_id)
        now = time.monotonic()
        if cached is not None and now < cached[1]:
            return cached[0]
        kind, _, ident = principal_id.partition(":")
        found: Principal | None = None
        if principal_id == ANONYMOUS.id:
            found = ANONYMOUS
        elif kind in ("key", "user"):
            row = await self.store.get_credential(kind, ident)
            if row is not None and is_active(row, time.time()):
                found = principal_of(row)
        self._directory[principal_id] = (found, now + POLL_SECONDS * 5)
        return found
