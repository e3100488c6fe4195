"""Local users (embedded mode), each a real request to a real `cityos serve --auth required`: made
by the CLI and the admin API, HTTP Basic and the token endpoint, and a deleted user or a new password
ending the tokens at once. Passwords are argon2id hashes; none appears in answers, listings or logs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server_process import LoggedServer
from test_auth_keys import ADMIN_API, bearer, cli, make_key

# these tests are about the door, not policies: every authenticated caller may do everything
ALLOW_AUTHENTICATED = str(Path(__file__).parent / "data" / "policies-authenticated-all.yaml")

PASSWORD = "correct horse battery"


@pytest.fixture
def secured(db_url: str, tmp_path: Path) -> Iterator[tuple[LoggedServer, str]]:
    admin = make_key(db_url, "--name", "first-admin", "--role", "admin")
    made = cli(db_url, "users", "create", "alice", "--role", "operator", "--password-stdin", stdin=PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    server = LoggedServer(
        tmp_path / "serve.log",
        "--auth", "required", "--policy-file", ALLOW_AUTHENTICATED, "--user-token-lifetime", "60",
        env={"CITYOS_DATABASE": db_url},
    )  # fmt: skip
    server.start()
    try:
        yield server, admin
    finally:
        server.stop()


def test_users_log_in_with_basic_and_tokens(secured: tuple[LoggedServer, str], db_url: str) -> None:
    server, admin = secured
    with httpx.Client(base_url=server.base, timeout=10) as http:
        assert http.get("/ngsi-ld/v1/types", auth=("alice", PASSWORD)).status_code == 200
        wrong = http.get("/ngsi-ld/v1/types", auth=("alice", "not the password"))
        nobody = http.get("/ngsi-ld/v1/types", auth=("mallory", PASSWORD))
        assert wrong.status_code == nobody.status_code == 401 and wrong.text == nobody.text

        issued = http.post("/cityos/v1/auth/token", auth=("alice", PASSWORD))
        assert issued.status_code == 200, issued.text
        assert issued.headers["cache-control"] == "no-store"
        token = issued.json()["access_token"]
        assert issued.json()["token_type"] == "Bearer" and issued.json()["expires_in"] == 60
        assert http.get("/ngsi-ld/v1/types", headers=bearer(token)).status_code == 200
        # a token is not a password: it cannot make more tokens, nor can a key
        assert http.post("/cityos/v1/auth/token", headers=bearer(token)).status_code == 401
        assert http.post("/cityos/v1/auth/token", headers=bearer(admin)).status_code == 401
        assert http.post("/cityos/v1/auth/token").status_code == 401
        # alice is no admin
        assert http.get(f"{ADMIN_API}/users", headers=bearer(token)).status_code == 403

        # the admin API: make bob, change alice's password (her token stops), delete bob
        made = http.post(
            f"{ADMIN_API}/users",
            headers=bearer(admin),
            json={"name": "bob", "password": "another long one", "roles": ["reader"], "tenants": ["city"]},
        )
        assert made.status_code == 201, made.text
        assert made.json()["tenants"] == ["city"] and "password" not in made.text
        again = http.post(f"{ADMIN_API}/users", headers=bearer(admin), json={"name": "bob", "password": "x" * 9})
        assert again.status_code == 409
        short = http.post(f"{ADMIN_API}/users", headers=bearer(admin), json={"name": "carol", "password": "short"})
        assert short.status_code == 400
        listing = http.get(f"{ADMIN_API}/users", headers=bearer(admin))
        assert [u["name"] for u in listing.json()] == ["alice", "bob"]
        assert "argon2" not in listing.text and PASSWORD not in listing.text

        changed = http.put(
            f"{ADMIN_API}/users/alice/password", headers=bearer(admin), json={"password": "a brand new one"}
        )
        assert changed.status_code == 204
        assert http.get("/ngsi-ld/v1/types", headers=bearer(token)).status_code == 401  # at once
        assert http.get("/ngsi-ld/v1/types", auth=("alice", PASSWORD)).status_code == 401
        assert http.get("/ngsi-ld/v1/types", auth=("alice", "a brand new one")).status_code == 200

        bob = http.post("/cityos/v1/auth/token", auth=("bob", "another long one")).json()["access_token"]
        # bob's tenant is "city": he reads there; the default tenant does not exist for him (404)
        city = {"NGSILD-Tenant": "city"}
        thing = {"id": "urn:ngsi-ld:Thing:1", "type": "Thing"}
        assert http.post("/ngsi-ld/v1/entities", json=thing, headers={**bearer(admin), **city}).status_code == 201
        assert http.get("/ngsi-ld/v1/types", headers={**bearer(bob), **city}).status_code == 200
        assert http.get("/ngsi-ld/v1/types", headers=bearer(bob)).status_code == 404
        assert http.delete(f"{ADMIN_API}/users/bob", headers=bearer(admin)).status_code == 204
        assert http.get("/ngsi-ld/v1/types", headers={**bearer(bob), **city}).status_code == 401
        assert http.delete(f"{ADMIN_API}/users/bob", headers=bearer(admin)).status_code == 404
    log = server.log()
    assert PASSWORD not in log and "another long one" not in log and token.split(".")[1] not in log


def test_users_from_the_command_line(secured: tuple[LoggedServer, str], db_url: str) -> None:
    server, _admin = secured
    listing = cli(db_url, "users", "list")
    assert listing.returncode == 0 and listing.stdout.split("\t")[:3] == ["alice", "alice", "active"]
    assert cli(db_url, "users", "create", "alice", "--password-stdin", stdin="whatever long\n").returncode == 1
    assert cli(db_url, "users", "create", "dave", "--password-stdin", stdin="short\n").returncode == 1
    changed = cli(db_url, "users", "passwd", "alice", "--password-stdin", stdin="changed by cli\n")
    assert changed.returncode == 0, changed.stderr
    with httpx.Client(base_url=server.base, timeout=10) as http:
        assert http.get("/ngsi-ld/v1/types", auth=("alice", "changed by cli")).status_code == 200
        assert cli(db_url, "users", "delete", "alice").returncode == 0
        deadline = time.monotonic() + 3  # another process: seen within the poll interval
        while http.get("/ngsi-ld/v1/types", auth=("alice", "changed by cli")).status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert cli(db_url, "users", "delete", "alice").returncode == 1
    assert cli(db_url, "users", "list").stdout == ""
