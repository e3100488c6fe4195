"""A subscription made with an OpenID Connect token, served by `cityos serve --workers 2` on
PostgreSQL with a real provider (tests/oidc) and real policies: whichever worker delivers, the owner
is judged on the attributes stored with the subscription, under the policies in force at delivery.

Before, a worker that had seen a newer token of the owner judged them on that token's roles (here:
one that may read the parking contracts) while the other worker used the stored ones, so what a
notification carried depended on the worker that claimed it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from backends import make_key
from notify_helpers import Receiver, receiving
from server_process import LoggedServer
from test_auth_keys import bearer
from test_auth_oidc import AUDIENCE, Provider, SigningKey, _require_node, forged

POLICIES: list[dict[str, Any]] = [
    {
        "id": "inspectors",
        "effect": "allow",
        "principals": {"roles": ["inspector"]},
        "actions": ["read", "subscribe"],
        "resources": {"types": ["Parking"], "exceptAttrs": ["contract"]},
    },
    {
        "id": "auditors",
        "effect": "allow",
        "principals": {"roles": ["auditor"]},
        "actions": ["read", "subscribe"],
        "resources": {"types": ["Parking"]},
    },
]
POLICY_API = "/cityos/v1/admin/policies"


def worker_of(response: httpx.Response) -> str:
    """The worker that answered: the per-process prefix of the X-Request-Id it made."""
    return response.headers["x-request-id"].split("-")[0]


def spread(send: Any, count: int) -> set[str]:
    """`count` requests, each on a new connection; the workers that answered them."""
    workers = set()
    for n in range(count):
        response = send(n)
        assert response.status_code in (200, 201, 204), response.text
        workers.add(worker_of(response))
    return workers


def until_both(send: Any, count: int, rounds: int = 6) -> tuple[set[str], int]:
    """Rounds of `spread` until both workers have answered (the kernel may hand every new
    connection of one round to the same worker); the workers and how many requests were sent."""
    workers: set[str] = set()
    sent = 0
    while len(workers) < 2 and sent < count * rounds:
        workers |= spread(lambda n, first=sent: send(first + n), count)
        sent += count
    return workers, sent


@pytest.fixture
def city(fresh_postgres: str, tmp_path: Path) -> Iterator[tuple[LoggedServer, Provider, SigningKey, str]]:
    _require_node()
    key = SigningKey("key-a")
    provider = Provider(tmp_path)
    provider.start([key])
    policies = tmp_path / "policies.yaml"
    policies.write_text(yaml.safe_dump(POLICIES), encoding="utf-8")
    admin = make_key(fresh_postgres, "--name", "admin", "--role", "admin")
    server = LoggedServer(
        tmp_path / "serve.log", "--workers", "2",
        "--auth", "required", "--policy-file", str(policies),
        "--oidc-issuer", provider.issuer, "--oidc-audience", AUDIENCE, "--allow-private-networks",
        env={"CITYOS_DATABASE": fresh_postgres, "CITYOS_NOTIFICATION_RETRY_DELAY": "0.05"},
    )  # fmt: skip
    try:
        server.start()
        yield server, provider, key, admin
    finally:
        server.stop()
        provider.stop()


def quiet(receiver: Receiver, seconds: float = 2.0) -> None:
    before = len(receiver.requests)
    time.sleep(seconds)
    assert len(receiver.requests) == before, receiver.bodies()[before:]


def test_every_worker_judges_a_token_owner_on_the_stored_attributes(
    city: tuple[LoggedServer, Provider, SigningKey, str],
) -> None:
    server, provider, key, admin = city
    ann = forged(key, provider.issuer, sub="ann", client_id="ann", tenant=None, roles=["inspector"])
    newer = forged(key, provider.issuer, sub="ann", client_id="ann", tenant=None, roles=["inspector", "auditor"])
    close = {"Connection": "close"}

    def upsert(n: int) -> httpx.Response:
        entity = {
            "id": "urn:ngsi-ld:Parking:1",
            "type": "Parking",
            "free": {"type": "Property", "value": n},
            "contract": {"type": "Property", "value": "secret terms"},
        }
        return httpx.post(
            f"{server.base}/ngsi-ld/v1/entityOperations/upsert", json=[entity], headers={**bearer(admin), **close}
        )

    with receiving() as receiver:
        upsert(-1)
        body = {
            "type": "Subscription",
            "entities": [{"type": "Parking"}],
            "notification": {"endpoint": {"uri": receiver.url}},
        }
        made = httpx.post(f"{server.base}/ngsi-ld/v1/subscriptions", json=body, headers=bearer(ann), timeout=10)
        assert made.status_code == 201, made.text

        # ann comes back with a token that may read the contracts too: both workers see it
        seen_by, _ = until_both(
            lambda n: httpx.get(f"{server.base}/ngsi-ld/v1/types", headers={**bearer(newer), **close}), 8
        )
        assert len(seen_by) == 2

        writers, written = until_both(upsert, 8)
        assert len(writers) == 2  # writes (and so, mostly, deliveries) by both workers
        got = receiver.wait(written, timeout=20)
        assert sorted(r.body["data"][0]["free"]["value"] for r in got) == list(range(written))
        assert not [r.body for r in got if "contract" in r.body["data"][0]]  # the stored role, everywhere
        quiet(receiver, 1.0)

        # the policy of the stored role changes (admin API, one worker): no worker notifies any more
        narrowed = {**POLICIES[0], "resources": {"types": ["Bicycle"]}}
        changed = httpx.put(f"{server.base}{POLICY_API}/inspectors", json=narrowed, headers=bearer(admin), timeout=10)
        assert changed.status_code == 200, changed.text
        time.sleep(1.0)  # the change reaches the other worker (PostgreSQL NOTIFY)
        assert len(until_both(upsert, 8)[0]) == 2
        quiet(receiver)
