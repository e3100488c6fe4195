"""API keys and the door (issue 14, identity), each a real request to a real `cityos serve` process
with --auth required, on both back-ends: the first admin bootstrapped from the CLI, keys made,
listed and revoked through the CLI and the admin API, 401s that say nothing useful to an attacker,
admin APIs refused to a reader (broken function-level authorization), expiry, revocation seen at
once (also when another process revokes), request ids, rate limits, no secret in any answer or log,
and the secure-by-default start-up rules."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from backends import cli_env, make_key
from server_process import LoggedServer

pytestmark = pytest.mark.slow(seconds=120)

# these tests are about the door, not policies: every authenticated caller may do everything
ALLOW_AUTHENTICATED = str(Path(__file__).parent / "data" / "policies-authenticated-all.yaml")

ADMIN_API = "/cityos/v1/admin"
ENTITY = {"id": "urn:ngsi-ld:Parking:1", "type": "Parking", "free": {"type": "Property", "value": 3}}


def cli(database: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cityos", *args, "--database", database],
        env=cli_env(),
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def secured(db_url: str, tmp_path: Path) -> Iterator[tuple[LoggedServer, str]]:
    """A server with --auth required and its first admin's token (made by the CLI before it starts)."""
    admin = make_key(db_url, "--name", "first-admin", "--role", "admin")
    server = LoggedServer(
        tmp_path / "serve.log",
        "--auth",
        "required",
        "--policy-file",
        ALLOW_AUTHENTICATED,
        env={"CITYOS_DATABASE": db_url},
    )
    server.start()
    try:
        yield server, admin
    finally:
        server.stop()


def test_keys_through_the_admin_api(secured: tuple[LoggedServer, str], db_url: str) -> None:
    server, admin = secured
    with httpx.Client(base_url=server.base, timeout=10) as http:
        # no credentials: anonymous, which may not administer (401 with the Bearer challenge)
        refused = http.get(f"{ADMIN_API}/keys")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == 'Bearer realm="cityos"'
        assert refused.headers["content-type"] == "application/json"

        made = http.post(f"{ADMIN_API}/keys", headers=bearer(admin), json={"name": "dashboard", "roles": ["reader"]})
        assert made.status_code == 201, made.text
        reader = made.json()["token"]
        key_id = made.json()["id"]
        assert reader.startswith(key_id + ".") and made.headers["location"] == f"{ADMIN_API}/keys/{key_id}"
        assert made.json()["tenants"] == [""]  # not an admin: the default tenant only

        listing = http.get(f"{ADMIN_API}/keys", headers=bearer(admin))
        assert listing.status_code == 200
        assert [k["name"] for k in listing.json()] == ["first-admin", "dashboard"]
        secret = reader.split(".", 1)[1]
        assert secret not in listing.text and "argon2" not in listing.text and "token" not in listing.text
        shown = http.get(f"{ADMIN_API}/keys/{key_id}", headers=bearer(admin)).json()
        assert shown["status"] == "active" and "token" not in shown

        assert http.post("/ngsi-ld/v1/entities", headers=bearer(reader), json=ENTITY).status_code == 201
        assert http.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Parking:1", headers=bearer(reader)).status_code == 200

        assert http.delete(f"{ADMIN_API}/keys/{key_id}", headers=bearer(admin)).status_code == 204
        gone = http.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Parking:1", headers=bearer(reader))
        assert gone.status_code == 401  # at once, in this process
        assert gone.headers["www-authenticate"] == 'Bearer realm="cityos", error="invalid_token"'
        assert http.get(f"{ADMIN_API}/keys/{key_id}", headers=bearer(admin)).json()["status"] == "revoked"
        assert http.get(f"{ADMIN_API}/keys/ck_0000000000000000", headers=bearer(admin)).status_code == 404

        bad = [
            http.post(f"{ADMIN_API}/keys", headers=bearer(admin), json={"roles": ["reader"]}),  # no name
            http.post(f"{ADMIN_API}/keys", headers=bearer(admin), json={"name": "x", "roles": "admin"}),
            http.post(f"{ADMIN_API}/keys", headers=bearer(admin), json={"name": "x", "expiresAt": "yesterday"}),
            http.post(f"{ADMIN_API}/keys", headers=bearer(admin), json={"name": "x", "tenants": ["bad tenant"]}),
            http.post(f"{ADMIN_API}/keys", headers=bearer(admin), json=["not", "an", "object"]),
        ]
        assert [r.status_code for r in bad] == [400] * 5
    assert secret not in server.log()


def test_a_reader_cannot_use_any_admin_api(secured: tuple[LoggedServer, str], db_url: str) -> None:
    """OWASP API5 (broken function-level authorization): every admin route, with a reader's key."""
    server, admin = secured
    reader = make_key(db_url, "--name", "reader", "--role", "reader", "--tenant", "*")
    with httpx.Client(base_url=server.base, timeout=10, headers=bearer(reader)) as http:
        key_id = http.get(f"{ADMIN_API}/keys", headers=bearer(admin)).json()[0]["id"]
        attempts = [
            http.post(f"{ADMIN_API}/keys", json={"name": "mine", "roles": ["admin"]}),
            http.get(f"{ADMIN_API}/keys"),
            http.get(f"{ADMIN_API}/keys/{key_id}"),
            http.delete(f"{ADMIN_API}/keys/{key_id}"),
            http.post(f"{ADMIN_API}/users", json={"name": "eve", "password": "long enough", "roles": ["admin"]}),
            http.get(f"{ADMIN_API}/users"),
            http.delete(f"{ADMIN_API}/users/alice"),
            http.put(f"{ADMIN_API}/users/alice/password", json={"password": "long enough"}),
        ]
        assert [r.status_code for r in attempts] == [403] * len(attempts), [r.text for r in attempts]
        assert all(r.json()["type"] == "urn:cityos:errors:AccessDenied" for r in attempts)
        # and nothing was done: the admin key still works, no key was made
        assert len(http.get(f"{ADMIN_API}/keys", headers=bearer(admin)).json()) == 2


def test_bad_credentials_all_look_alike(secured: tuple[LoggedServer, str], db_url: str) -> None:
    server, admin = secured
    key_id, secret = admin.split(".")
    forged = [
        "Bearer nonsense",
        f"Bearer {key_id}.{'A' * len(secret)}",  # the right id, a wrong secret
        f"Bearer ck_0123456789abcdef.{secret}",  # an unknown id
        "Bearer a.b.c",  # a malformed JWT (no OpenID Connect issuer configured)
        f"Token {admin}",  # an unknown scheme
        "Bearer",
    ]
    with httpx.Client(base_url=server.base, timeout=10) as http:
        answers = [http.get("/ngsi-ld/v1/types", headers={"Authorization": value}) for value in forged]
    assert [a.status_code for a in answers] == [401] * len(forged)
    assert len({a.text for a in answers}) == 1  # no hint of which part was wrong
    assert secret not in server.log()


def test_revoke_and_expiry_from_the_command_line(secured: tuple[LoggedServer, str], db_url: str) -> None:
    """Another process (the CLI) revokes a key the server has cached: refused within a second or so."""
    server, _admin = secured
    revoked = make_key(db_url, "--name", "revoked", "--role", "reader")
    soon = (datetime.now(UTC) + timedelta(seconds=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
    short = make_key(db_url, "--name", "short", "--role", "reader", "--expires", soon)
    with httpx.Client(base_url=server.base, timeout=10) as http:
        assert http.get("/ngsi-ld/v1/types", headers=bearer(short)).status_code == 200
        assert http.get("/ngsi-ld/v1/types", headers=bearer(revoked)).status_code == 200  # now cached
        done = cli(db_url, "keys", "revoke", revoked.split(".")[0])
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 3
        while http.get("/ngsi-ld/v1/types", headers=bearer(revoked)).status_code == 200:
            assert time.monotonic() < deadline, "the revoke did not reach the server"
            time.sleep(0.1)
        while datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") <= soon:
            time.sleep(0.2)
        time.sleep(0.2)
        assert http.get("/ngsi-ld/v1/types", headers=bearer(short)).status_code == 401  # expired, although cached
    listing = cli(db_url, "keys", "list")
    assert listing.returncode == 0
    lines = {line.split("\t")[1]: line.split("\t")[2] for line in listing.stdout.splitlines()}
    assert lines == {"first-admin": "active", "revoked": "revoked", "short": "expired"}
    assert revoked.split(".")[1] not in listing.stdout and "argon2" not in listing.stdout
    assert cli(db_url, "keys", "revoke", "ck_0000000000000000").returncode == 1


def test_request_ids(secured: tuple[LoggedServer, str]) -> None:
    server, admin = secured
    with httpx.Client(base_url=server.base, timeout=10) as http:
        given = http.get("/ngsi-ld/v1/types", headers={**bearer(admin), "X-Request-Id": "trace-42.a:b"})
        assert given.headers["x-request-id"] == "trace-42.a:b"
        made = http.get("/ngsi-ld/v1/types", headers={**bearer(admin), "X-Request-Id": "bad id\u00e9".encode() * 30})
        first = made.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]+", first)
        assert http.get("/ngsi-ld/v1/types", headers=bearer(admin)).headers["x-request-id"] != first
        refused = http.get(f"{ADMIN_API}/keys")
        assert refused.status_code == 401 and refused.headers["x-request-id"]  # on refusals too


def test_rate_limit_per_principal(db_url: str, tmp_path: Path) -> None:
    admin = make_key(db_url, "--name", "admin", "--role", "admin")
    other = make_key(db_url, "--name", "other", "--role", "reader")
    server = LoggedServer(
        tmp_path / "serve.log",
        "--auth", "required", "--policy-file", ALLOW_AUTHENTICATED, "--rate-limit", "0.5", "--rate-limit-burst", "3",
        env={"CITYOS_DATABASE": db_url},
    )  # fmt: skip
    server.start()
    try:
        with httpx.Client(base_url=server.base, timeout=10) as http:
            codes = [http.get("/ngsi-ld/v1/types", headers=bearer(admin)).status_code for _ in range(4)]
            assert codes == [200, 200, 200, 429]
            limited = http.get("/ngsi-ld/v1/types", headers=bearer(admin))
            assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 2
            assert limited.json()["type"] == "urn:cityos:errors:TooManyRequests"
            assert http.get("/ngsi-ld/v1/types", headers=bearer(other)).status_code == 200  # its own bucket
            time.sleep(2.1)  # one request's worth comes back
            assert http.get("/ngsi-ld/v1/types", headers=bearer(admin)).status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_auth_off_refused_on_a_network_address(db_url: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cityos", "serve", "--host", "0.0.0.0", "--database", db_url],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "--auth off on 0.0.0.0" in done.stderr and "--insecure-open" in done.stderr

    opened = LoggedServer(
        tmp_path / "open.log", "--host", "0.0.0.0", "--insecure-open", env={"CITYOS_DATABASE": db_url}
    )
    opened.start()
    try:
        assert httpx.get(opened.base + "/ngsi-ld/v1/types", timeout=10).status_code == 200
        assert "auth is off" in opened.log()
    finally:
        opened.stop()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_auth_off_stays_open_and_says_so(db_url: str, tmp_path: Path) -> None:
    """The default: nothing checked (a stray Authorization header changes nothing), a warning at start."""
    server = LoggedServer(tmp_path / "serve.log", env={"CITYOS_DATABASE": db_url})
    server.start()
    try:
        with httpx.Client(base_url=server.base, timeout=10) as http:
            made = http.post("/ngsi-ld/v1/entities", json=ENTITY, headers={"Authorization": "Bearer nonsense"})
            assert made.status_code == 201 and "www-authenticate" not in made.headers
            assert http.get(f"{ADMIN_API}/keys").status_code == 200  # the operator's own machine
    finally:
        server.stop()
    assert "auth is off: anyone who reaches http://127.0.0.1" in server.log()


def test_revoke_reaches_another_worker(fresh_postgres: str, tmp_path: Path) -> None:
    """Two serving processes on one PostgreSQL database: a revoke through one is refused by the
    other at once (the LISTEN/NOTIFY event), not only after its poll."""
    admin = make_key(fresh_postgres, "--name", "admin", "--role", "admin")
    reader = make_key(fresh_postgres, "--name", "reader", "--role", "reader")
    servers = [
        LoggedServer(
            tmp_path / f"serve{n}.log",
            "--auth",
            "required",
            "--policy-file",
            ALLOW_AUTHENTICATED,
            env={"CITYOS_DATABASE": fresh_postgres},
        )
        for n in range(2)
    ]
    for server in servers:
        server.start()
    try:
        with (
            httpx.Client(base_url=servers[0].base, timeout=10) as first,
            httpx.Client(base_url=servers[1].base, timeout=10) as second,
        ):
            _revoke_through_one(first, second, admin, reader)
    finally:
        for server in servers:
            server.stop()


def _revoke_through_one(first: httpx.Client, second: httpx.Client, admin: str, reader: str) -> None:
    assert second.get("/ngsi-ld/v1/types", headers=bearer(reader)).status_code == 200  # cached there
    key_id = reader.split(".")[0]
    assert first.delete(f"{ADMIN_API}/keys/{key_id}", headers=bearer(admin)).status_code == 204
    deadline = time.monotonic() + 0.5
    while second.get("/ngsi-ld/v1/types", headers=bearer(reader)).status_code == 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_iot_device_keys(secured: tuple[LoggedServer, str], db_url: str) -> None:
    """With --auth required the IoT Agent's measures need a device key of the group's tenant (and of
    the group, when the key names groups); provisioning needs an admin of the service's tenant."""
    server, admin = secured
    device = make_key(db_url, "--name", "sensor", "--role", "device", "--tenant", "city", "--group", "iot:aq-key")
    other_group = make_key(db_url, "--name", "other", "--role", "device", "--tenant", "city", "--group", "iot:x")
    elsewhere = make_key(db_url, "--name", "elsewhere", "--role", "device", "--tenant", "town")
    reader = make_key(db_url, "--name", "reader", "--role", "reader", "--tenant", "*")
    city = {"fiware-service": "city"}
    group = {"apikey": "aq-key", "entity_type": "AirQualityObserved", "resource": "/iot/d"}
    measure = {"k": "aq-key", "i": "aq-1"}
    with httpx.Client(base_url=server.base, timeout=10) as http:
        assert http.post("/iot/services", json={"services": [group]}, headers=city).status_code == 401
        refused = http.post("/iot/services", json={"services": [group]}, headers={**city, **bearer(device)})
        assert refused.status_code == 403  # a device does not provision
        made = http.post("/iot/services", json={"services": [group]}, headers={**city, **bearer(admin)})
        assert made.status_code == 201, made.text

        assert http.post("/iot/d", params=measure, content=b"no2|17").status_code == 401
        assert http.post("/iot/d", params=measure, content=b"no2|17", headers=bearer(reader)).status_code == 403
        for stranger in (other_group, elsewhere):  # as for an unknown device: nothing leaks
            assert http.post("/iot/d", params=measure, content=b"no2|17", headers=bearer(stranger)).status_code == 404
        sent = http.post("/iot/d", params=measure, content=b"no2|17", headers=bearer(device))
        assert sent.status_code == 200, sent.text
        stored = http.get(
            "/ngsi-ld/v1/entities/urn:ngsi-ld:AirQualityObserved:aq-1",
            headers={"NGSILD-Tenant": "city", **bearer(admin)},
        )
        assert stored.status_code == 200 and stored.json()["no2"]["value"] == 17


def test_commands_that_call_a_broker_send_cityos_token(secured: tuple[LoggedServer, str]) -> None:
    server, admin = secured
    command = [sys.executable, "-m", "cityos", "iot", "group", "add", "tok-key", "--entity-type", "T"]
    command += ["--url", server.base]
    refused = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "credentials" in refused.stderr
    done = subprocess.run(command, env=cli_env(CITYOS_TOKEN=admin), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_no_secret_in_the_debug_log(db_url: str, tmp_path: Path) -> None:
    """At --log-level debug (access log, httpx, everything): no key, password, token or hash, from
    keys made through the admin API, Basic passwords (right, wrong, changed), tokens (valid and
    forged), a guessed secret for a real key id, a device key sending a measure, and requests
    refused at the door."""
    admin = make_key(db_url, "--name", "admin", "--role", "admin")
    server = LoggedServer(
        tmp_path / "serve.log",
        "--auth",
        "required",
        "--policy-file",
        ALLOW_AUTHENTICATED,
        "--log-level",
        "debug",
        env={"CITYOS_DATABASE": db_url},
    )
    server.start()
    secrets = [admin.split(".")[1]]
    try:
        with httpx.Client(base_url=server.base, timeout=10) as http:
            made = http.post(f"{ADMIN_API}/keys", headers=bearer(admin), json={"name": "k", "roles": ["r"]})
            made_token = made.json()["token"]
            secrets.append(made_token.split(".")[1])
            assert http.get("/ngsi-ld/v1/types", headers=bearer(made_token)).status_code == 200
            guessed = made_token.split(".")[0] + ".guessed0secret0for0a0real0key"
            assert http.get("/ngsi-ld/v1/types", headers=bearer(guessed)).status_code == 401
            secrets.append(guessed.split(".")[1])
            device = http.post(f"{ADMIN_API}/keys", headers=bearer(admin), json={"name": "d", "roles": ["device"]})
            device_token = device.json()["token"]
            secrets.append(device_token.split(".")[1])
            group = {"services": [{"apikey": "log-k", "entity_type": "T", "resource": "/iot/d"}]}
            assert http.post("/iot/services", headers=bearer(admin), json=group).status_code == 201
            measure = http.post("/iot/d", params={"k": "log-k", "i": "d9"}, content="t|1", headers=bearer(device_token))
            assert measure.status_code < 500
            user = {"name": "erin", "password": "erins secret words"}
            assert http.post(f"{ADMIN_API}/users", headers=bearer(admin), json=user).status_code == 201
            secrets.append(user["password"])
            assert http.get("/ngsi-ld/v1/types", auth=("erin", "wrong but secret")).status_code == 401
            secrets.append("wrong but secret")
            token = http.post("/cityos/v1/auth/token", auth=("erin", user["password"])).json()["access_token"]
            secrets += [token, token.split(".")[1], token.rsplit(".", 1)[1]]
            assert http.get("/ngsi-ld/v1/types", headers=bearer(token)).status_code == 200
            assert http.get("/ngsi-ld/v1/types", headers=bearer(token[:-3] + "abc")).status_code == 401
            changed = {"password": "erins brand new words"}
            assert http.put(f"{ADMIN_API}/users/erin/password", headers=bearer(admin), json=changed).status_code == 204
            secrets.append(changed["password"])
            assert http.get("/ngsi-ld/v1/types", auth=("erin", changed["password"])).status_code == 200
    finally:
        server.stop()
    log = server.log()
    assert "GET /ngsi-ld/v1/types" in log  # the access log is on
    assert "authentication failed" in log  # and the failures are there, without their secrets
    leaked = [s for s in secrets if s in log]
    assert leaked == [] and "$argon2" not in log
