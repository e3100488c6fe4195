"""encoded_response (ngsild/common.py) makes the raw headers of a retrieve's or a page's answer
itself when no other header is asked: they must be exactly those Starlette's Response makes from
the same body, media type and Link header, in the same order, and stay changeable as Starlette's."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

from starlette.responses import Response

from cityos.jsonld.registry import ResolvedContext
from cityos.jsonld.termmap import TermMap
from cityos.ngsild.common import encoded_response, link_header
from cityos.ngsild.negotiation import JSON, JSON_LD

CONTEXTS = (
    ResolvedContext(TermMap(), "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.9.jsonld", "https://x/core"),
    ResolvedContext(TermMap(), ["https://example.org/ctx.jsonld"], "http://127.0.0.1:1026/ngsi-ld/v1/jsonldContexts/a"),
)


def starlettes(data: bytes, media: str, context: ResolvedContext, headers: dict[str, str] | None) -> Response:
    """What encoded_response answered before it made the headers itself."""
    extra = dict(headers or {})
    if media != JSON_LD:
        extra["Link"] = link_header(context.link_url)
    return Response(data, status_code=200, media_type=media, headers=extra)


async def sent(response: Response) -> list[MutableMapping[str, Any]]:
    messages: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        messages.append(message)

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request"}

    await response({"type": "http"}, receive, send)
    return messages


def test_the_headers_are_starlettes_for_every_media_type_and_context() -> None:
    bodies = (b'{"id":"urn:x:1","type":"T"}', b"[]", b'[{"id":"urn:x:\xc3\xa9"}]')
    for context in CONTEXTS:
        for media in (JSON, JSON_LD, "application/geo+json"):
            for headers in (None, {}, {"NGSILD-Results-Count": "3"}):
                for data in bodies:
                    ours = encoded_response(data, media, context, headers)
                    theirs = starlettes(data, media, context, headers)
                    assert ours.raw_headers == theirs.raw_headers, (media, headers)
                    assert (ours.status_code, ours.body, ours.media_type) == (200, data, media)
                    assert asyncio.run(sent(ours)) == asyncio.run(sent(theirs))


def test_headers_added_afterwards_are_sent() -> None:
    """Callers add headers to the answer (query pages' Link of the next page, entity maps)."""
    response = encoded_response(b"[]", JSON, CONTEXTS[0])
    response.headers.append("Link", '<https://x/next>; rel="next"')
    response.headers["NGSILD-EntityMap"] = "urn:m:1"
    theirs = starlettes(b"[]", JSON, CONTEXTS[0], None)
    theirs.headers.append("Link", '<https://x/next>; rel="next"')
    theirs.headers["NGSILD-EntityMap"] = "urn:m:1"
    assert response.raw_headers == theirs.raw_headers
