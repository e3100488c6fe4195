"""OpenID Connect against a REAL provider (tests/oidc: the npm package oidc-provider, started here),
each case a real request to a real `cityos serve --auth required --oidc-issuer ...`: tokens issued by
the provider (client_credentials) work and their claims map to roles and tenants; the broken-
authentication cases (expired, not yet valid, wrong audience, wrong issuer, alg none, HS256 signed
with the public key, unknown kid, a tampered signature, both sides of the clock-skew boundary) are
refused; a key rotation at the provider is followed without a restart (the new key works, the removed
one stops working, also for a token already cached); the JWKS is fetched under the outgoing-request
policy. The forged tokens are signed with the provider's own private key (the test made it), so each
is refused for the one reason it stands for; no verifier is mocked.

Needs node and npm: the fixture runs `npm ci` in tests/oidc when node_modules is missing, and skips
only when node is absent and CITYOS_TEST_REQUIRE_OIDC is unset (.ci/run sets it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from notify_helpers import free_port, stop_process
from server_process import LoggedServer
from test_auth_keys import ADMIN_API, bearer

# these tests are about the door, not policies: every authenticated caller may do everything
ALLOW_AUTHENTICATED = str(Path(__file__).parent / "data" / "policies-authenticated-all.yaml")

OIDC = Path(__file__).parent / "oidc"
AUDIENCE = "https://cityos.test/api"
SKEW = 30
CLIENTS = [
    {"client_id": "ops", "client_secret": "ops-secret-ops-secret-ops-secret", "tenant": "city", "roles": ["admin"]},
    {"client_id": "viewer", "client_secret": "viewer-secret-viewer-secret-0", "tenant": "city", "roles": ["reader"]},
]


def _require_node() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        reason = "node and npm are needed to run the OpenID Connect provider (apt-get install nodejs npm)"
        if os.environ.get("CITYOS_TEST_REQUIRE_OIDC") == "1":
            pytest.fail(f"CITYOS_TEST_REQUIRE_OIDC=1 but {reason}")
        pytest.skip(reason)
    if not (OIDC / "node_modules" / "oidc-provider").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=OIDC, check=True, timeout=600)


class SigningKey:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class Provider:
    """tests/oidc/provider.mjs on 127.0.0.1, stopped by its pid; started again with other keys to rotate."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.extra: dict[str, Any] = {}  # more of CONFIG.json (provider.mjs): console clients, accounts

    def start(self, keys: list[SigningKey]) -> None:
        config = self.folder / "oidc.json"
        config.write_text(
            json.dumps(
                {
                    "port": self.port,
                    "audience": AUDIENCE,
                    "clients": CLIENTS,
                    "keys": {"keys": [k.jwk() for k in keys]},
                    **self.extra,
                }
            )
        )
        with (self.folder / "oidc.log").open("ab") as log:
            self.process = subprocess.Popen(["node", str(OIDC / "provider.mjs"), str(config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.process.poll() is None and time.monotonic() < deadline, (self.folder / "oidc.log").read_text()
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def token(self, client: dict[str, Any]) -> str:
        answer = httpx.post(
            f"{self.issuer}/token",
            data={"grant_type": "client_credentials", "scope": "api"},
            auth=(client["client_id"], client["client_secret"]),
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        token: str = answer.json()["access_token"]
        return token


@pytest.fixture(scope="module")
def oidc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Provider, LoggedServer, list[SigningKey]]]:
    _require_node()
    folder = tmp_path_factory.mktemp("oidc")
    keys = [SigningKey("key-a"), SigningKey("key-b")]
    provider = Provider(folder)
    provider.start(keys[:1])
    server = LoggedServer(
        folder / "serve.log",
        "--auth", "required", "--policy-file", ALLOW_AUTHENTICATED,
        "--oidc-issuer", provider.issuer, "--oidc-audience", AUDIENCE,
        "--oidc-clock-skew", str(SKEW), "--allow-private-networks",
        env={"CITYOS_DATABASE": str(folder / "city.db")},
    )  # fmt: skip
    server.start()
    try:
        yield provider, server, keys
    finally:
        server.stop()
        provider.stop()


def forged(key: SigningKey, issuer: str, **changes: Any) -> str:
    """A token signed with the provider's own key, with its claims as a valid one has, but `changes`."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer, "aud": AUDIENCE, "sub": "ops", "client_id": "ops", "iat": now, "exp": now + 300,
        "tenant": "city", "roles": ["admin"],
    }  # fmt: skip
    headers = {"kid": changes.pop("kid", key.kid)}
    claims.update(changes)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key.private, "RS256", headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(issuer: str) -> str:
    now = int(time.time())
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = {"iss": issuer, "aud": AUDIENCE, "sub": "ops", "iat": now, "exp": now + 300, "roles": ["admin"]}
    return f"{header}.{_b64(json.dumps(body).encode())}."


def hs256_with_public_key(key: SigningKey, issuer: str) -> str:
    """The algorithm-confusion attack: HMAC keyed with the issuer's public key, which anyone has."""
    now = int(time.time())
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    body = {"iss": issuer, "aud": AUDIENCE, "sub": "ops", "iat": now, "exp": now + 300, "roles": ["admin"]}
    signing_input = f"{header}.{_b64(json.dumps(body).encode())}"
    signature = hmac.new(key.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


CITY = {"NGSILD-Tenant": "city"}


def status(server: LoggedServer, token: str, path: str = f"{ADMIN_API}/keys") -> int:
    return httpx.get(server.base + path, headers=bearer(token), timeout=10).status_code


def test_provider_tokens_and_claim_mapping(oidc: tuple[Provider, LoggedServer, list[SigningKey]]) -> None:
    provider, server, _keys = oidc
    ops, viewer = provider.token(CLIENTS[0]), provider.token(CLIENTS[1])
    assert jwt.get_unverified_header(ops)["kid"] == "key-a"
    assert status(server, ops) == 200  # role admin from the roles claim
    assert status(server, viewer) == 403  # a reader
    # the viewer's tenant claim is "city": the default tenant does not exist for it (404), "city" does
    assert status(server, viewer, "/ngsi-ld/v1/types") == 404
    thing = {"id": "urn:ngsi-ld:Thing:1", "type": "Thing"}
    made = httpx.post(server.base + "/ngsi-ld/v1/entities", json=thing, headers={**bearer(ops), **CITY}, timeout=10)
    assert made.status_code == 201, made.text
    seen = httpx.get(server.base + "/ngsi-ld/v1/types", headers={**bearer(viewer), **CITY}, timeout=10)
    assert seen.status_code == 200, seen.text
    # the tenant claim scopes the admin: keys within "city" only
    with httpx.Client(base_url=server.base, timeout=10, headers=bearer(ops)) as http:
        assert http.post(f"{ADMIN_API}/keys", json={"name": "k", "tenants": ["city"]}).status_code == 201
        assert http.post(f"{ADMIN_API}/keys", json={"name": "k", "tenants": ["town"]}).status_code == 403
        assert http.post(f"{ADMIN_API}/keys", json={"name": "k", "tenants": ["*"]}).status_code == 403
    assert ops not in server.log() and ops.split(".")[2] not in server.log()


def test_broken_authentication(oidc: tuple[Provider, LoggedServer, list[SigningKey]]) -> None:
    provider, server, keys = oidc
    key, issuer, now = keys[0], provider.issuer, int(time.time())
    assert status(server, forged(key, issuer)) == 200  # the control: every refusal below has one cause
    stranger = SigningKey("key-unknown")
    cases = {
        "expired": forged(key, issuer, iat=now - 900, exp=now - 600),
        "not yet valid": forged(key, issuer, nbf=now + 600),
        "issued in the future": forged(key, issuer, iat=now + 600, exp=now + 900),
        "wrong audience": forged(key, issuer, aud="https://another.example/api"),
        "wrong issuer": forged(key, issuer, iss="https://evil.example"),
        "no expiry": forged(key, issuer, exp=None),
        "alg none": unsigned(issuer),
        "HS256 with the public key": hs256_with_public_key(key, issuer),
        "unknown kid": forged(stranger, issuer),
        "a known kid, another key": forged(stranger, issuer, kid=key.kid),
        "tampered": forged(key, issuer, roles=["reader"]).rsplit(".", 1)[0] + "." + forged(key, issuer).rsplit(".")[2],
    }
    answers = {
        name: httpx.get(f"{server.base}{ADMIN_API}/keys", headers=bearer(token)) for name, token in cases.items()
    }
    assert {name: a.status_code for name, a in answers.items()} == dict.fromkeys(cases, 401)
    assert len({a.text for a in answers.values()}) == 1  # the answer does not say what was wrong
    assert all('error="invalid_token"' in a.headers["www-authenticate"] for a in answers.values())


def test_clock_skew_boundary(oidc: tuple[Provider, LoggedServer, list[SigningKey]]) -> None:
    provider, server, keys = oidc
    key, issuer, now = keys[0], provider.issuer, int(time.time())
    assert status(server, forged(key, issuer, iat=now - 600, exp=now - (SKEW - 10))) == 200  # within the skew
    assert status(server, forged(key, issuer, iat=now - 600, exp=now - (SKEW + 10))) == 401  # past it
    assert status(server, forged(key, issuer, nbf=now + (SKEW - 10))) == 200
    assert status(server, forged(key, issuer, nbf=now + (SKEW + 10))) == 401


def test_key_rotation_without_restart(oidc: tuple[Provider, LoggedServer, list[SigningKey]]) -> None:
    """Last in the module: the provider comes back with key-b only, on the same issuer URL."""
    provider, server, keys = oidc
    old = provider.token(CLIENTS[0])
    assert status(server, old) == 200  # cached by the broker
    provider.stop()
    provider.start(keys[1:])
    time.sleep(5.5)  # unknown kids refetch the JWKS at most every 5 s
    new = provider.token(CLIENTS[0])
    assert jwt.get_unverified_header(new)["kid"] == "key-b"
    assert status(server, new) == 200  # the new key, without a restart
    assert status(server, old) == 401  # the removed key: refused, although it was cached


def test_jwks_fetch_follows_the_outgoing_policy(
    oidc: tuple[Provider, LoggedServer, list[SigningKey]], tmp_path: Path
) -> None:
    """Without --allow-private-networks the issuer on 127.0.0.1 is not fetched: its tokens fail."""
    provider, _server, _keys = oidc
    strict = LoggedServer(
        tmp_path / "strict.log",
        "--auth", "required", "--policy-file", ALLOW_AUTHENTICATED,
        "--oidc-issuer", provider.issuer, "--oidc-audience", AUDIENCE,
        env={"CITYOS_DATABASE": str(tmp_path / "city.db")},
    )  # fmt: skip
    strict.start()
    try:
        assert status(strict, provider.token(CLIENTS[0])) == 401
    finally:
        strict.stop()
    assert "cannot fetch the JWKS" in strict.log() and "non-public" in strict.log()


@pytest.mark.parametrize("algorithms", ["none", "HS256", "RS256,HS512", ""])
def test_unsafe_algorithm_settings_are_refused(algorithms: str, tmp_path: Path) -> None:
    from cityos.settings import Settings

    with pytest.raises(ValueError, match="oidc_algorithms"):
        Settings.from_env({}, oidc_issuer="https://id.example", oidc_audience="cityos", oidc_algorithms=algorithms)
