"""The outgoing-request policy: every request CityOS makes (remote @contexts, notifications,
forwarded retrievals) goes through here, with a timeout, a size limit and a refusal of non-public
addresses unless `allow_private_networks` is set.

The address rule is decided on the resolved address, in the place that connects: the HTTP client
of `OutboundPolicy.client()` resolves a name once, checks every address it got, and connects to
the checked address itself (TLS still verifies the certificate against the name), so a DNS
answer that changes between the check and the connection (rebinding) cannot reach a private
address. MQTT notifications do the same with `OutboundPolicy.resolve()` (subscriptions/delivery.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from cityos.redact import redact_uri

MAX_REDIRECTS = 3
ALLOW_PRIVATE_HINT = "start the server with --allow-private-networks (CITYOS_ALLOW_PRIVATE_NETWORKS=true) to permit it"
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# IPv6 prefixes that carry an IPv4 address in their last 32 bits: judged by that address
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible form, e.g. [::127.0.0.1]
LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: network-specific, never public
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


class OutboundRefused(Exception):
    """The target is not allowed, unreachable, too slow or too large."""


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, 6to4, NAT64 well-known prefix)."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: Address) -> bool:
    """May CityOS connect to `address` without --allow-private-networks? Only a globally routable
    unicast address; one that embeds an IPv4 address (mapped, 6to4, NAT64) is judged by that one,
    and the deprecated IPv4-compatible form (::a.b.c.d), local NAT64 and Teredo never pass."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in IPV4_COMPATIBLE or address in LOCAL_NAT64 or address.teredo is not None:
            return False
        inner = embedded_ipv4(address)
        if inner is not None:
            return is_public(inner)
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def is_local_name(host: str) -> bool:
    """A name that always means this machine, whatever DNS says (RFC 6761), trailing dot or not."""
    name = host.rstrip(".").lower()
    return name in LOCAL_NAMES or name.endswith(".localhost")


def literal_address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


def check_host(host: str) -> None:
    """The check that needs no DNS: a local name, or a literal address that is not public."""
    if is_local_name(host):
        raise OutboundRefused(f"{host} is a loopback name; {ALLOW_PRIVATE_HINT}")
    address = literal_address(host)
    if address is not None and not is_public(address):
        raise OutboundRefused(f"{host} is a non-public address; {ALLOW_PRIVATE_HINT}")


@dataclass(frozen=True)
class OutboundPolicy:
    allow_private_networks: bool = False
    timeout: float = 5.0
    max_bytes: int = 1_048_576

    def check_url(self, url: str) -> None:
        """Refuse what no resolution can make allowed: another scheme, no host, a local name or a
        non-public literal address. Names are judged when they are resolved, at connection time."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise OutboundRefused(f"scheme {parts.scheme!r} is not allowed")
        if not parts.hostname:
            raise OutboundRefused("URL has no host")
        if not self.allow_private_networks:
            check_host(parts.hostname)

    async def resolve(self, host: str, port: int) -> str:
        """The address to connect to for `host`: resolved once, every address it has checked (one
        non-public address refuses the name), the first one returned."""
        if self.allow_private_networks:
            return host
        check_host(host)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise OutboundRefused(f"cannot resolve {host}: {exc}") from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        for address in addresses:
            if not is_public(address):
                raise OutboundRefused(f"{host} resolves to the non-public address {address}; {ALLOW_PRIVATE_HINT}")
        if not addresses:
            raise OutboundRefused(f"cannot resolve {host}")
        return str(addresses[0])

    def client(self, **options: Any) -> httpx.AsyncClient:
        """An HTTP client whose every connection goes to an address this policy checked."""
        limits = options.pop("limits", httpx.Limits())
        transport = GuardedTransport(self, limits, options.pop("verify", None))
        options.setdefault("timeout", self.timeout)
        return httpx.AsyncClient(transport=transport, follow_redirects=False, **options)

    async def get(
        self, url: str, accept: str, headers: dict[str, str] | None = None, *, client: httpx.AsyncClient | None = None
    ) -> bytes:
        """GET a resource under the policy, following up to MAX_REDIRECTS redirects, each target
        checked again; returns the body or raises OutboundRefused. `client`: one of client()."""
        if client is None:
            async with self.client() as own:
                return await self.get(url, accept, headers, client=own)
        try:
            for _ in range(MAX_REDIRECTS + 1):
                self.check_url(url)
                async with client.stream("GET", url, headers={**(headers or {}), "Accept": accept}) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = str(response.url.join(response.headers["location"]))
                        continue
                    if response.status_code != 200:
                        raise OutboundRefused(f"{redact_uri(url)} answered HTTP {response.status_code}")
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise OutboundRefused(f"{redact_uri(url)} is larger than {self.max_bytes} bytes")
                        chunks.append(chunk)
                    return b"".join(chunks)
            raise OutboundRefused(f"more than {MAX_REDIRECTS} redirects")
        except httpx.HTTPError as exc:
            raise OutboundRefused(f"{redact_uri(url)}: {type(exc).__name__}: {exc}") from exc


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network layer with the policy in front of every TCP connection: the name is
    resolved and checked here and the socket opened to that very address. TLS runs afterwards
    on this stream with the original name (SNI and certificate check), as httpcore does it."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        address = await self.policy.resolve(host, port)
        return await self.inner.connect_tcp(
            address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise OutboundRefused("unix sockets are not an outgoing target")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool that connects through GuardedBackend. No proxy
    from the environment (HTTP_PROXY): a proxy would resolve the name itself, out of the
    policy's reach. SSL_CERT_FILE / SSL_CERT_DIR are still honoured."""

    def __init__(self, policy: OutboundPolicy, limits: httpx.Limits, verify: ssl.SSLContext | None = None) -> None:
        super().__init__(limits=limits, trust_env=False)
        # the pool httpx built, rebuilt with the guarded network backend (httpx has no option for it)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=verify or httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy),
        )
