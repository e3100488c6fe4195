"""Secrets that clients give the broker for delivery (credentials in endpoint URIs, Authorization
and API-key headers in receiverInfo, notifierInfo and contextSourceInfo) are stored as given and
used when sending, but never shown: every representation of a subscription or registration and
every log line carries REDACTED in their place (docs/security.md, "Secrets, isolation and
outgoing requests").

A PATCH that sends a representation back unchanged keeps the stored secret: a value equal to
REDACTED where the stored one is a secret at the same place is read as "unchanged".
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "***"
# header and parameter names whose values are secrets
SECRET_NAME = re.compile(r"auth|token|secret|passw|key|cookie|session|signature|credential", re.IGNORECASE)
# user:password@ in any URL inside a free text (log lines, error messages)
URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@\s:]*):(?P<password>[^/@\s]*)@")
Doc = dict[str, Any]


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def redact_uri(uri: str) -> str:
    """The URI with its password (or a user name standing alone, often a token) and the values of
    secret-looking query parameters replaced by REDACTED."""
    try:
        parts = urlsplit(uri)
        userinfo, at, host = parts.netloc.rpartition("@")
    except ValueError:
        return URL_USERINFO.sub(rf"\g<scheme>\g<user>:{REDACTED}@", uri)
    if at:
        user, colon, _password = userinfo.partition(":")
        userinfo = f"{user}:{REDACTED}" if colon else REDACTED
        host = f"{userinfo}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_name(name) for name, _ in pairs):
            query = urlencode([(n, REDACTED if is_secret_name(n) else v) for n, v in pairs], safe="*")
    if not at and query == parts.query:
        return uri
    return urlunsplit(parts._replace(netloc=host, query=query))


def redact_text(text: str) -> str:
    """Credentials of URLs inside free text (a log line, an error message)."""
    return URL_USERINFO.sub(rf"\g<scheme>\g<user>:{REDACTED}@", text) if "@" in text else text


def redact_pairs(pairs: list[Any]) -> list[Any]:
    """KeyValuePairs (receiverInfo, notifierInfo, contextSourceInfo) with secret values hidden."""
    return [
        {**p, "value": REDACTED} if isinstance(p, dict) and is_secret_name(str(p.get("key", ""))) else p for p in pairs
    ]


def restore_uri(given: str, stored: str) -> str:
    """`given` if it is new; the stored URI if `given` is its redacted form sent back."""
    return stored if given != stored and given == redact_uri(stored) else given


def restore_pairs(given: list[Any], stored: list[Any]) -> list[Any]:
    """Each pair sent back as REDACTED takes the stored value of the same key."""
    old = {str(p.get("key")): p.get("value") for p in stored if isinstance(p, dict)}
    return [
        {**p, "value": old[str(p.get("key"))]}
        if isinstance(p, dict) and p.get("value") == REDACTED and str(p.get("key")) in old
        else p
        for p in given
    ]


def redact_endpoint(endpoint: Doc) -> None:
    """A subscription's notification.endpoint, redacted in place."""
    endpoint["uri"] = redact_uri(endpoint["uri"])
    for name in ("receiverInfo", "notifierInfo"):
        if isinstance(endpoint.get(name), list):
            endpoint[name] = redact_pairs(endpoint[name])


def restore_endpoint(endpoint: Doc, stored: Doc) -> None:
    """A PATCHed notification.endpoint with the stored secrets back where REDACTED was sent."""
    endpoint["uri"] = restore_uri(endpoint["uri"], stored.get("uri", ""))
    for name in ("receiverInfo", "notifierInfo"):
        if isinstance(endpoint.get(name), list) and isinstance(stored.get(name), list):
            endpoint[name] = restore_pairs(endpoint[name], stored[name])


def redact_registration(doc: Doc) -> None:
    """A context source registration, redacted in place (endpoint, contextSourceInfo)."""
    if isinstance(doc.get("endpoint"), str):
        doc["endpoint"] = redact_uri(doc["endpoint"])
    if isinstance(doc.get("contextSourceInfo"), list):
        doc["contextSourceInfo"] = redact_pairs(doc["contextSourceInfo"])


def restore_registration(doc: Doc, stored: Doc) -> None:
    """A PATCHed registration with the stored secrets back where REDACTED was sent."""
    if isinstance(doc.get("endpoint"), str) and isinstance(stored.get("endpoint"), str):
        doc["endpoint"] = restore_uri(doc["endpoint"], stored["endpoint"])
    given, old = doc.get("contextSourceInfo"), stored.get("contextSourceInfo")
    if isinstance(given, list) and isinstance(old, list):
        doc["contextSourceInfo"] = restore_pairs(given, old)
