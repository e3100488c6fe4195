"""Signing in to the console at an OpenID Connect provider: the authorization code flow with PKCE
(RFC 7636, S256), a `state` against cross-site sign-in and a `nonce` bound into the ID token.

The flow, framework-free here (console/http.py only moves cookies and redirects):
1. `begin`: a fresh state, nonce and code verifier, kept in the browser in a short-lived HttpOnly
   cookie (Pending; SameSite=Lax and limited to /console/oidc/, so it comes back with the
   provider's redirect and goes nowhere else); the browser goes to the authorization endpoint
   with the S256 challenge of the verifier.
2. `finish`: the callback's state must equal the cookie's; the code is exchanged at the token
   endpoint with the verifier (and the client secret, for a confidential client) through the
   outgoing-request policy (net.py: timeout, size limit, private addresses only with
   --allow-private-networks); the ID token is verified with the JWKS the bearer tokens use
   (auth/oidc.py; audience: the console's client id) and must carry the nonce.
The access token then becomes the console's session, exactly as a local user's token does: every
page sends it to the API as a bearer token, which verifies and maps it as any client's (so it must
be a JWT for --oidc-audience). Codes, tokens, the verifier and the secret are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx
import orjson

from cityos.auth.errors import Unauthorized
from cityos.net import OutboundPolicy, OutboundRefused
from cityos.settings import Settings

if TYPE_CHECKING:  # PyJWT is loaded only when an issuer is set (auth/service.py)
    from cityos.auth.oidc import OidcVerifier

log = logging.getLogger("cityos.console")
COOKIE = "cityos_oidc"  # the pending sign-in
COOKIE_PATH = "/console/oidc/"
PENDING_SECONDS = 600  # a sign-in must come back within this
MAX_ANSWER = 256 * 1024  # bytes of a token endpoint's answer


class SignInFailed(Exception):
    """A sign-in that cannot complete: `key` names the console message, `detail` fills it in,
    `status` is the page's HTTP status (400: this browser's request; 502: the provider)."""

    def __init__(self, key: str, detail: str = "", status: int = 400) -> None:
        super().__init__(f"{key}: {detail}" if detail else key)
        self.key, self.detail, self.status = key, detail, status


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def challenge(verifier: str) -> str:
    """The S256 code challenge of a verifier (RFC 7636 section 4.2)."""
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


@dataclass(frozen=True)
class Pending:
    """What the browser keeps between leaving for the provider and coming back."""

    state: str
    nonce: str
    verifier: str
    back: str  # the console page to land on

    @classmethod
    def new(cls, back: str) -> Pending:
        if not back.startswith("/") or back.startswith("//"):
            back = "/"  # no open redirect
        return cls(secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48), back)

    def cookie(self) -> str:
        return _b64(orjson.dumps([self.state, self.nonce, self.verifier, self.back]))

    @classmethod
    def parse(cls, text: str | None) -> Pending | None:
        if not text:
            return None
        try:
            fields = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (ValueError, orjson.JSONDecodeError):
            return None
        if not isinstance(fields, list) or len(fields) != 4 or not all(isinstance(f, str) and f for f in fields):
            return None
        pending = cls(*fields)
        return pending if len(pending.verifier) >= 43 and pending.back.startswith("/") else None


@dataclass(frozen=True)
class Tokens:
    access_token: str
    expires_in: int
    id_claims: dict[str, Any]


class ConsoleOidc:
    """The console as an OpenID Connect client of --oidc-issuer."""

    def __init__(self, settings: Settings, verifier: OidcVerifier) -> None:
        self.settings = settings
        self.verifier = verifier
        self.client_id = settings.console_oidc_client_id
        self.policy = OutboundPolicy(
            allow_private_networks=settings.allow_private_networks, timeout=10.0, max_bytes=MAX_ANSWER
        )

    async def _endpoint(self, name: str) -> str:
        try:
            url = (await self.verifier.metadata()).get(name)
        except OutboundRefused as exc:
            raise SignInFailed("signin.oidc_unavailable", str(exc), 502) from exc
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise SignInFailed("signin.oidc_unavailable", f"the provider names no {name}", 502)
        return url

    async def authorization_url(self, pending: Pending, redirect_uri: str) -> str:
        """Where the browser signs in: the provider's authorization endpoint with this sign-in's
        state, nonce and code challenge."""
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": self.settings.console_oidc_scopes,
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": challenge(pending.verifier),
            "code_challenge_method": "S256",
        }
        endpoint = await self._endpoint("authorization_endpoint")
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(query)

    async def finish(self, params: Mapping[str, str], pending: Pending | None, redirect_uri: str) -> Tokens:
        """The tokens of a completed sign-in (the callback's query and the browser's Pending);
        SignInFailed with the reason otherwise."""
        if params.get("error"):
            described = params.get("error_description", "")
            raise SignInFailed("signin.oidc_refused", f"{params['error']}: {described}"[:300].rstrip(": "))
        if pending is None:
            raise SignInFailed("signin.oidc_no_pending")
        if not hmac.compare_digest(params.get("state", "").encode(), pending.state.encode()):
            raise SignInFailed("signin.oidc_state")
        code = params.get("code", "")
        if not code:
            raise SignInFailed("signin.oidc_refused", "no code")
        answer = await self._exchange(code, pending.verifier, redirect_uri)
        access, id_token = answer.get("access_token"), answer.get("id_token")
        if not isinstance(access, str) or not isinstance(id_token, str):
            raise SignInFailed("signin.oidc_token", "the provider's answer lacks an access token or an ID token", 502)
        try:
            claims = await self.verifier.decode(id_token, audience=self.client_id)
        except Unauthorized as exc:
            raise SignInFailed("signin.oidc_token", f"ID token: {exc.detail}", 502) from exc
        if not hmac.compare_digest(str(claims.get("nonce", "")).encode(), pending.nonce.encode()):
            raise SignInFailed("signin.oidc_token", "ID token: the nonce is not this sign-in's", 502)
        expires = answer.get("expires_in", 3600)
        return Tokens(access, int(expires) if isinstance(expires, int | float) and expires > 0 else 3600, claims)

    async def _exchange(self, code: str, verifier: str, redirect_uri: str) -> dict[str, Any]:
        """POST to the token endpoint (client_secret_basic when there is a secret, else a public
        client's client_id): the provider's JSON answer, or SignInFailed with its error code."""
        endpoint = await self._endpoint("token_endpoint")
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        auth: httpx.BasicAuth | None = None
        if self.settings.console_oidc_client_secret:
            auth = httpx.BasicAuth(self.client_id, self.settings.console_oidc_client_secret)
        else:
            form["client_id"] = self.client_id
        try:
            self.policy.check_url(endpoint)
            async with (
                self.policy.client() as http,
                http.stream("POST", endpoint, data=form, auth=auth, headers={"Accept": "application/json"}) as reply,
            ):
                body = bytearray()
                async for chunk in reply.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_ANSWER:
                        raise OutboundRefused(f"the token endpoint's answer is larger than {MAX_ANSWER} bytes")
                status = reply.status_code
        except (OutboundRefused, httpx.HTTPError) as exc:
            log.warning("console sign-in: the token endpoint cannot be reached: %s", type(exc).__name__)
            raise SignInFailed(
                "signin.oidc_unavailable", str(exc) if isinstance(exc, OutboundRefused) else "", 502
            ) from exc
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            raise SignInFailed("signin.oidc_token", f"the token endpoint answered HTTP {status} without JSON", 502)
        if status != 200:
            error = str(answer.get("error", f"HTTP {status}"))
            described = str(answer.get("error_description", ""))
            log.info("console sign-in: the token endpoint refused the code: %s", error)
            raise SignInFailed("signin.oidc_refused", f"{error}: {described}"[:300].rstrip(": "))
        return answer
