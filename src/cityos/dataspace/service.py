"""The data channel's core (framework-free): this city's key, its partners, its offers and catalogue,
contract negotiation as provider and as consumer, revocation, and what the rest of CityOS asks of it
(the principal a signed request acts as, the agreement policies, the signing of notifications).

State lives in the store (store/dataspace_base.py) and is cached here; a worker reads the store's
version at most once a second (POLL_SECONDS), so a change made by another worker or by the CLI on
the same database applies within a second everywhere.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from cityos.audit.events import AuditEvent, AuditSink
from cityos.auth.principal import Principal, PrincipalDirectory, current_request_id
from cityos.dataspace import model
from cityos.dataspace.client import Answer, PartnerClient, PartnerUnavailable, answer_digest
from cityos.dataspace.model import Agreement
from cityos.dataspace.signatures import AGREEMENT_HEADER, PURPOSE_HEADER, SigningKey, content_digest, sign_request
from cityos.errors import BadRequestData, InvalidRequest, ResourceNotFound
from cityos.federation.client import AfterAnswer
from cityos.net import OutboundPolicy, OutboundRefused
from cityos.store.dataspace_base import DataspaceStore

log = logging.getLogger("cityos.dataspace")
POLL_SECONDS = 1.0
# a partner, offer or agreement this worker does not know may have just been made by another worker
# (a negotiation's steps can each reach a different one): it reads the records again at once, at
# most this often, so unknown names sent on purpose cost no more than that
MISS_SECONDS = 0.05
INBOX = "/cityos/v1/dataspace/inbox/"
DSP = "/dsp"
KEY_ID = "self"


def load_key(doc: dict[str, Any]) -> SigningKey:
    return SigningKey(doc["name"], Ed25519PrivateKey.from_private_bytes(base64.b64decode(doc["private"])))


async def ensure_key(
    store: DataspaceStore, name: str | None = None, url: str | None = None, *, by: str = "cli"
) -> dict[str, Any]:
    """This city's key record, created on first use (named `name`, or cityos-<key prefix>); a
    `name` or `url` (the base URL partners reach this city at) given for an existing key changes
    them (the key stays). Kept in the database only: never logged, never in an API answer."""
    _, rows = await store.load_records("key")
    if rows and rows[0].document is not None:
        doc = rows[0].document
        wanted = {**doc, **({"name": name} if name else {}), **({"url": url.rstrip("/")} if url else {})}
        if wanted != doc:
            model.check_partner(
                {"name": wanted["name"], "url": wanted.get("url", "http://x"), "publicKey": _public_of(doc)}
            )
            await store.change_record("key", KEY_ID, wanted, by=by)
        return wanted
    private = Ed25519PrivateKey.generate()
    raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = model.public_text(private.public_key())
    chosen = name or "cityos-" + public.removeprefix("ed25519:")[:8].replace("/", "_").replace("+", "-")
    doc = {"name": chosen, "private": model.b64(raw), "publicKey": public, "created": model.now_text()}
    if url:
        doc["url"] = url.rstrip("/")
    model.check_partner({"name": chosen, "url": doc.get("url", "http://x"), "publicKey": public})
    await store.change_record("key", KEY_ID, doc, by=by)
    return doc


def _public_of(doc: dict[str, Any]) -> str:
    return str(doc["publicKey"])


def identity_of(key: SigningKey) -> dict[str, str]:
    return {"name": key.keyid, "publicKey": model.public_text(key.private.public_key())}


class DataspaceService:
    """One per worker (and one per CLI command that acts for the city)."""

    def __init__(
        self,
        store: DataspaceStore,
        audit: Callable[[], AuditSink],
        *,
        allow_private_networks: bool,
        base_url: str = "",
        on_agreements: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self._audit = audit
        self.allow_private_networks = allow_private_networks
        self.base_url = base_url.rstrip("/")
        self.on_agreements = on_agreements  # the policy service reloads (agreements are policies)
        self.key: SigningKey | None = None
        self.partners: dict[str, dict[str, Any]] = {}
        self.offers: dict[str, dict[str, Any]] = {}
        self.agreements: dict[str, Agreement] = {}
        self.public_url: str | None = None  # the key's `url`, when one was given: signed target URIs start with it
        self._version = -1
        self._polled = 0.0
        self._lock = asyncio.Lock()
        self._client: PartnerClient | None = None
        self._public: dict[str, Ed25519PublicKey] = {}

    # -- state -----------------------------------------------------------------------------------
    async def start(self) -> None:
        self._use_key(await ensure_key(self.store, by="server"))
        await self.refresh(force=True)

    def _use_key(self, doc: dict[str, Any]) -> None:
        self.key = load_key(doc)
        self.base_url = doc.get("url", self.base_url)
        self.public_url = doc.get("url")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def refresh(self, *, force: bool = False) -> None:
        """Read the records again when the store's version moved (at most once per POLL_SECONDS)."""
        now = time.monotonic()
        if not force and now - self._polled < POLL_SECONDS:
            return
        async with self._lock:
            if not force and now - self._polled < POLL_SECONDS:
                return
            self._polled = now
            version, partners = await self.store.load_records("partner")
            if version == self._version:
                return
            _, offers = await self.store.load_records("offer")
            _, agreements = await self.store.load_records("agreement")
            _, keys = await self.store.load_records("key")
            if keys and keys[0].document is not None:
                self._use_key(keys[0].document)
            self.partners = {r.id: r.document for r in partners if r.document is not None}
            self._public = {name: model.public_key(doc["publicKey"]) for name, doc in self.partners.items()}
            self.offers = {r.id: r.document for r in offers if r.document is not None}
            before = {k: a.doc for k, a in self.agreements.items()}
            self.agreements = {r.id: Agreement(r.document) for r in agreements if r.document is not None}
            self._version = version
        if before != {k: a.doc for k, a in self.agreements.items()} and self.on_agreements is not None:
            await self.on_agreements()

    async def refresh_on_miss(self) -> None:
        """Read the records again now, for a name this worker did not find (MISS_SECONDS)."""
        if time.monotonic() - self._polled >= MISS_SECONDS:
            await self.refresh(force=True)

    @property
    def signing_key(self) -> SigningKey:
        if self.key is None:
            raise InvalidRequest("this city has no key yet: run `cityos dataspace init --name NAME`")
        return self.key

    def client(self) -> PartnerClient:
        if self._client is None:
            self._client = PartnerClient(
                self.signing_key, self._audit(), allow_private_networks=self.allow_private_networks
            )
        return self._client

    def public_key_of(self, keyid: str) -> Ed25519PublicKey | None:
        return self._public.get(keyid)

    async def record(self, operation: str, targets: Sequence[str], detail: dict[str, Any], **kw: Any) -> None:
        event = AuditEvent(
            principal=kw.pop("principal", "dataspace"),
            operation=operation,
            tenant="",
            targets=list(targets),
            request_id=current_request_id.get(),
            detail=detail,
            **kw,
        )
        await self._audit().record([event])

    # -- partners --------------------------------------------------------------------------------
    async def add_partner(self, document: Any, *, by: str) -> dict[str, Any]:
        """Trust a partner; its URL must pass the outgoing-address rule now (a private or loopback
        address only with --allow-private-networks), not first at the first request to it."""
        partner = model.check_partner(document)
        try:
            OutboundPolicy(allow_private_networks=self.allow_private_networks).check_url(partner["url"])
        except OutboundRefused as exc:
            raise BadRequestData(
                f"the partner URL {partner['url']} is refused: {exc} (`cityos partners add` takes"
                " --allow-private-networks too)"
            ) from exc
        await self.store.change_record("partner", partner["name"], partner, by=by)
        await self.record("dataspace.partner.add", [partner["name"]], {"url": partner["url"]}, principal=by)
        await self.refresh(force=True)
        return partner

    async def remove_partner(self, name: str, *, by: str) -> None:
        if await self.store.change_record("partner", name, None, by=by) is None:
            raise ResourceNotFound(f"partner {name} does not exist")
        await self.record("dataspace.partner.remove", [name], {}, principal=by)
        await self.refresh(force=True)

    def partner(self, name: str) -> dict[str, Any]:
        found = self.partners.get(name)
        if found is None:
            raise ResourceNotFound(f"partner {name} does not exist")
        return found

    # -- offers ----------------------------------------------------------------------------------
    async def publish(self, document: Any, *, by: str) -> dict[str, Any]:
        offer = model.check_offer(document)
        await self.store.change_record("offer", offer["id"], offer, by=by)
        await self.record("dataspace.offer.publish", [offer["id"]], {"terms": offer["terms"]}, principal=by)
        await self.refresh(force=True)
        return offer

    async def withdraw(self, offer_id: str, *, by: str) -> None:
        """No new agreements for the offer; agreements already made stand until revoked or expired."""
        if await self.store.change_record("offer", offer_id, None, by=by) is None:
            raise ResourceNotFound(f"offer {offer_id} does not exist")
        await self.record("dataspace.offer.withdraw", [offer_id], {}, principal=by)
        await self.refresh(force=True)

    def catalog(self, partner: str) -> dict[str, Any]:
        return model.catalog(list(self.offers.values()), self.signing_key.keyid, self.base_url, partner)

    # -- negotiation: provider side (the partner's signed DSP messages) --------------------------
    async def on_contract_request(self, partner: str, message: Any) -> dict[str, Any]:
        """ContractRequestMessage -> ContractAgreementMessage, the agreement signed by this city."""
        if not isinstance(message, dict) or message.get("@type") != "ContractRequestMessage":
            raise BadRequestData("a ContractRequestMessage is expected")
        offer_ref = message.get("offer")
        offer_id = offer_ref.get("@id") if isinstance(offer_ref, dict) else offer_ref
        if not isinstance(offer_id, str):
            raise BadRequestData("the message names no offer")
        offer = self.offers.get(offer_id.rsplit(":", 1)[-1])
        if offer is None:
            await self.refresh_on_miss()
            offer = self.offers.get(offer_id.rsplit(":", 1)[-1])
        if offer is None:
            raise ResourceNotFound(f"offer {offer_id} does not exist")
        purpose = message.get("cityos:purpose")
        if not isinstance(purpose, str):
            raise BadRequestData("the message names no cityos:purpose")
        doc = model.new_agreement(offer, self.signing_key.keyid, partner, purpose, f"urn:uuid:{uuid.uuid4()}")
        doc["providerSignature"] = model.sign_agreement(doc, self.signing_key.private)
        doc["consumerPid"] = str(message.get("consumerPid", ""))
        doc["state"], doc["role"] = "AGREED", "provider"
        await self.store.change_record("agreement", doc["id"], doc, by=f"partner:{partner}", create=True)
        await self.record("dataspace.agreement.offered", [doc["id"]], {"partner": partner, "offer": offer["id"]})
        await self.refresh(force=True)
        return {
            "@context": [model.DSP_CONTEXT],
            "@type": "ContractAgreementMessage",
            "providerPid": doc["id"],
            "consumerPid": doc["consumerPid"],
            "agreement": model.dsp_agreement(doc),
            "cityos:agreement": _public_doc(doc),
        }

    async def on_verification(self, partner: str, provider_pid: str, message: Any) -> dict[str, Any]:
        """ContractAgreementVerificationMessage: the consumer's countersignature; the agreement is
        FINALIZED and, from now on, served."""
        if provider_pid not in self.agreements:
            await self.refresh_on_miss()
        agreement = self._agreement(provider_pid, "provider", partner)
        if not isinstance(message, dict) or message.get("@type") != "ContractAgreementVerificationMessage":
            raise BadRequestData("a ContractAgreementVerificationMessage is expected")
        signature = message.get("cityos:signature")
        key = self.public_key_of(partner)
        if key is None or not model.agreement_signed_by(agreement.doc, signature, key):
            raise BadRequestData("the countersignature does not verify against the agreement")
        if agreement.doc["state"] != "AGREED":
            raise BadRequestData(f"agreement {provider_pid} is {agreement.doc['state']}")
        doc = {**agreement.doc, "consumerSignature": signature, "state": "FINALIZED"}
        await self.store.change_record("agreement", doc["id"], doc, by=f"partner:{partner}")
        await self.record("dataspace.agreement.finalized", [doc["id"]], _proof(doc))
        await self.refresh(force=True)
        return _event(doc, "FINALIZED")

    async def on_termination(self, partner: str, pid: str, message: Any) -> dict[str, Any]:
        """ContractNegotiationTerminationMessage from either side: the agreement ends at once."""
        if pid not in self.agreements:
            await self.refresh_on_miss()
        agreement = self.agreements.get(pid)
        if agreement is None or partner not in (agreement.doc["provider"], agreement.doc["consumer"]):
            raise ResourceNotFound(f"agreement {pid} does not exist")
        reason = message.get("reason") if isinstance(message, dict) else None
        await self._terminate(agreement, by=f"partner:{partner}", reason=str(reason or "terminated by the partner"))
        return _event(self.agreements[pid].doc, "TERMINATED")

    def _agreement(self, agreement_id: str, role: str, partner: str) -> Agreement:
        agreement = self.agreements.get(agreement_id)
        other = "consumer" if role == "provider" else "provider"
        if agreement is None or agreement.doc.get("role") != role or agreement.doc[other] != partner:
            raise ResourceNotFound(f"agreement {agreement_id} does not exist")
        return agreement

    # -- negotiation: consumer side --------------------------------------------------------------
    async def negotiate(self, partner_name: str, offer_id: str, purpose: str, *, by: str) -> dict[str, Any]:
        """Ask `partner_name` for its offer: request, check and countersign its agreement, send the
        countersignature; both sides then hold the same agreement signed by both."""
        partner = self.partner(partner_name)
        client = self.client()
        request = {
            "@context": [model.DSP_CONTEXT],
            "@type": "ContractRequestMessage",
            "consumerPid": f"urn:uuid:{uuid.uuid4()}",
            "offer": {"@id": f"urn:cityos:offer:{partner_name}:{offer_id}"},
            "callbackAddress": self.base_url,
            "cityos:purpose": purpose,
        }
        answer = _ok(
            await client.send(partner_name, "POST", f"{partner['url']}{DSP}/negotiations/request", body=request)
        )
        doc = answer.get("cityos:agreement") if isinstance(answer, dict) else None
        if not isinstance(doc, dict) or any(k not in doc for k in model.SIGNED_MEMBERS):
            raise PartnerUnavailable(f"{partner_name} answered no agreement")
        if doc["consumer"] != self.signing_key.keyid or doc["provider"] != partner_name or doc["offer"] != offer_id:
            raise PartnerUnavailable(f"{partner_name} answered an agreement for another party or offer")
        if doc["terms"].get("purpose") != purpose:
            raise PartnerUnavailable(f"{partner_name} answered an agreement for another purpose")
        if not model.agreement_signed_by(doc, doc.get("providerSignature"), self._public[partner_name]):
            raise PartnerUnavailable(f"{partner_name}'s signature of the agreement does not verify")
        signature = model.sign_agreement(doc, self.signing_key.private)
        verification = {
            "@context": [model.DSP_CONTEXT],
            "@type": "ContractAgreementVerificationMessage",
            "providerPid": doc["id"],
            "consumerPid": request["consumerPid"],
            "cityos:signature": signature,
        }
        url = f"{partner['url']}{DSP}/negotiations/{quote(doc['id'], safe='')}/agreement/verification"
        _ok(await client.send(partner_name, "POST", url, body=verification))
        mine = {**{k: doc[k] for k in model.SIGNED_MEMBERS}, "providerSignature": doc["providerSignature"]}
        mine.update(consumerSignature=signature, consumerPid=request["consumerPid"], state="FINALIZED", role="consumer")
        await self.store.change_record("agreement", mine["id"], mine, by=by, create=True)
        await self.record("dataspace.agreement.finalized", [mine["id"]], _proof(mine), principal=by)
        await self.refresh(force=True)
        return mine

    # -- revocation ------------------------------------------------------------------------------
    async def revoke(self, agreement_id: str, *, by: str, reason: str = "revoked") -> dict[str, Any]:
        """End an agreement from this side, at once, and tell the partner (best effort: the partner
        being down does not keep the agreement alive here)."""
        agreement = self.agreements.get(agreement_id)
        if agreement is None:
            raise ResourceNotFound(f"agreement {agreement_id} does not exist")
        await self._terminate(agreement, by=by, reason=reason)
        doc = agreement.doc
        other = doc["consumer"] if doc.get("role") == "provider" else doc["provider"]
        partner = self.partners.get(other)
        if partner is not None:
            message = {
                "@context": [model.DSP_CONTEXT],
                "@type": "ContractNegotiationTerminationMessage",
                "providerPid": doc["id"],
                "consumerPid": doc.get("consumerPid", ""),
                "reason": reason,
            }
            url = f"{partner['url']}{DSP}/negotiations/{quote(doc['id'], safe='')}/termination"
            try:
                await self.client().send(other, "POST", url, body=message)
            except PartnerUnavailable as exc:
                log.warning("could not tell %s that agreement %s ended: %s", other, doc["id"], exc.detail)
        return self.agreements[agreement_id].doc

    async def _terminate(self, agreement: Agreement, *, by: str, reason: str) -> None:
        if agreement.doc.get("state") == "TERMINATED":
            return
        doc = {**agreement.doc, "state": "TERMINATED", "terminatedAt": model.now_text(), "reason": reason}
        await self.store.change_record("agreement", doc["id"], doc, by=by)
        await self.record("dataspace.agreement.terminated", [doc["id"]], {"reason": reason}, principal=by)
        await self.refresh(force=True)

    # -- what the rest of CityOS asks ------------------------------------------------------------
    def served(self, agreement_id: str, partner: str) -> Agreement | None:
        """The agreement a signed request from `partner` names, if this city serves it now."""
        agreement = self.agreements.get(agreement_id)
        if agreement is None or agreement.doc.get("role") != "provider" or agreement.doc["consumer"] != partner:
            return None
        return agreement if agreement.active() else None

    def policy_documents(self) -> list[dict[str, Any]]:
        """The agreements this city serves, as access policies (model.policy_documents)."""
        return [
            policy
            for a in self.agreements.values()
            if a.doc.get("role") == "provider" and a.doc.get("state") == "FINALIZED"
            for policy in model.policy_documents(a.doc)
        ]

    def principal(self, agreement: Agreement) -> Principal:
        return Principal(
            id=model.principal_id(agreement.id),
            kind="partner",
            tenants=frozenset({model.tenant_of(agreement.doc)}),
            client=agreement.doc["consumer"],
        )

    def partner_of_url(self, url: str) -> tuple[str, str] | None:
        """(partner, agreement id) when `url` is a partner's inbox for an agreement of ours."""
        parts = urlsplit(url)
        if not parts.path.startswith(INBOX):
            return None
        for name, partner in self.partners.items():
            if url.startswith(partner["url"] + INBOX):
                return name, parts.path[len(INBOX) :]
        return None

    def source_registration(self, agreement_id: str) -> dict[str, Any]:
        """The context source registration (spec 5.2.9) that makes this city forward its users'
        queries and retrieves of an agreement's dataset to the provider, signed under the agreement
        (`sign_forwarded`): the provider's URL as endpoint, the agreed types and area, until the
        agreement expires, and the agreement in its contextSourceInfo."""
        agreement = self.agreements.get(agreement_id)
        if agreement is None or agreement.doc.get("role") != "consumer":
            raise ResourceNotFound(f"this city holds no agreement {agreement_id} as consumer")
        provider = agreement.doc["provider"]
        data, terms = agreement.doc["dataset"], agreement.terms
        if terms["aggregation"] != "per-entity":
            raise BadRequestData(f"agreement {agreement_id} allows aggregates only: forwarded queries ask for entities")
        registration: dict[str, Any] = {
            "id": "urn:ngsi-ld:ContextSourceRegistration:" + agreement_id.rsplit(":", 1)[-1],
            "type": "ContextSourceRegistration",
            "registrationName": f"{provider}: {agreement.doc['offer']} (agreement {agreement_id})",
            "information": [{"entities": [{"type": t} for t in data["types"]]}],
            "endpoint": self.partner(provider)["url"],
            "mode": "inclusive",
            "operations": ["retrieveOps"],
            "expiresAt": terms["expires"],
            "contextSourceInfo": [
                {"key": AGREEMENT_HEADER, "value": agreement_id},
                {"key": PURPOSE_HEADER, "value": terms["purpose"]},
            ],
        }
        if "area" in data:
            registration["location"] = data["area"]
        return registration

    def partner_at(self, url: str) -> str | None:
        """The partner whose base URL `url` is under, if any."""
        for name, partner in self.partners.items():
            base = partner["url"]
            if url == base or url.startswith(base + "/"):
                return name
        return None

    async def sign_forwarded(self, request: httpx.Request, registration: dict[str, Any]) -> AfterAnswer | None:
        """federation/'s signer hook: a request forwarded to a registration whose endpoint is a
        partner city is signed, names the agreement its contextSourceInfo gives (`CityOS-Agreement`,
        as `cityos agreements source` writes it) with the agreement's purpose, and is recorded
        ("dataspace.request.sent", with the answer's digest once it came), so the partner's door
        can enforce the agreement and both audit trails hold the same nonce and digests. Requests
        to other sources go as they are."""
        await self.refresh()
        url = str(request.url)
        partner = self.partner_at(url)
        if partner is None or self.key is None:
            return None
        agreement_id = request.headers.get(AGREEMENT_HEADER)
        agreement = self.agreements.get(agreement_id or "")
        if agreement is not None and agreement.doc.get("role") == "consumer" and PURPOSE_HEADER not in request.headers:
            request.headers[PURPOSE_HEADER] = agreement.terms["purpose"]
        body = request.content
        wanted = {k: request.headers[k] for k in (AGREEMENT_HEADER, PURPOSE_HEADER) if k in request.headers}
        signed = sign_request(request.method, url, wanted, body, self.key)
        for name in ("Date", "Content-Digest", "Signature-Input", "Signature"):
            request.headers[name] = signed[name]
        detail: dict[str, Any] = {
            "partner": partner,
            "method": request.method,
            "target": url,
            "requestDigest": signed["Content-Digest"],
            "nonce": signed["Signature-Input"].split(';nonce="', 1)[1].split('"', 1)[0],
            "registration": registration.get("id"),
        }
        if agreement_id:
            detail["agreement"] = agreement_id

        async def after(status: int, answer: bytes | None) -> None:
            more = {"status": status} if answer is None else {"status": status, "answerDigest": answer_digest(answer)}
            await self.record(
                "dataspace.request.sent",
                [agreement_id or url],
                {**detail, **more},
                principal=f"partner:{partner}",
                outcome="ok" if 0 < status < 400 else "failed",
            )

        return after

    async def sign_notification(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes
    ) -> list[tuple[str, str]]:
        """The subscription sender's hook: a notification to a partner's inbox is signed and
        recorded ("dataspace.notification.sent", with its digest and nonce); others go as they are."""
        target = self.partner_of_url(url)
        if target is None or self.key is None:
            return headers
        partner, agreement_id = target
        signed = sign_request(method, url, {**dict(headers), AGREEMENT_HEADER: agreement_id}, body, self.key)
        nonce = signed["Signature-Input"].split(';nonce="', 1)[1].split('"', 1)[0]
        await self.record(
            "dataspace.notification.sent",
            [agreement_id],
            {"partner": partner, "target": url, "requestDigest": content_digest(body), "nonce": nonce},
            principal=model.principal_id(agreement_id),
        )
        return list(signed.items())


def _public_doc(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in ("role", "state", "consumerPid")}


def _proof(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "partner": doc["consumer"] if doc.get("role") == "provider" else doc["provider"],
        "offer": doc["offer"],
        "providerSignature": doc.get("providerSignature"),
        "consumerSignature": doc.get("consumerSignature"),
    }


def _event(doc: dict[str, Any], event: str) -> dict[str, Any]:
    return {
        "@context": [model.DSP_CONTEXT],
        "@type": "ContractNegotiationEventMessage",
        "providerPid": doc["id"],
        "consumerPid": doc.get("consumerPid", ""),
        "eventType": event,
    }


def _ok(answer: Answer) -> Any:
    if answer.status >= 400:
        body = answer.json() if answer.body.startswith(b"{") else {}
        raise PartnerUnavailable(f"the partner refused (HTTP {answer.status}): {body.get('detail', '')}")
    return answer.json()


class AgreementDirectory:
    """The PrincipalDirectory that also finds "agreement:<id>" principals (the owners of the
    subscriptions partners hold here) while the agreement is served; None once it is revoked or
    expired, which stops those subscriptions (subscriptions/access.py OwnerGone)."""

    def __init__(self, inner: PrincipalDirectory, service: DataspaceService) -> None:
        self.inner, self.service = inner, service

    async def lookup(self, principal_id: str) -> Principal | None:
        if not principal_id.startswith("agreement:"):
            return await self.inner.lookup(principal_id)
        await self.service.refresh()
        agreement = self.service.agreements.get(principal_id.removeprefix("agreement:"))
        if agreement is None or agreement.doc.get("role") != "provider" or not agreement.active(datetime.now(UTC)):
            return None
        return self.service.principal(agreement)
