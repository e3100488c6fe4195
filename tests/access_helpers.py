"""A small Authorizer and PrincipalDirectory for the tests of the enforcement points (subscriptions,
notifications, registrations, @contexts, IoT provisioning, temporal deletes, purges), and a
middleware that lets a request act as a named principal. They implement the contracts of
policy/decision.py and auth/principal.py; the server-level tests use the real ones."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from cityos.app import create_app
from cityos.audit.events import AuditEvent
from cityos.auth.principal import ANONYMOUS, Principal, current_principal
from cityos.entities.model import Entity
from cityos.policy.decision import EVERYTHING, AccessPrefilter, Action, ReadView, Target
from cityos.settings import Settings

DEFAULT = "https://uri.etsi.org/ngsi-ld/default-context/"
AS_HEADER = "x-test-principal"


@dataclass
class Grant:
    """What one principal may do: read entities of `types` without `hidden` attributes, subscribe to
    `subscribe` types, and `administer` the named resources (or every one with "*")."""

    types: set[str] = field(default_factory=set)
    hidden: set[str] = field(default_factory=set)
    subscribe: set[str] = field(default_factory=set)
    write: set[str] = field(default_factory=set)  # create/update/delete entities of these types
    administer: set[str] = field(default_factory=set)
    read_resources: set[str] = field(default_factory=set)


class View:
    def __init__(self, grant: Grant) -> None:
        self.grant = grant

    @property
    def unrestricted(self) -> bool:
        return False

    def prefilter(self) -> AccessPrefilter | None:
        return AccessPrefilter(types=sorted(self.grant.types))

    def visible(self, entity: Entity) -> bool:
        return any(t in self.grant.types for t in entity.get("type", ()))

    def project(self, entity: Entity) -> Entity:
        if not self.grant.hidden & entity.get("attrs", {}).keys():
            return entity
        out = copy.copy(entity)
        out["attrs"] = {k: v for k, v in entity["attrs"].items() if k not in self.grant.hidden}
        return out


class TestAuthorizer:
    """Grants by principal id, else by role ("role:<name>", the first of the principal's roles in
    order that has one); admins may do everything."""

    __test__ = False

    def __init__(self) -> None:
        self.grants: dict[str, Grant] = {}

    def grant(self, principal: Principal) -> Grant:
        if principal.id in self.grants:
            return self.grants[principal.id]
        return next((self.grants[f"role:{r}"] for r in sorted(principal.roles) if f"role:{r}" in self.grants), Grant())

    def read_view(self, principal: Principal, tenant: str, action: Action = "read") -> ReadView:
        if principal.unrestricted or principal.is_admin:
            return EVERYTHING
        return View(self.grant(principal))

    def allows(self, principal: Principal, action: Action, target: Target) -> bool:
        if principal.unrestricted or principal.is_admin:
            return True
        grant = self.grant(principal)
        if action == "administer":
            return "*" in grant.administer or target.resource in grant.administer
        if action == "subscribe":
            return bool(target.types) and set(target.types) <= grant.subscribe
        if action == "read" and target.resource is not None:
            return target.resource in grant.read_resources
        if action in ("create", "update", "delete"):
            return bool(target.types) and set(target.types) <= grant.write
        return action == "read" and bool(set(target.types) & grant.types)


class TestDirectory:
    """Principals by id; removing one is revoking it."""

    __test__ = False

    def __init__(self) -> None:
        self.known: dict[str, Principal] = {}

    def add(self, principal: Principal) -> Principal:
        self.known[principal.id] = principal
        return principal

    async def lookup(self, principal_id: str) -> Principal | None:
        return self.known.get(principal_id)


class TestAudit:
    __test__ = False

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def record(self, events: Sequence[AuditEvent]) -> None:
        self.events.extend(events)

    def denied(self) -> list[AuditEvent]:
        return [e for e in self.events if e.operation == "request.denied"]


class ActAs:
    """The test stand-in for the auth middleware: the request acts as the principal its
    X-Test-Principal header names (ANONYMOUS without one)."""

    def __init__(self, app: ASGIApp, directory: TestDirectory) -> None:
        self.app = app
        self.directory = directory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        name = dict(scope["headers"]).get(AS_HEADER.encode())
        who = ANONYMOUS if name is None else self.directory.known.get(name.decode(), ANONYMOUS)
        token = current_principal.set(who)
        try:
            await self.app(scope, receive, send)
        finally:
            current_principal.reset(token)


@dataclass
class Secured:
    client: TestClient
    authorizer: TestAuthorizer
    directory: TestDirectory
    audit: TestAudit

    def as_(self, name: str) -> dict[str, str]:
        return {AS_HEADER: name}

    def principal(self, name: str, *, admin: bool = False, tenants: Sequence[str] | None = ("",), **grant: Any) -> str:
        roles = frozenset({"admin"}) if admin else frozenset()
        self.directory.add(
            Principal(
                id=f"key:{name}", kind="key", tenants=None if tenants is None else frozenset(tenants), roles=roles
            )
        )
        self.authorizer.grants[f"key:{name}"] = Grant(**grant)
        return f"key:{name}"


@contextmanager
def secured_app(settings: Settings) -> Iterator[Secured]:
    app = create_app(settings)
    authorizer, directory, audit = TestAuthorizer(), TestDirectory(), TestAudit()
    services = app.state.services
    services.authorizer, services.principals, services.audit = authorizer, directory, audit
    app.add_middleware(ActAs, directory=directory)
    with TestClient(app, base_url="http://127.0.0.1:1026") as client:
        yield Secured(client, authorizer, directory, audit)
