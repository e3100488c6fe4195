"""Signed requests to a partner city: bounded (a timeout, an answer size limit, the outgoing-address
rule of net.OutboundPolicy), signed (signatures.py), and recorded in this city's audit trail with
the digests of what was sent and what came back, so either side can prove the exchange."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from cityos.audit.events import AuditEvent, AuditSink
from cityos.auth.principal import current_request_id
from cityos.dataspace.signatures import (
    AGREEMENT_HEADER,
    PURPOSE_HEADER,
    SigningKey,
    content_digest,
    sign_request,
)
from cityos.errors import NgsiLdError
from cityos.net import OutboundPolicy, OutboundRefused

TIMEOUT = 10.0
MAX_ANSWER_BYTES = 16 * 1024 * 1024


class PartnerUnavailable(NgsiLdError):
    """The partner could not be reached, did not answer in time, or answered too much (a 502:
    never a hang, never a 500)."""

    type_name, status, title = "PartnerUnavailable", 502, "Partner unavailable"

    @property
    def type_uri(self) -> str:
        return "urn:cityos:errors:PartnerUnavailable"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


def answer_digest(body: bytes) -> str:
    return "sha-256=" + hashlib.sha256(body).hexdigest()


class PartnerClient:
    """One pooled HTTP client for the signed requests this city sends its partners."""

    def __init__(
        self, key: SigningKey, audit: AuditSink, *, allow_private_networks: bool, timeout: float = TIMEOUT
    ) -> None:
        self.key = key
        self.audit = audit
        self.policy = OutboundPolicy(
            allow_private_networks=allow_private_networks, timeout=timeout, max_bytes=MAX_ANSWER_BYTES
        )
        self._http = self.policy.client(timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(
        self,
        partner: str,
        method: str,
        url: str,
        *,
        body: Any = None,
        agreement: str | None = None,
        purpose: str | None = None,
        content_type: str = "application/json",
    ) -> Answer:
        """Sign and send; the answer is read whole (up to MAX_ANSWER_BYTES) and recorded."""
        content = b"" if body is None else orjson.dumps(body)
        headers: dict[str, str] = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        if agreement is not None:
            headers[AGREEMENT_HEADER] = agreement
        if purpose is not None:
            headers[PURPOSE_HEADER] = purpose
        signed = sign_request(method, url, headers, content, self.key)
        detail: dict[str, Any] = {
            "partner": partner,
            "method": method,
            "target": url,
            "requestDigest": content_digest(content),
            "nonce": _nonce(signed["Signature-Input"]),
        }
        if agreement is not None:
            detail["agreement"] = agreement
        try:
            self.policy.check_url(url)
            async with self._http.stream(method, url, content=content, headers=signed) as response:
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_ANSWER_BYTES:
                        raise PartnerUnavailable(f"{partner} answered more than {MAX_ANSWER_BYTES} bytes")
                    chunks.append(chunk)
                answer = Answer(response.status_code, dict(response.headers), b"".join(chunks))
        except (OutboundRefused, httpx.HTTPError) as exc:
            await self._record(detail, "failed", error=f"{type(exc).__name__}: {exc}")
            raise PartnerUnavailable(f"{partner} could not be reached: {type(exc).__name__}") from exc
        except PartnerUnavailable as exc:
            await self._record(detail, "failed", error=exc.detail)
            raise
        await self._record(
            detail,
            "ok" if answer.status < 400 else "failed",
            status=answer.status,
            answerDigest=answer_digest(answer.body),
        )
        return answer

    async def _record(self, detail: dict[str, Any], outcome: str, **more: Any) -> None:
        event = AuditEvent(
            principal=f"partner:{detail['partner']}",
            operation="dataspace.request.sent",
            tenant="",
            targets=[detail.get("agreement", detail["target"])],
            outcome=outcome,
            request_id=current_request_id.get(),
            detail={**detail, **more},
        )
        await self.audit.record([event])


def _nonce(signature_input: str) -> str:
    marker = ';nonce="'
    start = signature_input.index(marker) + len(marker)
    return signature_input[start : signature_input.index('"', start)]
