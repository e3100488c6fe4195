"""The errors of access control: 401 (who are you?), 403 (not allowed), 429 (slow down). Their
details never help an attacker: a 401 does not say whether a key exists, was revoked or had a wrong
secret, and what the caller may not see at all is a 404 (ResourceNotFound), never a 403."""

from __future__ import annotations

from typing import ClassVar

from cityos.errors import NgsiLdError


class Unauthorized(NgsiLdError):
    """No valid credentials where they are needed (RFC 6750: WWW-Authenticate: Bearer)."""

    type_name, status, title = "Unauthorized", 401, "Unauthorized"

    def __init__(self, detail: str = "valid credentials are required", *, token_given: bool = False) -> None:
        super().__init__(detail)
        self.token_given = token_given

    @property
    def type_uri(self) -> str:
        return "urn:cityos:errors:Unauthorized"

    def headers(self) -> dict[str, str]:
        challenge = 'Bearer realm="cityos"'
        if self.token_given:
            challenge += ', error="invalid_token"'
        return {"WWW-Authenticate": challenge}


class AccessDenied(NgsiLdError):
    """The one 403 of CityOS, whoever refuses: the door (an admin API without the admin role, a
    measure without a device key) or a policy (a write the caller may see the target of but not
    make). An invisible target is a 404 instead."""

    type_name, status, title = "AccessDenied", 403, "Access denied"

    @property
    def type_uri(self) -> str:
        return "urn:cityos:errors:AccessDenied"


class TooManyRequests(NgsiLdError):
    """The caller's rate limit (--rate-limit) is used up; Retry-After says when to come back."""

    type_name, status, title = "TooManyRequests", 429, "Too many requests"
    retry_after: ClassVar[int] = 1

    def __init__(self, detail: str = "", retry_after: int = 1) -> None:
        super().__init__(detail)
        self.wait = max(1, retry_after)

    @property
    def type_uri(self) -> str:
        return "urn:cityos:errors:TooManyRequests"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.wait)}
