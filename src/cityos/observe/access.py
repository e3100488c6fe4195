"""One access-log line per request (--access-log), written by app.ProtocolGuard once the answer
is out: request id, principal, tenant, method, path, route template, status and duration.

In text format the line reads `GET /ngsi-ld/v1/entities/x 200 1.2ms route=... rid=... principal=...
tenant=...`; in JSON (--log-format json) the same fields are members of the record
(logs.JsonFormatter reads them from the record's `access` attribute).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("cityos.access")


def access_line(
    request_id: str, principal: str, tenant: str, method: str, path: str, route: Any, status: int, seconds: float
) -> None:
    """Log one answered request at INFO (cheap when INFO is off: nothing is built)."""
    if not log.isEnabledFor(logging.INFO):
        return
    template = getattr(route, "path", None) or "-"
    ms = round(seconds * 1000, 3)
    log.info(
        "%s %s %d %.1fms route=%s rid=%s principal=%s tenant=%s",
        method,
        path,
        status,
        ms,
        template,
        request_id,
        principal,
        tenant or "-",
        extra={
            "access": {
                "request_id": request_id,
                "principal": principal,
                "tenant": tenant,
                "method": method,
                "path": path,
                "route": template,
                "status": status,
                "duration_ms": ms,
            }
        },
    )
