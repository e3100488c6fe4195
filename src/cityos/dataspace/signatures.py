"""HTTP Message Signatures (RFC 9421), Ed25519 profile, with Content-Digest (RFC 9530).

Every request between partner cities, and every notification one sends another, carries

    Content-Digest: sha-256=:<base64 of the body's SHA-256>:
    Signature-Input: cityos=("@method" "@target-uri" "content-digest" "date" ...);created=..;
                     keyid="<sender city>";alg="ed25519";nonce="<random>"
    Signature: cityos=:<base64 Ed25519 signature of the signature base>:

The signature base is built as RFC 9421 section 2.5 says. Verification refuses (SignatureRefused,
a ProblemDetails 401) a missing or malformed signature, a key that is not a partner's, a signature
that does not verify, a body whose digest differs, a `created` outside the window, and a nonce seen
before within the window (a replay). The CityOS-Agreement and Purpose headers, when present, are
covered too, so a signed request cannot be moved to another agreement or purpose.

Written here rather than with the `http-message-signatures` package: see docs/federation.md
("Why RFC 9421 and how it is implemented").
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cityos.auth.errors import Unauthorized

LABEL = "cityos"
AGREEMENT_HEADER = "CityOS-Agreement"
PURPOSE_HEADER = "Purpose"
REQUIRED = ("@method", "@target-uri", "content-digest", "date")
OPTIONAL = (AGREEMENT_HEADER.lower(), PURPOSE_HEADER.lower())  # covered when the request has them
WINDOW_SECONDS = 300  # a signature is accepted for this long after (and this long before) `created`
NONCE_CACHE = 100_000
_INPUT = re.compile(r'^(?P<label>[a-z][a-z0-9_.*-]*)=\((?P<components>[^)]*)\)(?P<params>(;[a-z]+=("[^"]*"|\d+))*)$')
_PARAM = re.compile(r';([a-z]+)=("([^"]*)"|(\d+))')
_SIGNATURE = re.compile(r"^(?P<label>[a-z][a-z0-9_.*-]*)=:(?P<value>[A-Za-z0-9+/=]+):$")
_DIGEST = re.compile(r"(?:^|,)\s*sha-256=:([A-Za-z0-9+/=]+):")


class SignatureRefused(Unauthorized):
    """A signed exchange that does not prove who sent it (the detail says why, never which key exists)."""

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'Signature realm="cityos", label="{LABEL}"'}


REPLAY = "this signed request was seen before (replay)"


@dataclass(frozen=True, slots=True)
class SigningKey:
    """This city's name (the keyid its partners know it by) and its Ed25519 private key."""

    keyid: str
    private: Ed25519PrivateKey


@dataclass(frozen=True, slots=True)
class Verified:
    """What a valid signature proved: who signed, when, with which nonce, over which body digest."""

    keyid: str
    created: int
    nonce: str
    digest: str  # the Content-Digest header as sent
    signature: str  # the Signature header's value (kept in the audit trail as the proof)


def content_digest(body: bytes) -> str:
    """RFC 9530's Content-Digest value for `body` (SHA-256)."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _params(components: Iterable[str], created: int, keyid: str, nonce: str) -> str:
    inner = " ".join(_quoted(c) for c in components)
    return f'({inner});created={created};keyid={_quoted(keyid)};alg="ed25519";nonce={_quoted(nonce)}'


def signature_base(method: str, url: str, headers: Mapping[str, str], components: Iterable[str], params: str) -> bytes:
    """RFC 9421 section 2.5: one line per covered component, then "@signature-params"."""
    lines = []
    for name in components:
        if name == "@method":
            value = method.upper()
        elif name == "@target-uri":
            value = url
        elif name == "@authority":
            value = (urlsplit(url).netloc or "").lower()
        elif name == "@path":
            value = urlsplit(url).path or "/"
        elif name.startswith("@"):
            raise SignatureRefused(f"the component {name} is not supported")
        else:
            found = headers.get(name)
            if found is None:
                raise SignatureRefused(f"the covered header {name} is missing")
            value = " ".join(found.strip().split("\n"))
        lines.append(f'"{name}": {value}')
    lines.append(f'"@signature-params": {params}')
    return "\n".join(lines).encode()


def sign_request(
    method: str, url: str, headers: Mapping[str, str], body: bytes, key: SigningKey, *, now: float | None = None
) -> dict[str, str]:
    """`headers` plus Date, Content-Digest, Signature-Input and Signature for a request to a partner
    (also the hook federation/ calls for each forwarded request to a registration that is a partner)."""
    out = {k: v for k, v in headers.items()}
    lower = {k.lower(): v for k, v in out.items()}
    created = int(now if now is not None else time.time())
    if "date" not in lower:
        out["Date"] = lower["date"] = formatdate(created, usegmt=True)
    out["Content-Digest"] = lower["content-digest"] = content_digest(body)
    components = [*REQUIRED, *(name for name in OPTIONAL if name in lower)]
    params = _params(components, created, key.keyid, secrets.token_urlsafe(16))
    base = signature_base(method, url, lower, components, params)
    out["Signature-Input"] = f"{LABEL}={params}"
    out["Signature"] = f"{LABEL}=:{base64.b64encode(key.private.sign(base)).decode()}:"
    return out


class NonceCache:
    """Nonces seen within the window, per key: a second use of one is a replay. Bounded (the oldest
    go first; a nonce that old is outside the window anyway unless the cache is flooded)."""

    def __init__(self, size: int = NONCE_CACHE) -> None:
        self.size = size
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def first_use(self, keyid: str, nonce: str, until: float, now: float) -> bool:
        while self._seen:
            oldest_key, oldest_until = next(iter(self._seen.items()))
            if oldest_until > now and len(self._seen) < self.size:
                break
            del self._seen[oldest_key]
        if (keyid, nonce) in self._seen:
            return False
        self._seen[(keyid, nonce)] = until
        return True


def verify_request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    public_key_of: Callable[[str], Ed25519PublicKey | None],
    nonces: NonceCache | None,
    *,
    window: float = WINDOW_SECONDS,
    now: float | None = None,
) -> Verified:
    """The Verified proof of a signed request (`headers` with lower-case names), or SignatureRefused.
    `nonces` None: the caller checks the nonce itself (the server: in the store, shared by every
    worker, dataspace/door.py); REPLAY is the refusal to give for a nonce seen before."""
    clock = now if now is not None else time.time()
    given_input, given_signature = headers.get("signature-input"), headers.get("signature")
    if not given_input or not given_signature:
        raise SignatureRefused("a signed request is required (RFC 9421 Signature and Signature-Input)")
    parsed = _INPUT.match(given_input.strip())
    signature = _SIGNATURE.match(given_signature.strip())
    if parsed is None or signature is None or parsed["label"] != LABEL or signature["label"] != LABEL:
        raise SignatureRefused(f"the signature is malformed (one signature labelled {LABEL} is expected)")
    components = re.findall(r'"([^"]+)"', parsed["components"])
    params = {m[1]: (m[3] if m[3] is not None else m[4]) for m in _PARAM.finditer(parsed["params"])}
    if any(c not in components for c in REQUIRED) or any(n in headers and n not in components for n in OPTIONAL):
        raise SignatureRefused(f"the signature must cover {', '.join(REQUIRED)} and the agreement and purpose")
    if params.get("alg") != "ed25519" or not params.get("keyid") or not params.get("nonce"):
        raise SignatureRefused("the signature needs alg=ed25519, a keyid and a nonce")
    created = int(params.get("created") or 0)
    if abs(clock - created) > window:
        raise SignatureRefused("the signature is too old or from the future (created)")
    date = headers.get("date", "")
    try:
        if abs(parsedate_to_datetime(date).timestamp() - clock) > window:
            raise SignatureRefused("the Date header is outside the accepted window")
    except (TypeError, ValueError) as exc:
        raise SignatureRefused("the Date header is not an HTTP date") from exc
    digest = headers.get("content-digest", "")
    sent = _DIGEST.search(digest)
    if sent is None or f"sha-256=:{sent[1]}:" != content_digest(body):
        raise SignatureRefused("the body does not match its Content-Digest")
    key = public_key_of(params["keyid"])
    if key is None:
        raise SignatureRefused("the signing key is not a trusted partner's")
    start = given_input.strip().index("=") + 1
    base = signature_base(method, url, headers, components, given_input.strip()[start:])
    try:
        key.verify(base64.b64decode(signature["value"]), base)
    except (InvalidSignature, ValueError) as exc:
        raise SignatureRefused("the signature does not verify") from exc
    if nonces is not None and not nonces.first_use(params["keyid"], params["nonce"], created + window, clock):
        raise SignatureRefused(REPLAY)
    return Verified(params["keyid"], created, params["nonce"], digest, given_signature.strip())
