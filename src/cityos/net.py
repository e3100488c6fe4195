"""The outgoing-request policy: every request CityOS makes (remote @contexts, later notifications)
goes through here, with a timeout, a size limit and a refusal of private and loopback addresses
unless `allow_private_networks` is set."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

MAX_REDIRECTS = 3


class OutboundRefused(Exception):
    """The target is not allowed, unreachable, too slow or too large."""


@dataclass(frozen=True)
class OutboundPolicy:
    allow_private_networks: bool = False
    timeout: float = 5.0
    max_bytes: int = 1_048_576

    async def check_target(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise OutboundRefused(f"scheme {parts.scheme!r} is not allowed")
        host = parts.hostname
        if not host:
            raise OutboundRefused("URL has no host")
        if self.allow_private_networks:
            return
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 0, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise OutboundRefused(f"cannot resolve {host}: {exc}") from exc
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if not address.is_global:
                raise OutboundRefused(
                    f"{host} resolves to the non-public address {address}; set allow_private_networks to permit it"
                )

    def client(self) -> httpx.AsyncClient:
        """A client for `get` to share: building one costs an SSL context, blocking the event loop.
        It keeps no idle connection: each request connects to the target it checked."""
        return httpx.AsyncClient(
            timeout=self.timeout, follow_redirects=False, limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def get(
        self, url: str, accept: str, headers: dict[str, str] | None = None, *, client: httpx.AsyncClient | None = None
    ) -> bytes:
        """GET a resource under the policy, following up to MAX_REDIRECTS redirects, each target
        checked again; returns the body or raises OutboundRefused. `client` (from `client()`) is
        used if given, otherwise one is made for this call."""
        try:
            async with contextlib.AsyncExitStack() as stack:
                if client is None:
                    client = await stack.enter_async_context(self.client())
                for _ in range(MAX_REDIRECTS + 1):
                    await self.check_target(url)
                    async with client.stream("GET", url, headers={**(headers or {}), "Accept": accept}) as response:
                        if response.is_redirect and "location" in response.headers:
                            url = str(response.url.join(response.headers["location"]))
                            continue
                        if response.status_code != 200:
                            raise OutboundRefused(f"{url} answered HTTP {response.status_code}")
                        chunks: list[bytes] = []
                        size = 0
                        async for chunk in response.aiter_bytes():
                            size += len(chunk)
                            if size > self.max_bytes:
                                raise OutboundRefused(f"{url} is larger than {self.max_bytes} bytes")
                            chunks.append(chunk)
                        return b"".join(chunks)
                raise OutboundRefused(f"more than {MAX_REDIRECTS} redirects")
        except httpx.HTTPError as exc:
            raise OutboundRefused(f"{url}: {type(exc).__name__}: {exc}") from exc
