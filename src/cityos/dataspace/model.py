"""Partners, offers and agreements as plain data: checked on the way in, rendered as the Dataspace
Protocol (DSP) and DCAT/ODRL shapes on the way out, and an agreement compiled into an access policy
(policy/model.py), so the policy engine enforces it like any other rule.

An offer (what City A publishes):

    {"id": "traffic-flow", "title": "Traffic flow on the ring road",
     "types": ["TrafficFlowObserved"], "attrs": ["intensity", "location"],
     "area": {GeoJSON Polygon}, "window": {"from": "2026-01-01T00:00:00Z", "until": null},
     "terms": {"assignees": ["Singapore"],      # who may ask (absent: any partner)
               "purposes": ["traffic-planning"], # the request names one of these
               "expires": "2027-01-01T00:00:00Z",
               "aggregation": "per-entity",      # or "aggregate": counts and temporal aggregates only
               "rate": 60}}                      # requests per minute; re-sharing is always prohibited
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cityos.errors import BadRequestData
from cityos.policy.geo import check_area
from cityos.policy.model import _instant as instant  # one reading of date-times

DSP_CONTEXT = "https://w3id.org/dspace/2025/1/context.jsonld"
CITYOS_NS = "https://cityos.dev/ns/dataspace#"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
OFFER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
TENANT_RE = re.compile(r"^[A-Za-z0-9_\-.:]{1,64}$")  # as ngsild/common.py
AGGREGATIONS = ("per-entity", "aggregate")
MAX_RATE = 100_000


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def public_key(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key written as "ed25519:<base64 of the 32 raw bytes>" (what `cityos
    dataspace show` prints), or BadRequestData."""
    raw = text.removeprefix("ed25519:")
    try:
        data = base64.b64decode(raw, validate=True)
        return Ed25519PublicKey.from_public_bytes(data)
    except ValueError as exc:
        raise BadRequestData("publicKey must be ed25519:<base64 of 32 bytes>") from exc


def public_text(key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return "ed25519:" + b64(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _names(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise BadRequestData(f"{where} must be a non-empty array of strings")
    return list(value)


def check_partner(document: Any) -> dict[str, Any]:
    """{"name", "url", "publicKey"}: a partner city as its operator gave it."""
    if not isinstance(document, dict) or set(document) - {"name", "url", "publicKey"}:
        raise BadRequestData("a partner is {name, url, publicKey}")
    name, url = document.get("name"), document.get("url")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BadRequestData("partner name: 1-64 letters, digits, _ . - (starting with a letter or digit)")
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
        raise BadRequestData("partner url must be an http(s) base URL, e.g. https://data.singapore.example")
    key = document.get("publicKey")
    if not isinstance(key, str):
        raise BadRequestData("partner publicKey is required")
    public_key(key)
    return {"name": name, "url": url.rstrip("/"), "publicKey": key}


def check_offer(document: Any) -> dict[str, Any]:
    """An offer as stored: every member checked (a bad one is a 400, never a looser offer)."""
    allowed = {"id", "title", "types", "attrs", "area", "window", "tenant", "terms"}
    if not isinstance(document, dict) or set(document) - allowed:
        raise BadRequestData(f"an offer has only {', '.join(sorted(allowed))}")
    offer_id = document.get("id")
    if not isinstance(offer_id, str) or not OFFER_RE.match(offer_id):
        raise BadRequestData("offer id: 1-64 letters, digits, _ . -")
    out: dict[str, Any] = {"id": offer_id, "title": str(document.get("title", offer_id))}
    out["types"] = _names(document.get("types"), "types")
    if "attrs" in document:
        out["attrs"] = _names(document["attrs"], "attrs")
    if "area" in document:
        out["area"] = check_area(document["area"])
    if "tenant" in document:  # the tenant partners' requests under it are served in (default: the default)
        tenant = document["tenant"]
        if not isinstance(tenant, str) or not TENANT_RE.match(tenant):
            raise BadRequestData("tenant: a tenant name, 1-64 letters, digits, _ - . :")
        out["tenant"] = tenant
    if "window" in document:
        window = document["window"]
        if not isinstance(window, dict) or set(window) - {"from", "until"}:
            raise BadRequestData("window is {from, until}")
        out["window"] = {k: instant(v, f"window.{k}").strftime("%Y-%m-%dT%H:%M:%SZ") for k, v in window.items() if v}
    terms = document.get("terms")
    allowed_terms = {"assignees", "purposes", "expires", "aggregation", "rate"}
    if not isinstance(terms, dict) or set(terms) - allowed_terms:
        raise BadRequestData(f"terms has only {', '.join(sorted(allowed_terms))}")
    checked: dict[str, Any] = {"purposes": _names(terms.get("purposes"), "terms.purposes")}
    if "assignees" in terms:
        checked["assignees"] = _names(terms["assignees"], "terms.assignees")
    checked["expires"] = instant(terms.get("expires"), "terms.expires").strftime("%Y-%m-%dT%H:%M:%SZ")
    aggregation = terms.get("aggregation", "per-entity")
    if aggregation not in AGGREGATIONS:
        raise BadRequestData("terms.aggregation must be per-entity or aggregate")
    checked["aggregation"] = aggregation
    rate = terms.get("rate", 60)
    if not isinstance(rate, int) or isinstance(rate, bool) or not 1 <= rate <= MAX_RATE:
        raise BadRequestData(f"terms.rate must be 1 to {MAX_RATE} requests per minute")
    checked["rate"] = rate
    out["terms"] = checked
    return out


def odrl_policy(offer: dict[str, Any], assigner: str, kind: str, policy_id: str, **extra: Any) -> dict[str, Any]:
    """The offer's terms in ODRL: one permission to use, its constraints, and the prohibition to
    re-share (distribute)."""
    terms = offer["terms"]
    constraints: list[dict[str, Any]] = [
        {"leftOperand": "purpose", "operator": "isAnyOf", "rightOperand": terms["purposes"]},
        {"leftOperand": "dateTime", "operator": "lt", "rightOperand": terms["expires"]},
        {"leftOperand": "count", "operator": "lteq", "rightOperand": terms["rate"], "unit": "per minute"},
        {"leftOperand": "cityos:aggregation", "operator": "eq", "rightOperand": terms["aggregation"]},
    ]
    permission: dict[str, Any] = {"action": "use", "constraint": constraints}
    if "assignees" in terms:
        permission["assignee"] = terms["assignees"]
    return {
        "@id": policy_id,
        "@type": kind,
        "assigner": assigner,
        "target": offer["id"],
        "permission": [permission],
        "prohibition": [{"action": "distribute"}],
        **extra,
    }


def dataset(offer: dict[str, Any], city: str, base_url: str) -> dict[str, Any]:
    """One offer as a DCAT dataset of the DSP catalogue."""
    out: dict[str, Any] = {
        "@id": offer["id"],
        "@type": "Dataset",
        "title": offer["title"],
        "hasPolicy": [odrl_policy(offer, city, "Offer", f"urn:cityos:offer:{city}:{offer['id']}")],
        "distribution": [
            {
                "@type": "Distribution",
                "format": "NGSI-LD",
                "accessService": {"@type": "DataService", "endpointURL": f"{base_url}/ngsi-ld/v1"},
            }
        ],
        "cityos:entityTypes": offer["types"],
    }
    if "attrs" in offer:
        out["cityos:attributes"] = offer["attrs"]
    if "area" in offer:
        out["dct:spatial"] = offer["area"]
    if "window" in offer:
        out["dct:temporal"] = {"startDate": offer["window"].get("from"), "endDate": offer["window"].get("until")}
    return out


def catalog(offers: list[dict[str, Any]], city: str, base_url: str, partner: str) -> dict[str, Any]:
    """The DSP catalogue a partner sees: the offers it may ask for (assignees)."""
    visible = [o for o in offers if partner in o["terms"].get("assignees", [partner])]
    return {
        "@context": [DSP_CONTEXT, {"cityos": CITYOS_NS, "dct": "http://purl.org/dc/terms/"}],
        "@id": f"urn:cityos:catalog:{city}",
        "@type": "Catalog",
        "participantId": city,
        "dataset": [dataset(o, city, base_url) for o in visible],
    }


@dataclass(frozen=True, slots=True)
class Agreement:
    """A stored agreement (the same document on both sides; `role` says which side this one is)."""

    doc: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.doc["id"])

    @property
    def terms(self) -> dict[str, Any]:
        return dict(self.doc["terms"])

    def active(self, now: datetime | None = None) -> bool:
        """Countersigned by both sides, not terminated and not expired."""
        moment = now or datetime.now(UTC)
        return self.doc.get("state") == "FINALIZED" and moment < instant(self.terms["expires"], "expires")


SIGNED_MEMBERS = ("id", "offer", "provider", "consumer", "dataset", "terms", "timestamp")


def agreement_bytes(doc: dict[str, Any]) -> bytes:
    """What both sides sign: the agreement's members in one canonical JSON form (sorted keys)."""
    return orjson.dumps({k: doc[k] for k in SIGNED_MEMBERS}, option=orjson.OPT_SORT_KEYS)


def sign_agreement(doc: dict[str, Any], key: Ed25519PrivateKey) -> str:
    return b64(key.sign(agreement_bytes(doc)))


def agreement_signed_by(doc: dict[str, Any], signature: Any, key: Ed25519PublicKey) -> bool:
    if not isinstance(signature, str):
        return False
    try:
        key.verify(base64.b64decode(signature), agreement_bytes(doc))
    except (InvalidSignature, ValueError):
        return False
    return True


def new_agreement(
    offer: dict[str, Any], provider: str, consumer: str, purpose: str, agreement_id: str
) -> dict[str, Any]:
    """The agreement City A proposes for `consumer`'s request of `offer` for `purpose`."""
    terms = offer["terms"]
    if "assignees" in terms and consumer not in terms["assignees"]:
        raise BadRequestData(f"offer {offer['id']} is not offered to {consumer}")
    if purpose not in terms["purposes"]:
        raise BadRequestData(f"purpose {purpose!r} is not one the offer allows ({', '.join(terms['purposes'])})")
    if instant(terms["expires"], "expires") <= datetime.now(UTC):
        raise BadRequestData(f"offer {offer['id']} has expired")
    data = {k: offer[k] for k in ("types", "attrs", "area", "window", "tenant") if k in offer}
    return {
        "id": agreement_id,
        "offer": offer["id"],
        "provider": provider,
        "consumer": consumer,
        "dataset": data,
        "terms": {
            "purpose": purpose,
            "expires": terms["expires"],
            "aggregation": terms["aggregation"],
            "rate": terms["rate"],
            "reshare": False,
        },
        "timestamp": now_text(),
    }


def dsp_agreement(doc: dict[str, Any]) -> dict[str, Any]:
    """The agreement in the DSP/ODRL shape (the ContractAgreementMessage's `agreement`)."""
    terms = doc["terms"]
    offer = {"id": doc["offer"], "terms": {**terms, "purposes": [terms["purpose"]]}}
    return odrl_policy(
        offer, doc["provider"], "Agreement", doc["id"], assignee=doc["consumer"], timestamp=doc["timestamp"]
    )


def policy_documents(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The agreement compiled into access policies (policy/model.py) for the principal a signed
    request under it acts as, until it expires: reading its types and attributes inside its area
    and window; subscribing to its types and attributes (a subscription is judged when made
    without a location, so the area cannot bind it then: every notification is screened with the
    read policy at delivery, area included). Purpose, rate and aggregation are checked at the door
    (dataspace/door.py), as they concern the request."""
    data = doc["dataset"]
    resources: dict[str, Any] = {"types": data["types"]}
    if tenant_of(doc):
        resources["tenants"] = [tenant_of(doc)]  # the principal may use that tenant only anyway
    if "attrs" in data:
        resources["attrs"] = data["attrs"]
    located = {**resources, **{m: data[m] for m in ("area", "window") if m in data}}
    common = {
        "description": f"agreement {doc['id']} with {doc['consumer']} (offer {doc['offer']})",
        "effect": "allow",
        "principals": {"ids": [principal_id(doc["id"])]},
        "conditions": {"expires": doc["terms"]["expires"]},
    }
    name = policy_id(doc["id"])
    return [
        {"id": name, **common, "actions": ["read"], "resources": located},
        {"id": name + ".subscribe", **common, "actions": ["subscribe"], "resources": resources},
    ]


def tenant_of(doc: dict[str, Any]) -> str:
    """The provider's tenant an agreement's requests are served in ("" : the default tenant)."""
    return str(doc["dataset"].get("tenant", ""))


def principal_id(agreement_id: str) -> str:
    return f"agreement:{agreement_id}"


def policy_id(agreement_id: str) -> str:
    return f"agreement.{agreement_id.rsplit(':', 1)[-1]}"
