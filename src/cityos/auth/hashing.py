"""Secrets: how tokens look, how they are made, and their slow hashes (argon2id, argon2-cffi).

A key's token is `<key id>.<secret>`: the id (public, shown in listings and logs) finds the row, the
secret (256 random bits, shown once) is checked against the row's argon2id hash. Verifying a slow hash
costs tens of milliseconds, so the authenticator does it once per token and caches the outcome
(auth/authenticator.py). Passwords get argon2-cffi's default (RFC 9106 low-memory) parameters; key
secrets, being random rather than chosen, the OWASP minimum (19 MiB, 2 passes), which is ample for
256-bit secrets and keeps `keys create` and first use fast.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

KEY_PREFIX = "ck_"  # API keys
SESSION_PREFIX = "cs_"  # short-lived tokens issued to local users
TOKEN_RE = re.compile(r"^(c[ks]_[0-9a-f]{16})\.([A-Za-z0-9_-]{32,128})$")
NAME_RE = re.compile(r"^[A-Za-z0-9_\-.:@]{1,64}$")  # user names, roles, groups, tenants

_KEYS = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)
_PASSWORDS = PasswordHasher()


def new_credential_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str, *, password: bool = False) -> str:
    return (_PASSWORDS if password else _KEYS).hash(secret)


def verify_secret(secret_hash: str, secret: str) -> bool:
    """Constant-time check (argon2); False for a wrong secret or an unreadable hash."""
    try:
        return _KEYS.verify(secret_hash, secret)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def split_token(token: str) -> tuple[str, str] | None:
    """(credential id, secret) of a key or session token; None for anything else (a JWT, garbage)."""
    match = TOKEN_RE.match(token)
    return (match.group(1), match.group(2)) if match else None


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def time_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_DURATION = re.compile(r"^(\d{1,6})([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_expiry(value: str, now: datetime | None = None) -> str:
    """An expiry given as a duration from now (`90d`, `12h`, `30m`) or an ISO 8601 time, as UTC text."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(value.strip())
    if match:
        return time_text(now + timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)]))
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"expiry must be a duration (90d, 12h, 30m) or an ISO 8601 time, got {value!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment <= now:
        raise ValueError("expiry must be in the future")
    return time_text(moment)


def epoch_of(text: str | None) -> float | None:
    if text is None:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
