"""The inbox for notifications from context sources (spec 5.8.6): POST /ngsi-ld/ex/remote-notify.

A source notifies here for a copy of a subscription this broker forwarded to it
(federation/subscriptions.py). The notification's subscriptionId is the copy's random id, the
only credential the route takes (it is public: a source holds no token of this broker); an id
this broker did not make answers 404 and changes nothing. The entities are merged with the local
ones, filtered again and delivered to the subscriber through the subscription's own lane.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.errors import BadRequestData, ResourceNotFound
from cityos.federation.subscriptions import INBOX_PATH
from cityos.ngsild.common import json_response, link_context, read_payload
from cityos.ngsild.subscriptions import federated
from cityos.ops.declare import api


@api(
    "A context source's notification for a forwarded subscription",
    body="Object",
    returns="Object",
    errors=(400, 404),
)
async def remote_notify(request: Request) -> Response:
    body, _media = await read_payload(request)
    if not isinstance(body, dict) or not isinstance(body.get("subscriptionId"), str):
        raise BadRequestData("a notification is a JSON object with a subscriptionId")
    data = body.get("data")
    if not isinstance(data, list):
        raise BadRequestData("a notification's data is an array of entities")
    remote = await federated(request).lookup(body["subscriptionId"])
    if remote is None:
        raise ResourceNotFound("no subscription of this broker has that id")
    context: Any = link_context(request)
    if context is None and isinstance(body.get("@context"), str | list | dict):
        context = body["@context"]
    notified = await federated(request).inbound(remote, data, context)
    return json_response({"notified": notified}, media="application/json")


def routes() -> list[Route]:
    return [Route(INBOX_PATH, remote_notify, methods=["POST"])]
