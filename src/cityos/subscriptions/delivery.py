"""Sending one notification: HTTP(S) POST, or an MQTT publish (spec 5.8.x, MQTT binding clause 7.x).

Every target is checked against the outgoing-request policy (net.OutboundPolicy) first: no
loopback or private addresses unless allow_private_networks is set. Requests have a timeout, the
body a size limit, and redirects are not followed.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import orjson

from cityos.errors import BadRequestData
from cityos.net import OutboundPolicy, OutboundRefused, check_host
from cityos.redact import redact_uri

JSON = "application/json"
# signs an outgoing notification when its receiver expects that (dataspace/: a partner city's
# inbox): (method, url, headers, body) -> the headers to send
OutgoingSigner = Callable[[str, str, list[tuple[str, str]], bytes], Awaitable[list[tuple[str, str]]]]
MQTT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def check_endpoint(uri: str, allow_private_networks: bool) -> None:
    """Refuse, when the subscription is made, an endpoint that can never be allowed: a loopback
    name or a non-public address written literally (net.check_host). Names are resolved and
    checked at each delivery, on the connection itself."""
    if allow_private_networks:
        return
    try:
        check_host(urlsplit(uri).hostname or "")
    except OutboundRefused as exc:
        raise BadRequestData(f"notification endpoint {exc}") from exc


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
        # every connection goes to an address the policy checked (no second DNS lookup)
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        self._http = policy.client(limits=limits, timeout=timeout)
        self.sign: OutgoingSigner | None = None

    async def close(self) -> None:
        await self._http.aclose()

    def _body(self, payload: Any) -> bytes:
        # orjson writes raw UTF-8 and compact JSON, as receivers such as the ETSI suite expect
        body = orjson.dumps(payload)
        if len(body) > self.max_bytes:
            raise DeliveryFailed(f"the notification is {len(body)} bytes, over {self.max_bytes}", permanent=True)
        return body

    async def send(self, outgoing: Outgoing) -> None:
        scheme = urlsplit(outgoing.uri).scheme
        if scheme in MQTT_PORTS:
            await self._publish(outgoing)
        else:
            await self._post(outgoing)

    async def _post(self, outgoing: Outgoing) -> None:
        body = self._body(outgoing.notification)
        headers = [("Content-Type", outgoing.content_type)]
        if outgoing.link is not None:
            headers.append(("Link", outgoing.link))
        headers.extend(outgoing.receiver_info)
        if self.sign is not None:
            headers = await self.sign("POST", outgoing.uri, headers, body)
        where = redact_uri(outgoing.uri)  # messages end up in the log: no credentials
        try:
            self.policy.check_url(outgoing.uri)
            async with self._http.stream("POST", outgoing.uri, content=body, headers=headers) as response:
                status = response.status_code  # the body of the answer is never read
        except OutboundRefused as exc:
            raise DeliveryFailed(f"{where}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{where}: {type(exc).__name__}: {exc}") from exc
        if not 200 <= status < 300:
            raise DeliveryFailed(f"{where} answered HTTP {status}")

    async def _publish(self, outgoing: Outgoing) -> None:
        """MQTT: the message is {"metadata": {headers}, "body": notification}, published to the
        topic named by the URI path, with the QoS and protocol version of notifierInfo."""
        import aiomqtt  # imported only when an MQTT endpoint is used

        parts = urlsplit(outgoing.uri)
        host = parts.hostname or ""
        port = parts.port or MQTT_PORTS[parts.scheme]
        try:  # the address rule is the same for every scheme; the client connects to the checked address
            address = await self.policy.resolve(host, port)
        except OutboundRefused as exc:
            raise DeliveryFailed(str(exc)) from exc
        metadata: dict[str, str] = {"Content-Type": outgoing.content_type}
        if outgoing.link is not None:
            metadata["Link"] = outgoing.link
        metadata.update(outgoing.receiver_info)
        body = self._body({"metadata": metadata, "body": outgoing.notification})
        version = outgoing.notifier_info.get("MQTT-Version", "mqtt3.1.1")
        protocol = aiomqtt.ProtocolVersion.V5 if version == "mqtt5.0" else aiomqtt.ProtocolVersion.V311
        qos = int(outgoing.notifier_info.get("MQTT-QoS", "0"))
        client = aiomqtt.Client(
            address,
            port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            identifier=f"cityos-{uuid.uuid4().hex[:12]}",
            protocol=protocol,
            timeout=self.timeout,
            tls_context=_tls_for(host) if parts.scheme == "mqtts" else None,
        )
        try:
            async with client:
                await client.publish(parts.path.lstrip("/"), body, qos=qos, timeout=self.timeout)
        except (aiomqtt.MqttError, OSError) as exc:
            raise DeliveryFailed(f"{host}:{port}: {type(exc).__name__}: {exc}") from exc


class _NamedTLSContext(ssl.SSLContext):
    """A default TLS context that verifies the certificate against the endpoint's name while the
    MQTT client connects to the checked address (paho would send the address as SNI)."""

    server_name = ""

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["server_hostname"] = self.server_name or kwargs.get("server_hostname")
        return super().wrap_socket(sock, *args, **kwargs)


def _tls_for(host: str) -> ssl.SSLContext:
    context = _NamedTLSContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_default_certs()
    context.server_name = host
    return context
