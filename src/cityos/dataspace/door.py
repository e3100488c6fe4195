"""The boundary where a partner's signed request comes in (pure ASGI, before the auth middleware).

A request with a Signature-Input header is verified (signatures.py) against the partner list; a
refusal is a ProblemDetails 401. A verified request acts as:
- on the DSP routes (/dsp/...) and the notification inbox: the partner (`partner:<name>`);
- on /ngsi-ld/v1/...: the agreement its CityOS-Agreement header names (`agreement:<id>`), served
  only while the agreement is active, for its purpose, within its rate and, for an aggregate-only
  agreement, for counts and temporal aggregates only (403/429 otherwise). The nonces seen and the
  rate buckets are rows of the store, so every worker and process serving the database shares them.
  It is served in the agreement's tenant (the offer's `tenant`, default the default tenant): the
  door sets NGSILD-Tenant, and refuses a request naming another. Which entities and
  attributes it sees is the agreement's compiled access policy (model.policy_documents): the same
  engine, pushed-down filters and projections as any other caller's.
Every exchange is recorded with the digests of the request and of the answer
("dataspace.request.served"), matching the sender's "dataspace.request.sent" by nonce.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cityos.auth.errors import AccessDenied, TooManyRequests
from cityos.auth.middleware import problem as _problem
from cityos.auth.principal import Principal, current_principal
from cityos.dataspace import model
from cityos.dataspace.model import Agreement
from cityos.dataspace.service import DSP, INBOX, DataspaceService
from cityos.dataspace.signatures import REPLAY, WINDOW_SECONDS, SignatureRefused, Verified, verify_request
from cityos.errors import NgsiLdError
from cityos.policy.compiled import current_purpose

PRINCIPAL_SCOPE_KEY = "cityos.principal"  # a principal proven here (auth/middleware.py takes it)
PARTNER_SCOPE_KEY = "cityos.partner"  # the partner a DSP or inbox request comes from
NGSILD = "/ngsi-ld/v1/"
READ_POSTS = ("/ngsi-ld/v1/entityOperations/query",)
TENANT = b"ngsild-tenant"


class PartnerDoor:
    """A gate (app.ProtocolGuard leaves it out of the chain of a request without its header)."""

    GATE = b"signature-input"

    def __init__(self, app: ASGIApp, service: Callable[[], DataspaceService | None], *, enforcing: bool) -> None:
        self.app = app
        self.service = service
        self.enforcing = enforcing  # --auth required: the agreement policies are enforced

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not any(name == self.GATE for name, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return
        service = self.service()
        if service is None:
            await _problem(send, SignatureRefused("this city takes no signed requests"))
            return
        body = await _read(receive)
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        await service.refresh()
        if service.public_key_of(_keyid(headers)) is None:
            await service.refresh_on_miss()  # a partner another worker has just added
        url = _url(scope, headers, service.public_url)
        try:
            proof = verify_request(scope["method"], url, headers, body, service.public_key_of, None)
            if not await service.store.first_use(proof.keyid, proof.nonce, proof.created + WINDOW_SECONDS, time.time()):
                raise SignatureRefused(REPLAY)  # shared by every worker and process on the database
        except SignatureRefused as refused:
            await service.record(
                "request.denied",
                [f"{scope['method']} {scope['path']}"],
                {"status": 401, "reason": refused.detail, "keyid": _keyid(headers)},
                outcome="denied",
                principal="partner:?",
            )
            await _problem(send, refused)
            return
        if headers.get("cityos-agreement", "") and service.served(headers["cityos-agreement"], proof.keyid) is None:
            await service.refresh_on_miss()  # an agreement another worker has just finalized
        try:
            principal, agreement = self._admit(service, scope, headers, body, proof)
            if agreement is not None:
                rate = int(agreement.terms["rate"])
                wait = await service.store.take_token(f"agreement:{agreement.id}", rate, time.time())
                if wait > 0:
                    raise TooManyRequests(f"agreement {agreement.id} allows {rate} requests a minute", int(wait) + 1)
        except NgsiLdError as refused:
            await service.record(
                "request.denied",
                [f"{scope['method']} {scope['path']}"],
                {"status": refused.status, "reason": refused.detail, "partner": proof.keyid, "nonce": proof.nonce},
                outcome="denied",
                principal=f"partner:{proof.keyid}",
            )
            await _problem(send, refused)
            return
        scope = {**scope, PRINCIPAL_SCOPE_KEY: principal, PARTNER_SCOPE_KEY: proof.keyid}
        if agreement is not None:  # served in the agreement's tenant, whatever the partner named
            tenant = model.tenant_of(agreement.doc).encode()
            kept = [(name, value) for name, value in scope["headers"] if name != TENANT]
            scope["headers"] = kept + ([(TENANT, tenant)] if tenant else [])
        answer = hashlib.sha256()
        status = 0

        async def replay() -> Message:
            nonlocal body
            chunk, body = body, b""
            return {"type": "http.request", "body": chunk, "more_body": False}

        async def measured(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                answer.update(message.get("body", b""))
            await send(message)

        principal_token = current_principal.set(principal)
        purpose_token = current_purpose.set(headers.get("purpose") or None)
        try:
            await self.app(scope, replay, measured)
        finally:
            current_purpose.reset(purpose_token)
            current_principal.reset(principal_token)
        detail: dict[str, Any] = {
            "partner": proof.keyid,
            "method": scope["method"],
            "target": url,
            "requestDigest": proof.digest,
            "answerDigest": "sha-256=" + answer.hexdigest(),
            "status": status,
            "nonce": proof.nonce,
            "signature": proof.signature,
        }
        if agreement is not None:
            detail["agreement"] = agreement.id
        await service.record(
            "dataspace.request.served",
            [agreement.id if agreement is not None else url],
            detail,
            principal=principal.id,
            outcome="ok" if status < 400 else "failed",
        )

    def _admit(
        self, service: DataspaceService, scope: Scope, headers: dict[str, str], body: bytes, proof: Verified
    ) -> tuple[Principal, Agreement | None]:
        path: str = scope["path"]
        if path.startswith(DSP + "/") or path.startswith(INBOX):
            return Principal(id=f"partner:{proof.keyid}", kind="partner", tenants=frozenset()), None
        if not path.startswith(NGSILD):
            raise AccessDenied("a partner's signed request may only use the DSP and NGSI-LD APIs")
        if not self.enforcing:
            raise AccessDenied("this city serves partners' NGSI-LD requests only with --auth required")
        agreement_id = headers.get("cityos-agreement", "")
        agreement = service.served(agreement_id, proof.keyid)
        if agreement is None:
            raise AccessDenied(f"no active agreement {agreement_id!r} between this city and {proof.keyid}")
        terms = agreement.terms
        if headers.get("ngsild-tenant", "") not in ("", model.tenant_of(agreement.doc)):
            raise AccessDenied(f"agreement {agreement.id} is served in another tenant (leave NGSILD-Tenant out)")
        if headers.get("purpose") != terms["purpose"]:
            raise AccessDenied(f"agreement {agreement.id} is for the purpose {terms['purpose']!r} (Purpose header)")
        _check_operation(scope, body, terms, service.partner(proof.keyid)["url"] + INBOX + agreement.id)
        return service.principal(agreement), agreement


def _check_operation(scope: Scope, body: bytes, terms: dict[str, Any], inbox: str) -> None:
    """Reads only (and subscriptions that notify the partner's own inbox for this agreement);
    aggregate-only agreements: counts (limit=0&count=true) and temporal aggregates only."""
    method, path = scope["method"], scope["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    if method in ("GET", "HEAD") or (method == "POST" and path in READ_POSTS):
        pass
    elif method == "POST" and path == NGSILD + "subscriptions":
        try:
            uri = orjson.loads(body)["notification"]["endpoint"]["uri"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise AccessDenied("a partner's subscription must notify its inbox") from exc
        if uri != inbox:
            raise AccessDenied(f"a partner's subscription under this agreement must notify {inbox}")
    elif method == "DELETE" and path.startswith(NGSILD + "subscriptions/"):
        pass
    else:
        raise AccessDenied("an agreement allows reading, and subscriptions to the partner's inbox, only")
    if terms["aggregation"] == "aggregate" and not path.startswith(NGSILD + "subscriptions"):
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        counted = path == NGSILD + "entities" and params.get("limit") == "0" and params.get("count") == "true"
        aggregated = path.startswith(NGSILD + "temporal/entities") and "aggrMethods" in params
        if not (counted or aggregated):
            raise AccessDenied("this agreement allows aggregates only (count=true&limit=0, or temporal aggrMethods)")


def _url(scope: Scope, headers: dict[str, str], public_url: str | None) -> str:
    """The target URI the partner signed: this city's public URL (`cityos dataspace init --url`,
    the one partners are given, which stays right behind a proxy that rewrites the host or strips a
    path prefix) or, without one, the scheme and Host header as received; then the raw path and query."""
    path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    query = scope.get("query_string", b"")
    base = public_url if public_url else f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"
    return f"{base}{path}" + (f"?{query.decode('latin-1')}" if query else "")


def _keyid(headers: dict[str, str]) -> str:
    given = headers.get("signature-input", "")
    return given.split('keyid="', 1)[1].split('"', 1)[0][:64] if 'keyid="' in given else ""


async def _read(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
