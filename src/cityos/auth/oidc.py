"""OpenID Connect bearer tokens: JWTs verified against the issuer's JWKS.

The library is PyJWT (with `cryptography`): maintained, small, and it makes the algorithm allow-list
explicit on every decode; a key built from a JWK is bound to one algorithm, so a token cannot pick
another (the HS256-with-the-public-key confusion), and `none` is never in the list (settings.py
refuses it and every HS* algorithm). Its own JWKS client fetches with blocking urllib and outside
CityOS's outgoing-request policy, so the JWKS is fetched here, through net.py (timeout, size limit,
private addresses only with --allow-private-networks), on the event loop. Verifying an RS256
signature costs about 50 µs; the authenticator caches the outcome per token anyway.

Keys: the issuer's discovery document names jwks_uri; the JWKS is kept for --oidc-jwks-refresh
seconds. A token whose `kid` is unknown makes one refetch (at most one per REFETCH_INTERVAL, so a
stream of made-up kids cannot hammer the issuer): a rotated key works without a restart, and a key
the issuer removed stops working, also for tokens already cached (`on_keys_removed`).

Claims are mapped by settings: --oidc-tenant-claim, --oidc-roles-claim, --oidc-groups-claim name a
claim, or a dotted path into nested claims (Keycloak: realm_access.roles); each holds a string or a
list of strings. Without a tenant claim the token is valid for the default tenant only; the value
"*" means every tenant.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import jwt
import orjson

from cityos.auth.errors import Unauthorized
from cityos.auth.hashing import NAME_RE
from cityos.auth.principal import Principal
from cityos.net import OutboundPolicy, OutboundRefused
from cityos.settings import Settings

log = logging.getLogger("cityos.auth")
REFETCH_INTERVAL = 5.0  # seconds between two JWKS fetches caused by unknown kids
ASYMMETRIC = {
    "RS256": "RSA", "RS384": "RSA", "RS512": "RSA", "PS256": "RSA", "PS384": "RSA", "PS512": "RSA",
    "ES256": "EC", "ES384": "EC", "ES512": "EC", "EdDSA": "OKP",
}  # fmt: skip
REQUIRED = ["exp", "iat", "iss", "aud", "sub"]


def allowed_algorithms(text: str) -> list[str]:
    """The --oidc-algorithms list; ValueError for none, HS* or anything not asymmetric."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError("oidc_algorithms must name at least one algorithm")
    for name in names:
        if name not in ASYMMETRIC:
            raise ValueError(
                f"oidc_algorithms: {name!r} is not allowed; choose among {', '.join(ASYMMETRIC)}"
                " (never none, never an HMAC algorithm with a public key)"
            )
    return names


def claim(claims: dict[str, Any], path: str) -> list[str]:
    """The strings at a dotted claim path (a string, or a list of them); [] when absent."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return []
        value = value[part]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def map_claims(claims: dict[str, Any], settings: Settings) -> Principal:
    """The principal a verified token stands for (docs/security.md, "OpenID Connect")."""
    tenants_claimed = claim(claims, settings.oidc_tenant_claim)
    tenants: frozenset[str] | None
    if "*" in tenants_claimed:
        tenants = None
    elif tenants_claimed:
        named = [t for t in tenants_claimed if t == "@default" or NAME_RE.match(t)]
        tenants = frozenset("" if t == "@default" else t for t in named)
    else:
        tenants = frozenset({""})
    roles = frozenset(r for r in claim(claims, settings.oidc_roles_claim) if NAME_RE.match(r))
    groups = frozenset(g for g in claim(claims, settings.oidc_groups_claim) if NAME_RE.match(g))
    client = claims.get("azp") or claims.get("client_id")
    return Principal(
        id=f"oidc:{claims['iss']}#{claims['sub']}",
        kind="oidc",
        tenants=tenants,
        roles=roles,
        groups=groups,
        client=client if isinstance(client, str) else None,
        claims=claims,
    )


class OidcVerifier:
    """Verifies bearer JWTs of one issuer; a JwtVerifier for the Authenticator."""

    def __init__(self, settings: Settings, on_keys_removed: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.issuer = settings.oidc_issuer.rstrip("/")
        self.algorithms = allowed_algorithms(settings.oidc_algorithms)
        self.policy = OutboundPolicy(allow_private_networks=settings.allow_private_networks, timeout=5.0)
        self.on_keys_removed = on_keys_removed
        self._jwks: dict[str, dict[str, Any]] = {}  # kid -> JWK (public parts)
        self._keys: dict[tuple[str, str], jwt.PyJWK] = {}  # (kid, alg) -> key bound to alg
        self._fetched_at = float("-inf")  # monotonic
        self.discovery: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def __call__(self, token: str) -> tuple[Principal, float | None]:
        claims = await self.decode(token)
        expires = float(claims["exp"]) + self.settings.oidc_clock_skew
        return map_claims(claims, self.settings), expires

    async def decode(self, token: str, audience: str = "") -> dict[str, Any]:
        """The claims of a token this issuer signed for `audience` (default: --oidc-audience; the
        console's ID tokens: its client id), verified; Unauthorized otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("malformed token") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.algorithms:
            raise Unauthorized(f"algorithm {alg!r} is not allowed")
        key = await self._key(str(kid) if kid is not None else "", str(alg))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=audience or self.settings.oidc_audience,
                issuer=self.issuer,
                leeway=self.settings.oidc_clock_skew,
                options={"require": REQUIRED},
            )
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {type(exc).__name__}") from exc
        return claims

    async def metadata(self) -> dict[str, Any]:
        """The issuer's discovery document (the console's sign-in needs its authorization and token
        endpoints), fetched with the JWKS; OutboundRefused while the issuer cannot be read."""
        if not self.discovery:
            await self._refresh()  # at most every REFETCH_INTERVAL
        if not self.discovery:
            raise OutboundRefused(f"cannot read the discovery document of {self.issuer}")
        return self.discovery

    async def _key(self, kid: str, alg: str) -> jwt.PyJWK:
        stale = time.monotonic() - self._fetched_at > self.settings.oidc_jwks_refresh
        if stale or (kid not in self._jwks and time.monotonic() - self._fetched_at > REFETCH_INTERVAL):
            await self._refresh()
        jwk = self._jwks.get(kid) if kid else (next(iter(self._jwks.values())) if len(self._jwks) == 1 else None)
        if jwk is None:
            raise Unauthorized("unknown signing key")
        cached = self._keys.get((kid, alg))
        if cached is not None:
            return cached
        if jwk.get("kty") != ASYMMETRIC[alg] or jwk.get("alg", alg) != alg or jwk.get("use", "sig") != "sig":
            raise Unauthorized("the signing key does not fit the algorithm")
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
        except jwt.PyJWTError as exc:
            raise Unauthorized("unusable signing key") from exc
        self._keys[(kid, alg)] = key
        return key

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._fetched_at <= REFETCH_INTERVAL:
                return  # another request just did
            self._fetched_at = time.monotonic()
            try:
                discovery = orjson.loads(
                    await self.policy.get(f"{self.issuer}/.well-known/openid-configuration", "application/json")
                )
                if discovery.get("issuer", "").rstrip("/") != self.issuer:
                    raise OutboundRefused("the discovery document names another issuer")
                document = orjson.loads(await self.policy.get(str(discovery["jwks_uri"]), "application/json"))
                keys = {str(k.get("kid", "")): k for k in document["keys"] if isinstance(k, dict)}
                self.discovery = discovery
            except (OutboundRefused, orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                log.warning("cannot fetch the JWKS of %s: %s", self.issuer, exc)
                return
            removed = set(self._jwks) - set(keys)
            private = ("d", "p", "q", "dp", "dq", "qi")  # never needed; never kept
            self._jwks = {kid: {k: v for k, v in jwk.items() if k not in private} for kid, jwk in keys.items()}
            self._keys = {}
            if removed:
                log.info("the issuer %s removed signing keys %s", self.issuer, ", ".join(sorted(removed)))
                self.on_keys_removed()
