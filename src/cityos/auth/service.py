"""Identity, built once by create_app: the authenticator (the door and the PrincipalDirectory), the
credential management core, and the rate limiter, from the settings."""

from __future__ import annotations

from collections.abc import Callable

from cityos.audit.events import AuditSink
from cityos.auth.authenticator import Authenticator
from cityos.auth.credentials import Credentials
from cityos.auth.ratelimit import RateLimiter, make_limiter
from cityos.settings import Settings
from cityos.store.base import StoreEvent
from cityos.store.identity_base import CREDENTIAL_EVENT, IdentityStore


class Identity:
    def __init__(
        self,
        store: IdentityStore,
        settings: Settings,
        audit: Callable[[], AuditSink],
        rate_table: str | None = None,
    ) -> None:
        """`rate_table`: the buckets shared by the workers of one server (auth/ratelimit.py)."""
        self.settings = settings
        self.required = settings.auth == "required"
        self.authenticator = Authenticator(store, audit)
        if settings.oidc_issuer:
            from cityos.auth.oidc import OidcVerifier  # PyJWT is loaded only when an issuer is set

            self.authenticator.jwt = OidcVerifier(settings, on_keys_removed=self.authenticator.forget_tokens)
        self.credentials = Credentials(store, audit, forget=self.authenticator.forget)
        self.limiter: RateLimiter | None = (
            make_limiter(settings.rate_limit, settings.rate_limit_burst, rate_table)
            if self.required and settings.rate_limit > 0
            else None
        )

    def on_event(self, event: StoreEvent) -> None:
        """Another worker revoked or deleted a credential (or events were lost: "resync")."""
        if event.kind == CREDENTIAL_EVENT:
            self.authenticator.forget_event(event.key)
        elif event.kind == "resync":
            self.authenticator.forget()
