"""Secrets, tenant isolation and outgoing requests (issue 13, section 3), each attack replayed
against a real `cityos serve` process on both back-ends: credentials never shown nor logged, no
forged log lines, IoT API keys that cannot route measures into another tenant, and the address
policy for every form of a private address."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.logs import SafeFormatter, escape_control
from cityos.net import OutboundPolicy, OutboundRefused, check_host, is_public
from cityos.redact import REDACTED, redact_uri
from cityos.settings import Settings
from notify_helpers import Receiver, receiving
from server_process import LoggedServer

BASE = "/ngsi-ld/v1"
HINT = "--allow-private-networks"
# every form the probe found passing, and the usual ones
NOT_PUBLIC = [
    "::127.0.0.1",  # IPv4-compatible loopback
    "::7f00:1",
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata address 169.254.169.254
    "64:ff9b:1::a00:1",  # local-use NAT64 prefix
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "ff02::1",
    "::ffff:127.0.0.1",
    "127.0.0.1",
    "10.1.2.3",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "::",
    "::1",
    "fe80::1",
    "fc00::1",
]
PUBLIC = ["8.8.8.8", "2606:4700::1111", "64:ff9b::808:808", "2002:808:808::1"]


# -- the address policy ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", NOT_PUBLIC)
def test_non_public_addresses_are_refused(text: str) -> None:
    assert not is_public(ipaddress.ip_address(text))
    host = f"[{text}]" if ":" in text else text
    with pytest.raises(OutboundRefused, match=HINT):
        OutboundPolicy().check_url(f"http://{host}/notify")


@pytest.mark.parametrize("text", PUBLIC)
def test_public_addresses_pass(text: str) -> None:
    assert is_public(ipaddress.ip_address(text))


@pytest.mark.parametrize("name", ["localhost", "localhost.", "LOCALHOST.", "a.localhost", "b.localhost."])
def test_local_names_are_refused_whatever_dns_says(name: str) -> None:
    with pytest.raises(OutboundRefused, match=HINT):
        check_host(name)


def loopback_name() -> str:
    """A name (not a literal, not *.localhost) that resolves to this machine: its host name."""
    name = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    if not addresses or any(is_public(ipaddress.ip_address(a)) for a in addresses):
        pytest.skip(f"the host name {name} does not resolve to a private address here")
    return name


def test_a_name_is_judged_by_the_address_it_resolves_to(receiver: Receiver) -> None:
    """The check happens when connecting: a plain name that resolves to a private address is
    refused and nothing reaches the receiver."""
    name = loopback_name()
    url = receiver.url.replace("127.0.0.1", name)

    async def run() -> None:
        async with OutboundPolicy(timeout=2).client() as client:
            with pytest.raises(OutboundRefused, match="non-public"):
                await client.post(url, content=b"{}")

    asyncio.run(run())
    assert receiver.requests == []


class Pinned(OutboundPolicy):
    """A policy whose resolver answers 127.0.0.1 for a name that DNS does not know at all."""

    async def resolve(self, host: str, port: int) -> str:
        assert host == "rebind.invalid"
        return "127.0.0.1"


def test_the_connection_goes_to_the_checked_address(receiver: Receiver) -> None:
    """No second lookup: the client connects to what resolve() returned (a name that has no DNS
    entry still reaches it), and the request still names the host (Host header, SNI)."""
    url = receiver.url.replace("127.0.0.1", "rebind.invalid")

    async def run() -> int:
        async with Pinned(timeout=2).client() as client:
            return (await client.post(url, content=b"{}")).status_code

    assert asyncio.run(run()) == 200
    [received] = receiver.wait(1)
    assert received.headers["Host"].startswith("rebind.invalid:")


def make_certificates(folder: Path, name: str) -> tuple[Path, Path, Path]:
    """A test CA and a certificate for `name` signed by it (openssl): (ca, cert, key)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ca_args = ["-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1"]
    openssl("req", *ca_args, "-subj", "/CN=test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", f"/CN={name}")
    (folder / "ext.cnf").write_text(f"subjectAltName=DNS:{name}\n")
    openssl(
        "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "leaf.pem", "-days", "1", "-extfile", "ext.cnf",
    )  # fmt: skip
    return folder / "ca.pem", folder / "leaf.pem", folder / "leaf.key"


@pytest.mark.parametrize(("certified", "works"), [("rebind.invalid", True), ("other.invalid", False)])
def test_tls_checks_the_name_while_connecting_to_the_checked_address(
    tmp_path: Path, certified: str, works: bool
) -> None:
    """https: the socket goes to the address resolve() returned, the certificate is verified
    against the URL's name (SNI), so a certificate for another name is refused."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a test certificate")
    ca, cert, key = make_certificates(tmp_path, certified)
    with receiving() as receiver:
        server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_side.load_cert_chain(cert, key)
        receiver._server.socket = server_side.wrap_socket(receiver._server.socket, server_side=True)
        url = receiver.url.replace("http://127.0.0.1", "https://rebind.invalid")
        trusted = ssl.create_default_context(cafile=str(ca))

        async def run() -> int:
            async with Pinned(timeout=3).client(verify=trusted) as client:
                return (await client.post(url, content=b"{}")).status_code

        if works:
            assert asyncio.run(run()) == 200
            assert receiver.wait(1)[0].headers["Host"].startswith("rebind.invalid:")
        else:
            with pytest.raises(httpx.ConnectError, match=r"(?i)certificate|hostname"):
                asyncio.run(run())
            assert receiver.requests == []


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as found:
        yield found


# -- a real server with its log -------------------------------------------------------------------


class Server(LoggedServer):
    """`cityos serve` on a free port with these settings (CITYOS_* variables), its whole output in
    a file; started at once."""

    def __init__(self, db_url: str, log: Path, **settings: str) -> None:
        env = {"CITYOS_DATABASE": db_url, **{"CITYOS_" + k.upper(): v for k, v in settings.items()}}
        super().__init__(log, env=env)
        self.start(timeout=20)

    def output(self) -> str:
        return self.log()


def serving(db_url: str, tmp_path: Path, **settings: str) -> Iterator[Server]:
    server = Server(db_url, tmp_path / f"server-{uuid.uuid4().hex[:6]}.log", **settings)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def strict(db_url: str, tmp_path: Path) -> Iterator[Server]:
    """A server with the default policy: no private networks; logging at DEBUG, where each failed
    delivery attempt is logged (so the tests see that even the most verbose log keeps secrets out)."""
    yield from serving(db_url, tmp_path, log_level="debug")


@pytest.fixture
def open_server(db_url: str, tmp_path: Path) -> Iterator[Server]:
    """A server that may notify 127.0.0.1 (the test's receivers), logging at DEBUG."""
    yield from serving(
        db_url, tmp_path, log_level="debug", allow_private_networks="true", notification_retry_delay="0.1"
    )


def subscription(uri: str, **endpoint: Any) -> dict[str, Any]:
    return {
        "type": "Subscription",
        "entities": [{"type": "Building"}],
        "notification": {"endpoint": {"uri": uri, **endpoint}},
    }


def create_building(base: str, number: int) -> None:
    body = {"id": f"urn:ngsi-ld:Building:b{number}", "type": "Building", "height": {"type": "Property", "value": 1}}
    assert httpx.post(base + BASE + "/entities", json=body).status_code == 201


# -- SSRF through subscriptions on a real server --------------------------------------------------


@pytest.mark.parametrize(
    "host", ["[::127.0.0.1]", "[64:ff9b::a9fe:a9fe]", "[2002:7f00:1::]", "224.0.0.1", "localhost.", "[ff02::1]"]
)
def test_subscriptions_to_private_forms_are_refused(strict: Server, host: str) -> None:
    answer = httpx.post(strict.base + BASE + "/subscriptions", json=subscription(f"http://{host}:9/notify"))
    assert answer.status_code == 400, answer.text
    assert HINT in answer.json()["detail"]
    mqtt = httpx.post(strict.base + BASE + "/subscriptions", json=subscription(f"mqtt://{host}:1883/topic"))
    assert mqtt.status_code == 400, mqtt.text


def test_a_name_resolving_to_a_private_address_is_never_notified(strict: Server, receiver: Receiver) -> None:
    name = loopback_name()
    uri = receiver.url.replace("127.0.0.1", name)
    created = httpx.post(strict.base + BASE + "/subscriptions", json=subscription(uri))
    assert created.status_code == 201, created.text
    create_building(strict.base, 1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed = httpx.get(strict.base + BASE + "/subscriptions").json()
        if listed[0]["notification"].get("timesFailed"):
            break
        time.sleep(0.1)
    assert listed[0]["notification"]["timesFailed"] >= 1
    assert receiver.requests == []
    assert "non-public address" in strict.output()


# -- secrets in subscriptions and registrations ---------------------------------------------------


def test_subscription_credentials_are_used_but_never_shown_nor_logged(open_server: Server) -> None:
    with receiving(answer=lambda n: 500 if n == 0 else 200) as receiver:
        uri = receiver.url.replace("127.0.0.1", "alice:s3cr%40t@127.0.0.1")
        info = [
            {"key": "Authorization", "value": "Bearer t0ken"},
            {"key": "X-Api-Key", "value": "k3y"},
            {"key": "X-Plain", "value": "visible"},
        ]
        created = httpx.post(open_server.base + BASE + "/subscriptions", json=subscription(uri, receiverInfo=info))
        assert created.status_code == 201, created.text
        location = created.headers["Location"]
        create_building(open_server.base, 1)  # answered 500 (logged), retried, then 200
        first, second = receiver.wait(2, timeout=10)
        for received in (first, second):  # (Authorization: the URI's Basic credentials win)
            assert received.headers["X-Api-Key"] == "k3y"

        shown = [
            httpx.get(open_server.base + location).text,
            httpx.get(open_server.base + BASE + "/subscriptions").text,
        ]
        for text in shown:
            for secret in ("s3cr", "t0ken", "k3y"):
                assert secret not in text
            assert "visible" in text and REDACTED in text and "alice" in text

        # the representation sent back by PATCH keeps the stored secrets (only the format changes)
        notification = httpx.get(open_server.base + location).json()["notification"]
        fragment = {"notification": {"endpoint": notification["endpoint"], "format": "keyValues"}}
        assert httpx.patch(open_server.base + location, json=fragment).status_code == 204
        create_building(open_server.base, 2)
        third = receiver.wait(3, timeout=10)[2]
        assert third.headers["X-Api-Key"] == "k3y"
        assert "height" in third.body["data"][0] and isinstance(third.body["data"][0]["height"], int)

        log = open_server.output()
        assert "notification to" in log and "failed" in log  # the failed delivery was logged
        for secret in ("s3cr", "t0ken", "k3y"):
            assert secret not in log


def test_basic_credentials_and_authorization_headers_reach_the_receiver(open_server: Server) -> None:
    with receiving() as bearer:
        info = [{"key": "Authorization", "value": "Bearer t0ken"}]
        created = httpx.post(
            open_server.base + BASE + "/subscriptions", json=subscription(bearer.url, receiverInfo=info)
        )
        shown = httpx.get(open_server.base + created.headers["Location"]).json()
        assert shown["notification"]["endpoint"]["receiverInfo"] == [{"key": "Authorization", "value": REDACTED}]
        fragment = {"notification": {"endpoint": shown["notification"]["endpoint"]}}
        assert httpx.patch(open_server.base + created.headers["Location"], json=fragment).status_code == 204
        create_building(open_server.base, 1)
        assert bearer.wait(1, timeout=10)[0].headers["Authorization"] == "Bearer t0ken"
        assert httpx.delete(open_server.base + created.headers["Location"]).status_code == 204
    with receiving() as receiver:
        uri = receiver.url.replace("127.0.0.1", "alice:s3cret@127.0.0.1")
        created = httpx.post(open_server.base + BASE + "/subscriptions", json=subscription(uri))
        assert created.status_code == 201
        shown = httpx.get(open_server.base + created.headers["Location"]).json()
        assert shown["notification"]["endpoint"]["uri"] == receiver.url.replace(
            "127.0.0.1", f"alice:{REDACTED}@127.0.0.1"
        )
        fragment = {"notification": {"endpoint": shown["notification"]["endpoint"]}}
        assert httpx.patch(open_server.base + created.headers["Location"], json=fragment).status_code == 204
        create_building(open_server.base, 2)
        [received] = receiver.wait(1, timeout=10)
        assert received.headers["Authorization"] == "Basic " + base64.b64encode(b"alice:s3cret").decode()


def registration(endpoint: str, info: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "Building"}]}],
        "endpoint": endpoint,
        "contextSourceInfo": info,
    }


def test_registration_secrets_are_never_shown(strict: Server) -> None:
    info = [{"key": "Authorization", "value": "Bearer r3g"}, {"key": "jsonldContext", "value": "http://x.org/c"}]
    created = httpx.post(
        strict.base + BASE + "/csourceRegistrations", json=registration("http://bob:pa55@source.example.org", info)
    )
    assert created.status_code == 201, created.text
    for path in (created.headers["Location"], BASE + "/csourceRegistrations?type=Building"):
        text = httpx.get(strict.base + path).text
        assert "r3g" not in text and "pa55" not in text
        assert "bob" in text and "http://x.org/c" in text


def test_a_registration_patched_with_its_redacted_form_keeps_its_secrets(settings: Settings) -> None:
    info = [{"key": "Authorization", "value": "Bearer r3g"}]
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        created = client.post(BASE + "/csourceRegistrations", json=registration("http://bob:pa55@s.example.org", info))
        location = created.headers["Location"]
        shown = client.get(location).json()
        fragment = {"endpoint": shown["endpoint"], "contextSourceInfo": shown["contextSourceInfo"]}
        assert client.patch(location, json=fragment).status_code == 204
        store = client.app.state.services.store  # type: ignore[attr-defined]
        assert client.portal is not None
        [row] = client.portal.call(store.list_registrations, "")  # on the app's own event loop
        assert row.document["endpoint"] == "http://bob:pa55@s.example.org"
        assert row.document["contextSourceInfo"] == info


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://u:p@h.org/x", f"http://u:{REDACTED}@h.org/x"),
        ("mqtt://tok@h.org:1883/t", f"mqtt://{REDACTED}@h.org:1883/t"),
        ("http://h.org/x?token=abc&a=1", f"http://h.org/x?token={REDACTED}&a=1"),
        ("http://h.org/x?a=1", "http://h.org/x?a=1"),
    ],
)
def test_redact_uri(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


# -- log lines ------------------------------------------------------------------------------------


def test_a_device_id_cannot_forge_a_log_line(strict: Server) -> None:
    forged = "2026-01-01 00:00:00,000 CRITICAL cityos: FORGED"
    answer = httpx.post(strict.base + "/iot/d", params={"k": "nokey", "i": f"dev\n{forged}\r\x1b[2J"}, content=b"t|1")
    assert answer.status_code == 404
    lines = strict.output().splitlines()
    assert any("dev\\n2026-01-01" in line and "\\x1b[2J" in line for line in lines)
    assert not any(line.startswith(forged) for line in lines)


def test_the_formatter_keeps_one_record_on_one_line() -> None:
    record = logging.LogRecord(
        "cityos", logging.WARNING, __file__, 1, "device %s to %s", ("a\nb\u2028", "http://u:pw@h/"), None
    )
    text = SafeFormatter("%(message)s").format(record)
    assert text == "device a\\nb\\u2028 to http://u:***@h/"
    assert escape_control("tab\there") == "tab\\there"


def test_entity_ids_with_control_characters_are_refused(strict: Server) -> None:
    for char in ("\x1b", "\x00", "\x7f", "\n"):
        body = {"id": f"urn:ngsi-ld:Building:a{char}b", "type": "Building"}
        answer = httpx.post(strict.base + BASE + "/entities", json=body)
        assert answer.status_code == 400, (char, answer.text)


def test_device_ids_with_control_characters_are_refused(strict: Server) -> None:
    body = {"devices": [{"device_id": "d\n1", "apikey": "k1", "entity_type": "Thing"}]}
    answer = httpx.post(strict.base + "/iot/devices", json=body)
    assert answer.status_code == 400


# -- IoT provisioning across tenants --------------------------------------------------------------


def provision(base: str, tenant: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(base + path, json=body, headers={"fiware-service": tenant})


def test_an_api_key_never_routes_measures_into_another_tenant(strict: Server) -> None:
    base = strict.base
    group = {"services": [{"apikey": "ak-4711", "entity_type": "Sensor", "resource": "/iot/d"}]}
    assert provision(base, "victim", "/iot/services", group).status_code == 201

    # the attacker learns nothing: the same answer as a key that is malformed
    taken = provision(base, "attacker", "/iot/services", group)
    malformed = provision(base, "attacker", "/iot/services", {"services": [{"apikey": "a/b", "entity_type": "S"}]})
    assert taken.status_code == malformed.status_code == 400, taken.text
    assert taken.json()["type"] == malformed.json()["type"]
    assert taken.json()["detail"] == malformed.json()["detail"].replace("a/b", "ak-4711")
    assert "exists" not in taken.text and "victim" not in taken.text

    # and cannot place a device under the victim's key
    device = {"devices": [{"device_id": "s1", "apikey": "ak-4711", "entity_type": "Sensor"}]}
    refused = provision(base, "attacker", "/iot/devices", device)
    assert refused.status_code == 400 and refused.json()["detail"] == taken.json()["detail"]

    # the victim's measures land in the victim's tenant only
    assert httpx.post(base + "/iot/d", params={"k": "ak-4711", "i": "s1"}, content=b"t|21").status_code == 200
    entity = "urn:ngsi-ld:Sensor:s1"
    victim = httpx.get(f"{base}{BASE}/entities/{entity}", headers={"NGSILD-Tenant": "victim"})
    assert victim.status_code == 200 and victim.json()["t"]["value"] == 21
    attacker = httpx.get(f"{base}{BASE}/entities/{entity}", headers={"NGSILD-Tenant": "attacker"})
    assert attacker.status_code == 404
    assert provision(base, "attacker", "/iot/devices", device).status_code == 400
    listed = httpx.get(base + "/iot/devices", headers={"fiware-service": "attacker"}).json()
    assert listed["count"] == 0

    # once the victim gives the key up, it is free again
    assert (
        httpx.delete(
            base + "/iot/services", params={"apikey": "ak-4711"}, headers={"fiware-service": "attacker"}
        ).status_code
        == 404
    )
    assert httpx.delete(base + "/iot/devices/s1", headers={"fiware-service": "victim"}).status_code == 204
    assert (
        httpx.delete(
            base + "/iot/services", params={"apikey": "ak-4711"}, headers={"fiware-service": "victim"}
        ).status_code
        == 204
    )
    assert provision(base, "attacker", "/iot/services", group).status_code == 201


def test_a_key_is_still_unique_within_its_tenant(strict: Server) -> None:
    group = {"services": [{"apikey": "ak-1", "entity_type": "Sensor"}]}
    assert provision(strict.base, "city", "/iot/services", group).status_code == 201
    assert provision(strict.base, "city", "/iot/services", group).status_code == 409
