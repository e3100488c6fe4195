"""Sending one notification: HTTP(S) POST, or an MQTT publish (spec 5.8.x, MQTT binding clause 7.x).

Every target is checked against the outgoing-request policy (net.OutboundPolicy) first: no
loopback or private addresses unless allow_private_networks is set. Requests have a timeout, the
body a size limit, and redirects are not followed.
"""

from __future__ import annotations

import ipaddress
import ssl
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import orjson

from cityos.errors import BadRequestData
from cityos.net import ALLOW_PRIVATE_HINT, OutboundPolicy, OutboundRefused

JSON = "application/json"
MQTT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def check_endpoint(uri: str, allow_private_networks: bool) -> None:
    """Refuse, when the subscription is made, an endpoint that can never be allowed: a loopback
    or private address written literally. Names are resolved and checked at each delivery."""
    if allow_private_networks:
        return
    host = urlsplit(uri).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        raise BadRequestData(f"notification endpoint {host} is a loopback address; {ALLOW_PRIVATE_HINT}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return
    if not address.is_global:
        raise BadRequestData(f"notification endpoint {host} is not a public address; {ALLOW_PRIVATE_HINT}")


class DeliveryFailed(Exception):
    """The receiver did not take the notification. `permanent`: trying again cannot help."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


@dataclass(frozen=True)
class Outgoing:
    """A rendered notification and where it goes."""

    uri: str
    notification: dict[str, Any]
    content_type: str = JSON
    link: str | None = None  # the Link header value (accept application/json)
    receiver_info: list[tuple[str, str]] = field(default_factory=list)  # extra headers / MQTT metadata
    notifier_info: dict[str, str] = field(default_factory=dict)  # MQTT-QoS, MQTT-Version


class Sender:
    """Delivers notifications; one pooled HTTP client for all endpoints."""

    def __init__(self, policy: OutboundPolicy, *, timeout: float, max_bytes: int) -> None:
        self.policy = policy
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._http = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )

    async def close(self) -> None:
        await self._http.aclose()

    def _body(self, payload: Any) -> bytes:
        # orjson writes raw UTF-8 and compact JSON, as receivers such as the ETSI suite expect
        body = orjson.dumps(payload)
        if len(body) > self.max_bytes:
            raise DeliveryFailed(f"the notification is {len(body)} bytes, over {self.max_bytes}", permanent=True)
        return body

    async def _check(self, url: str) -> None:
        try:
            await self.policy.check_target(url)
        except OutboundRefused as exc:
            raise DeliveryFailed(str(exc)) from exc

    async def send(self, outgoing: Outgoing) -> None:
        scheme = urlsplit(outgoing.uri).scheme
        if scheme in MQTT_PORTS:
            await self._publish(outgoing)
        else:
            await self._post(outgoing)

    async def _post(self, outgoing: Outgoing) -> None:
        body = self._body(outgoing.notification)
        await self._check(outgoing.uri)
        headers = [("Content-Type", outgoing.content_type)]
        if outgoing.link is not None:
            headers.append(("Link", outgoing.link))
        headers.extend(outgoing.receiver_info)
        try:
            async with self._http.stream("POST", outgoing.uri, content=body, headers=headers) as response:
                status = response.status_code  # the body of the answer is never read
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{outgoing.uri}: {type(exc).__name__}: {exc}") from exc
        if not 200 <= status < 300:
            raise DeliveryFailed(f"{outgoing.uri} answered HTTP {status}")

    async def _publish(self, outgoing: Outgoing) -> None:
        """MQTT: the message is {"metadata": {headers}, "body": notification}, published to the
        topic named by the URI path, with the QoS and protocol version of notifierInfo."""
        import aiomqtt  # imported only when an MQTT endpoint is used

        parts = urlsplit(outgoing.uri)
        host = parts.hostname or ""
        port = parts.port or MQTT_PORTS[parts.scheme]
        # the address rule is the same for every scheme: check it as the HTTP URL of that host
        await self._check(f"http://{parts.netloc.rpartition('@')[2]}/")
        metadata: dict[str, str] = {"Content-Type": outgoing.content_type}
        if outgoing.link is not None:
            metadata["Link"] = outgoing.link
        metadata.update(outgoing.receiver_info)
        body = self._body({"metadata": metadata, "body": outgoing.notification})
        version = outgoing.notifier_info.get("MQTT-Version", "mqtt3.1.1")
        protocol = aiomqtt.ProtocolVersion.V5 if version == "mqtt5.0" else aiomqtt.ProtocolVersion.V311
        qos = int(outgoing.notifier_info.get("MQTT-QoS", "0"))
        client = aiomqtt.Client(
            host,
            port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            identifier=f"cityos-{uuid.uuid4().hex[:12]}",
            protocol=protocol,
            timeout=self.timeout,
            tls_context=ssl.create_default_context() if parts.scheme == "mqtts" else None,
        )
        try:
            async with client:
                await client.publish(parts.path.lstrip("/"), body, qos=qos, timeout=self.timeout)
        except (aiomqtt.MqttError, OSError) as exc:
            raise DeliveryFailed(f"{host}:{port}: {type(exc).__name__}: {exc}") from exc
