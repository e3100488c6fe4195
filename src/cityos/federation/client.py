"""The calls to context sources: concurrent, bounded, never blocking the event loop.

Every call goes through the outgoing-request policy (cityos.net: resolved and checked address,
no private or loopback target unless --allow-private-networks), one shared connection pool of
at most MAX_CONNECTIONS connections, at most MAX_IN_FLIGHT calls at once, a timeout per source
(the registration's own `management.timeout`, in milliseconds, when it is shorter), and a byte ceiling on
every answer. A call never raises: it yields an Answer that says what went wrong, so one slow or
broken source costs only its own part of the result (spec 6.3.17, NGSILD-Warning).

`Signer`: the hook that signs the requests to a registration that is a partner city (app.py sets
it to dataspace's `sign_forwarded`): it receives the outgoing httpx request and the registration,
may add headers, and may return what to call with the answer (its status and body; status 0 and no
body when none came), so the exchange is recorded on this side as the partner records it on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from cityos.federation.planning import Doc, Target
from cityos.net import OutboundPolicy, OutboundRefused
from cityos.redact import redact_uri

log = logging.getLogger("cityos.federation")
MAX_CONNECTIONS = 32
MAX_IN_FLIGHT = 64
BASE_PATH = "/ngsi-ld/v1"
# headers a registration's contextSourceInfo may not set (4.3.6.4: binding information is ignored)
RESERVED = frozenset(
    {"ngsild-tenant", "via", "content-length", "content-type", "host", "transfer-encoding", "connection", "link"}
)
REQUEST_VALUE = "urn:ngsi-ld:request"
# contextSourceInfo keys that steer the exchange instead of travelling as headers (4.3.6.6)
STEERING = frozenset({"contentType", "accept", "jsonldContext"})

AfterAnswer = Callable[[int, bytes | None], Awaitable[None]]
Signer = Callable[[httpx.Request, Doc], Awaitable[AfterAnswer | None]]


@dataclass
class Call:
    """One request to one source; `path` under the source's /ngsi-ld/v1."""

    target: Target
    method: str
    path: str
    params: Sequence[tuple[str, str]] = ()
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Answer:
    call: Call
    status: int  # 0: no answer (refused, unreachable, timed out, too large)
    body: Any = None
    problem: str | None = None
    relayed: str | None = None  # the source's own NGSILD-Warning (a part that failed further on)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300 and self.problem is None

    @property
    def warning(self) -> str | None:
        """The NGSILD-Warning value for this answer, or None (6.3.17): 111 when nothing usable
        came back in time, 299 for an error status; a 404 is no abnormal behaviour."""
        if self.ok or self.status == 404:
            return None
        code = 299 if self.status >= 300 and self.problem is None else 111
        agent = self.call.target.endpoint.split("//", 1)[-1].split("/", 1)[0]
        text = self.problem or f"HTTP {self.status} from registration {self.call.target.id}"
        return f'{code} {agent} "{text.replace(chr(34), chr(39))}"'


def steering(registration: Doc) -> dict[str, str]:
    """The contextSourceInfo pairs that steer the exchange: contentType, accept, jsonldContext."""
    info = registration.get("contextSourceInfo")
    pairs = [p for p in info if isinstance(p, dict)] if isinstance(info, list) else []
    return {p["key"]: p["value"] for p in pairs if p.get("key") in STEERING and isinstance(p.get("value"), str)}


def source_headers(registration: Doc, incoming: dict[str, str]) -> dict[str, str]:
    """The registration's contextSourceInfo pairs as headers (4.3.6.4): urn:ngsi-ld:request copies
    the triggering request's header of that name, when it has one; binding headers are ignored."""
    out: dict[str, str] = {}
    info = registration.get("contextSourceInfo")
    for pair in info if isinstance(info, list) else []:
        if not isinstance(pair, dict):
            continue
        key, value = pair.get("key"), pair.get("value")
        if not isinstance(key, str) or not isinstance(value, str) or key.lower() in RESERVED:
            continue
        if key in STEERING:
            continue
        if value == REQUEST_VALUE:
            copied = incoming.get(key.lower())
            if copied is not None:
                out[key] = copied
        else:
            out[key] = value
    tenant = registration.get("tenant")
    if isinstance(tenant, str) and tenant:
        out["NGSILD-Tenant"] = tenant  # the registration's tenant, never the requester's (4.14)
    return out


class Forwarder:
    """The shared pool for calls to context sources; one per application, closed at shutdown."""

    def __init__(self, policy: OutboundPolicy, *, signer: Signer | None = None) -> None:
        self.policy = policy
        self.signer = signer
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._client: httpx.AsyncClient | None = None
        # calls by (registration id, outcome: ok, error, no_answer), read by the metrics
        self.counts: dict[tuple[str, str], int] = {}

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
            self._client = self.policy.client(limits=limits)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def timeout(self, target: Target) -> float:
        management = target.registration.get("management")
        own = management.get("timeout") if isinstance(management, dict) else None  # ms (5.2.34)
        if isinstance(own, int | float) and not isinstance(own, bool) and own > 0:
            return min(self.policy.timeout, own / 1000)
        return self.policy.timeout

    async def send_all(self, calls: Sequence[Call]) -> list[Answer]:
        """Every call at once (within the bounds), answers in the order of the calls."""
        if not calls:
            return []
        return list(await asyncio.gather(*(self.send(call) for call in calls)))

    async def send(self, call: Call) -> Answer:
        answer = await self._send(call)
        outcome = "ok" if answer.ok else "no_answer" if answer.status == 0 else "error"
        key = (call.target.id, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1
        return answer

    async def _send(self, call: Call) -> Answer:
        url = f"{call.target.endpoint}{BASE_PATH}{call.path}"
        try:
            self.policy.check_url(url)
            async with self.slots:
                return await asyncio.wait_for(self._exchange(call, url), self.timeout(call.target))
        except TimeoutError:
            return Answer(call, 0, problem=f"no answer from {redact_uri(url)} within {self.timeout(call.target)} s")
        except OutboundRefused as exc:
            return Answer(call, 0, problem=str(exc))
        except httpx.HTTPError as exc:
            return Answer(call, 0, problem=f"{redact_uri(url)}: {type(exc).__name__}")
        except Exception as exc:  # a source must never break the request that asked it
            log.warning("context source %s: %s: %s", call.target.id, type(exc).__name__, exc)
            return Answer(call, 0, problem=f"{redact_uri(url)}: {type(exc).__name__}")

    async def _exchange(self, call: Call, url: str) -> Answer:
        content = None if call.body is None else orjson.dumps(call.body)
        headers = dict(call.headers)
        if content is not None:
            headers.setdefault("Content-Type", "application/json")
        request = self.client.build_request(
            call.method, url, params=list(call.params), content=content, headers=headers
        )
        after = None if self.signer is None else await self.signer(request, call.target.registration)
        try:
            response = await self.client.send(request, stream=True)
            try:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self.policy.max_bytes:
                        if after is not None:
                            await after(0, None)
                        return Answer(call, 0, problem=f"answer larger than {self.policy.max_bytes} bytes")
                    chunks.append(chunk)
            finally:
                await response.aclose()
        except BaseException:
            if after is not None:
                await asyncio.shield(after(0, None))  # also when the source's time ran out (cancelled)
            raise
        raw = b"".join(chunks)
        if after is not None:
            await after(response.status_code, raw)
        relayed = response.headers.get("ngsild-warning")
        if not raw.strip():
            return Answer(call, response.status_code, relayed=relayed)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            if 200 <= response.status_code < 300:
                return Answer(call, response.status_code, problem="the answer is not valid JSON")
            body = None
        return Answer(call, response.status_code, body, relayed=relayed)
