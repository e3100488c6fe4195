"""Access checks of the handlers for resources other than entities (subscriptions, registrations,
@contexts, IoT provisioning): ask the Authorizer, and refuse in a way that
never tells whether something the caller may not see exists.

The rule (docs/security.md): what the caller may not see answers 404, exactly as if it did not
exist; what it may see but not change answers 403. Every refusal carries an audit record
(request.denied), which the error handler hands to the audit sink before answering.
With auth off (the principal is unrestricted) every check returns at once.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request

from cityos.audit.events import AuditEvent
from cityos.auth.principal import Principal, current_request_id
from cityos.errors import NgsiLdError
from cityos.ngsild.common import principal, services
from cityos.policy.compiled import AccessDenied
from cityos.policy.decision import Action, Target


def refusal(
    error: NgsiLdError, who: Principal, action: str, target: Target, targets: Sequence[str] = ()
) -> NgsiLdError:
    """`error` with the audit record of the refusal attached (ngsild_error records it)."""
    detail: dict[str, object] = {"action": action, "status": error.status}
    if target.resource is not None:
        detail["resource"] = target.resource
    if target.types:
        detail["types"] = list(target.types)
    if target.attrs:
        detail["attrs"] = list(target.attrs)
    ids = list(targets) or ([target.entity_id] if target.entity_id else [])
    error.audit = AuditEvent(
        principal=who.id,
        operation="request.denied",
        tenant=target.tenant,
        targets=ids,
        outcome="denied",
        request_id=current_request_id.get(),
        detail=detail,
    )
    return error


def allowed(request: Request, action: Action, target: Target) -> bool:
    who = principal(request)
    return who.unrestricted or services(request).authorizer.allows(who, action, target)


def require(request: Request, action: Action, target: Target, *, hidden: NgsiLdError | None = None) -> None:
    """Raise unless the caller may do `action` on `target`: 403 (AccessDenied, as the entity APIs), or `hidden` (a 404)
    when the target is something the caller may not even know of."""
    if allowed(request, action, target):
        return
    error = hidden if hidden is not None else AccessDenied(f"not allowed to {action} {_what(target)}")
    raise refusal(error, principal(request), action, target)


def hide(request: Request, action: str, target: Target, error: NgsiLdError) -> NgsiLdError:
    """`error` (the not-found answer) recorded as a refusal: for something the caller may not see."""
    return refusal(error, principal(request), action, target)


def _what(target: Target) -> str:
    if target.resource is not None:
        return f"{target.resource} resources" + (f" in tenant {target.tenant}" if target.tenant else "")
    if target.entity_id is not None:
        return f"entity {target.entity_id}"
    return "these entities"
