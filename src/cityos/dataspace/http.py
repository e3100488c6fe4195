"""Thin HTTP handlers of the data channel (DataspaceService does the work).

Admin API (role admin with --auth required), under /cityos/v1/admin/dataspace:
  GET identity · GET|POST partners · DELETE partners/{name} · GET|POST offers · DELETE offers/{id}
  GET|POST agreements (POST: ask a partner for one of its offers) · GET agreements/{id}
  POST agreements/{id}/revoke
Partner API (signed requests only, dataspace/door.py):
  GET /dsp/catalog · POST /dsp/catalog/request · POST /dsp/negotiations/request
  POST /dsp/negotiations/{pid}/agreement/verification · POST /dsp/negotiations/{pid}/termination
  POST /cityos/v1/dataspace/inbox/{agreement}: notifications of the subscriptions this city holds
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.auth.credentials import require_admin
from cityos.dataspace.door import PARTNER_SCOPE_KEY
from cityos.dataspace.received import write_received
from cityos.dataspace.service import INBOX, DataspaceService, identity_of
from cityos.dataspace.signatures import SignatureRefused, content_digest
from cityos.errors import BadRequestData, NgsiLdError, ResourceNotFound
from cityos.ngsild.common import (
    body_context,
    json_response,
    no_content,
    principal,
    read_json,
    read_payload,
    services,
)
from cityos.ops.declare import api
from cityos.policy.enforce import record_denied

BASE = "/cityos/v1/admin/dataspace"


def _service(request: Request) -> DataspaceService:
    service: DataspaceService | None = getattr(request.app.state, "dataspace", None)
    if service is None:
        raise ResourceNotFound("the data channel is not running")
    return service


async def _admin(request: Request) -> DataspaceService:
    service = _service(request)
    caller = principal(request)
    try:
        require_admin(caller, every_tenant=True)
    except NgsiLdError as error:
        await record_denied(services(request).audit, caller, "", [], error, "dataspace.admin")
        raise
    await service.refresh()
    return service


async def _partner(request: Request) -> tuple[DataspaceService, str]:
    partner = request.scope.get(PARTNER_SCOPE_KEY)
    if not isinstance(partner, str):
        raise SignatureRefused("this route takes signed requests from partner cities only")
    return _service(request), partner


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequestData("a JSON object is expected")
    return value


# -- admin ----------------------------------------------------------------------------------------
@api("This city's dataspace identity and public key", ok=200, returns="Object", errors=(400, 404))
async def identity(request: Request) -> Response:
    service = await _admin(request)
    return json_response({**identity_of(service.signing_key), "url": service.base_url})


@api("List partner cities", ok=200, returns="Any", errors=(400, 404))
async def list_partners(request: Request) -> Response:
    service = await _admin(request)
    return json_response(sorted(service.partners.values(), key=lambda p: p["name"]))


@api("Add a partner city", ok=201, returns="Any", body="Object", errors=(400, 404))
async def add_partner(request: Request) -> Response:
    service = await _admin(request)
    partner = await service.add_partner(await read_json(request), by=principal(request).id)
    return json_response(partner, status=201, headers={"Location": f"{BASE}/partners/{quote(partner['name'])}"})


@api("Remove a partner city", ok=204, returns=None, errors=(400, 404))
async def remove_partner(request: Request) -> Response:
    service = await _admin(request)
    await service.remove_partner(request.path_params["name"], by=principal(request).id)
    return no_content()


@api("List data offers", ok=200, returns="Any", errors=(400, 404))
async def list_offers(request: Request) -> Response:
    service = await _admin(request)
    return json_response(sorted(service.offers.values(), key=lambda o: o["id"]))


@api("Publish a data offer", ok=201, returns="Any", body="Object", errors=(400, 404))
async def publish_offer(request: Request) -> Response:
    service = await _admin(request)
    offer = await service.publish(await read_json(request), by=principal(request).id)
    return json_response(offer, status=201, headers={"Location": f"{BASE}/offers/{quote(offer['id'])}"})


@api("Withdraw a data offer", ok=204, returns=None, errors=(400, 404))
async def withdraw_offer(request: Request) -> Response:
    service = await _admin(request)
    await service.withdraw(request.path_params["offer_id"], by=principal(request).id)
    return no_content()


@api("List agreements", ok=200, returns="Any", errors=(400, 404))
async def list_agreements(request: Request) -> Response:
    service = await _admin(request)
    return json_response([a.doc for a in sorted(service.agreements.values(), key=lambda a: a.id)])


@api("Retrieve an agreement", ok=200, returns="Object", errors=(400, 404))
async def get_agreement(request: Request) -> Response:
    service = await _admin(request)
    agreement = service.agreements.get(request.path_params["agreement_id"])
    if agreement is None:
        raise ResourceNotFound(f"agreement {request.path_params['agreement_id']} does not exist")
    return json_response(agreement.doc)


@api("Negotiate an agreement with a partner", ok=201, returns="Any", body="Object", errors=(400, 404))
async def negotiate(request: Request) -> Response:
    service = await _admin(request)
    body = _object(await read_json(request))
    wanted = [body.get(k) for k in ("partner", "offer", "purpose")]
    if not all(isinstance(v, str) and v for v in wanted):
        raise BadRequestData("give partner, offer and purpose")
    doc = await service.negotiate(str(wanted[0]), str(wanted[1]), str(wanted[2]), by=principal(request).id)
    return json_response(doc, status=201, headers={"Location": f"{BASE}/agreements/{quote(doc['id'], safe='')}"})


@api("Revoke an agreement", ok=200, returns="Any", errors=(400, 404))
async def revoke(request: Request) -> Response:
    service = await _admin(request)
    doc = await service.revoke(request.path_params["agreement_id"], by=principal(request).id)
    return json_response(doc)


# -- partners (signed) ----------------------------------------------------------------------------
@api("Dataspace Protocol: this city's catalogue (signed)", method="GET", returns="Any")
@api(
    "Dataspace Protocol: a catalogue request (signed)", method="POST", body="Object", body_required=False, returns="Any"
)
async def catalog(request: Request) -> Response:
    service, partner = await _partner(request)
    if request.method == "POST":
        message = _object(await read_json(request))
        if message.get("@type") != "CatalogRequestMessage":
            raise BadRequestData("a CatalogRequestMessage is expected")
    return json_response(service.catalog(partner), media="application/ld+json")


@api("Dataspace Protocol: a contract request (signed)", ok=201, returns="Any", body="Object", errors=(400, 404))
async def contract_request(request: Request) -> Response:
    service, partner = await _partner(request)
    answer = await service.on_contract_request(partner, await read_json(request))
    return json_response(answer, status=201, media="application/ld+json")


@api("Dataspace Protocol: agreement verification (signed)", ok=200, returns="Any", body="Object", errors=(400, 404))
async def verification(request: Request) -> Response:
    service, partner = await _partner(request)
    answer = await service.on_verification(partner, request.path_params["pid"], await read_json(request))
    return json_response(answer, media="application/ld+json")


@api("Dataspace Protocol: termination (signed)", ok=200, returns="Any", body="Object", errors=(400, 404))
async def termination(request: Request) -> Response:
    service, partner = await _partner(request)
    answer = await service.on_termination(partner, request.path_params["pid"], await read_json(request))
    return json_response(answer, media="application/ld+json")


@api("A partner's notification under an agreement (signed)", ok=200, returns="Any", body="Object", errors=(400, 404))
async def inbox(request: Request) -> Response:
    """A notification of a subscription this city holds at a partner, under an agreement: its
    entities are written into this city's own store (received.py) and the exchange is recorded with
    its digest and nonce ("dataspace.notification.received"), matching the sender's record."""
    service, partner = await _partner(request)
    agreement_id = request.path_params["agreement_id"]
    if agreement_id not in service.agreements:
        await service.refresh_on_miss()
    agreement = service.agreements.get(agreement_id)
    if agreement is None or agreement.doc.get("role") != "consumer" or agreement.doc["provider"] != partner:
        raise ResourceNotFound(f"agreement {agreement_id} does not exist")
    body = await request.body()
    notification, media = await read_payload(request)
    notification = _object(notification)
    nonce = request.headers.get("signature-input", "").split(';nonce="', 1)[-1].split('"', 1)[0]
    data = notification.get("data")
    entities = [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []
    context = await body_context(request, notification, media, tenant_name="")
    written, refused = await write_received(services(request).store, agreement, entities, context.terms)
    await service.record(
        "dataspace.notification.received",
        [agreement_id],
        {
            "partner": partner,
            "requestDigest": content_digest(body),
            "nonce": nonce,
            "subscription": notification.get("subscriptionId"),
            "entities": {
                str(e.get("id")): sorted(k for k in e if k not in ("id", "type", "@context")) for e in entities
            },
            "written": written,
            "refused": refused,
        },
        principal=f"partner:{partner}",
    )
    return no_content()


def routes() -> list[Route]:
    return [
        Route(f"{BASE}/identity", identity, methods=["GET"]),
        Route(f"{BASE}/partners", list_partners, methods=["GET"]),
        Route(f"{BASE}/partners", add_partner, methods=["POST"]),
        Route(f"{BASE}/partners/{{name}}", remove_partner, methods=["DELETE"]),
        Route(f"{BASE}/offers", list_offers, methods=["GET"]),
        Route(f"{BASE}/offers", publish_offer, methods=["POST"]),
        Route(f"{BASE}/offers/{{offer_id}}", withdraw_offer, methods=["DELETE"]),
        Route(f"{BASE}/agreements", list_agreements, methods=["GET"]),
        Route(f"{BASE}/agreements", negotiate, methods=["POST"]),
        Route(f"{BASE}/agreements/{{agreement_id}}", get_agreement, methods=["GET"]),
        Route(f"{BASE}/agreements/{{agreement_id}}/revoke", revoke, methods=["POST"]),
        Route(f"{INBOX}{{agreement_id}}", inbox, methods=["POST"]),
        Route("/dsp/catalog", catalog, methods=["GET"]),
        Route("/dsp/catalog/request", catalog, methods=["POST"]),
        Route("/dsp/negotiations/request", contract_request, methods=["POST"]),
        Route("/dsp/negotiations/{pid}/agreement/verification", verification, methods=["POST"]),
        Route("/dsp/negotiations/{pid}/termination", termination, methods=["POST"]),
    ]
