"""The console's way to the data: the public HTTP APIs of the same application, called in-process
(httpx's ASGI transport, no socket) with the signed-in user's credentials, so the access policies,
the audit trail and every limit apply to the console exactly as to any other client."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from starlette.types import ASGIApp

API = "/ngsi-ld/v1"


@dataclass
class Answer:
    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def count(self) -> int | None:
        raw = self.headers.get("ngsild-results-count")
        return int(raw) if raw is not None and raw.isdigit() else None


class ApiClient:
    """One per console request: the app, and the Authorization and tenant the user's session carries."""

    def __init__(self, app: ASGIApp, authorization: str | None = None, tenant: str | None = None) -> None:
        self.headers: dict[str, str] = {}
        self.failures = 0  # answers other than a success so far (a kept answer must have none)
        if authorization:
            self.headers["Authorization"] = authorization
        if tenant:
            self.headers["NGSILD-Tenant"] = tenant
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 0)), base_url="http://console.local"
        )

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        body: Any = None,
        accept: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        sent = {**self.headers, "Accept": accept, **(headers or {})}
        content = None
        if body is not None:
            content = orjson.dumps(body)
            sent.setdefault("Content-Type", "application/json")
        clean = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        reply = await self._client.request(method, path, params=clean, headers=sent, content=content)
        if not 200 <= reply.status_code < 300:
            self.failures += 1
        try:
            data = orjson.loads(reply.content) if reply.content else None
        except orjson.JSONDecodeError:
            data = reply.text
        return Answer(reply.status_code, data, reply.headers)

    async def raw(self, path: str, params: Mapping[str, Any], accept: str) -> httpx.Response:
        """A GET answered as it is (the read proxy passes its body on untouched)."""
        return await self._client.get(path, params=dict(params), headers={**self.headers, "Accept": accept})

    async def get(self, path: str, params: Mapping[str, Any] | None = None, **kw: Any) -> Answer:
        return await self.request("GET", path, params, **kw)

    async def types(self) -> list[str]:
        answer = await self.get(f"{API}/types")
        return list(answer.body.get("typeList", [])) if answer.ok and isinstance(answer.body, dict) else []

    async def counts(self, types: list[str], attrs: str = "") -> dict[str, int]:
        """How many entities of each type the caller may read (a count=true query of limit 0 each);
        with `attrs`, only those that have one of them (`location`: those a map can draw)."""

        async def one(entity_type: str) -> int:
            query = {"type": entity_type, "limit": 0, "count": "true", "attrs": attrs}
            answer = await self.get(f"{API}/entities", query)
            return answer.count or 0

        found = await asyncio.gather(*(one(t) for t in types))
        return dict(zip(types, found, strict=True))

    async def entities(self, params: Mapping[str, Any]) -> Answer:
        return await self.get(f"{API}/entities", {"count": "true", **params})
