"""Who may send IoT measures and provision devices when --auth required.

A device key is an API key with role `device`, valid for the tenant of the service group it feeds;
its groups may name the service groups' API keys it may use (`iot:<apikey>`, repeatable), else any
group of its tenants. Measures under an API key of a tenant the caller cannot use are answered as for
an unknown device (404), so a key cannot probe other tenants' groups.
"""

from __future__ import annotations

from cityos.auth.credentials import DEVICE_ROLE, require_admin
from cityos.auth.errors import AccessDenied, Unauthorized
from cityos.auth.principal import Principal

GROUP_PREFIX = "iot:"


def check_device(principal: Principal, tenant: str | None, apikey: str) -> bool:
    """False: answer as if the device were unknown. Raises 401 for the anonymous caller and 403 for
    a principal that is neither a device nor an admin."""
    if principal.kind == "anonymous":
        raise Unauthorized()
    if not principal.is_admin and DEVICE_ROLE not in principal.roles:
        raise AccessDenied("measures need a device key (role device)")
    if tenant is None or not principal.may_use_tenant(tenant):
        return False
    if principal.is_admin:
        return True
    allowed = {group.removeprefix(GROUP_PREFIX) for group in principal.groups if group.startswith(GROUP_PREFIX)}
    return not allowed or apikey in allowed


def check_provisioner(principal: Principal, tenant: str) -> None:
    require_admin(principal)
    if not principal.may_use_tenant(tenant):
        raise AccessDenied("this key is not valid for that service (tenant)")
