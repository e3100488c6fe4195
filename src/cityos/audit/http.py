"""The audit query API (admins only): GET /cityos/v1/audit, the data subject's access report,
GET /cityos/v1/audit/access-report, and whether the chain verifies, GET /cityos/v1/audit/verification.
Thin handlers over the store's read_audit and audit/check.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.audit.chain import AuditQuery, utc_now
from cityos.audit.events import AuditEvent
from cityos.audit.service import parse_time
from cityos.auth.credentials import require_admin
from cityos.auth.principal import current_request_id
from cityos.errors import BadRequestData, NgsiLdError, log_failure
from cityos.ngsild.common import Services, principal
from cityos.ops.declare import api

PREFIX = "/cityos/v1/audit"
log = logging.getLogger("cityos.audit")
VERIFIED_FOR = 60.0  # seconds a verification is answered again before the trail is read anew
WAIT = 5.0  # seconds a caller waits for a check when it has no answer to give
MAX_PROBLEMS = 20  # problems listed (all are counted)
READ_PERSONAL = "entity.read-personal"  # what the policy layer records for a read of personal data


async def _admin(request: Request) -> Services:
    """Admins of every tenant only (auth off: the open principal is one; 401 for the anonymous
    caller, 403 without the admin role or for an admin scoped to tenants); a refusal is recorded."""
    services: Services = request.app.state.services
    caller = principal(request)
    try:
        require_admin(caller, every_tenant=True)  # the trail holds every tenant's records
    except NgsiLdError:
        event = AuditEvent(caller.id, "request.denied", "", (PREFIX,), "denied", current_request_id.get())
        await services.audit.record([event])
        raise
    return services


FILTERS = {"principal", "entity", "operation", "tenant", "from", "to", "limit", "after"}


REPORT_FILTERS = {"subject", "from", "to", "limit", "after"}  # the access report's parameters


def _query(params: Mapping[str, str], services: Services, allowed: set[str] = FILTERS) -> AuditQuery:
    unknown = set(params) - allowed
    if unknown:
        raise BadRequestData(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    try:
        limit = int(params.get("limit", services.settings.default_page_size))
        after = int(params.get("after", 0))
        since, until = parse_time(params.get("from")), parse_time(params.get("to"))
    except ValueError as exc:
        raise BadRequestData(f"limit and after are integers, from and to ISO 8601 times: {exc}") from exc
    if not 0 < limit <= services.settings.max_page_size or after < 0:
        raise BadRequestData(f"limit must be 1-{services.settings.max_page_size}, after not negative")
    return AuditQuery(
        principal=params.get("principal"),
        target=params.get("entity"),
        operation=params.get("operation"),
        tenant=params.get("tenant"),
        since=since,
        until=until,
        after_seq=after,
        limit=limit + 1,  # one more: is there a next page?
    )


def _page(request: Request, items: list[dict[str, Any]], query: AuditQuery, last_seq: int) -> Response:
    headers = {}
    assert query.limit is not None
    if len(items) >= query.limit:
        items = items[: query.limit - 1]
        params = {**request.query_params, "after": str(last_seq)}
        headers["Link"] = f'<{request.url.path}?{urlencode(params)}>; rel="next"'
    return Response(orjson.dumps(items), media_type="application/json", headers=headers)


@api("The audit trail, filtered and paged (admin)", query=tuple(sorted(FILTERS)), returns="Any")
async def list_records(request: Request) -> Response:
    """Records by principal, entity (a target), operation, tenant and time; paged by `after` (a seq)."""
    services = await _admin(request)
    query = _query(request.query_params, services)
    records = await services.store.read_audit(query)
    last = records[query.limit - 2].seq if query.limit and len(records) >= query.limit else 0
    return _page(request, [r.as_dict() for r in records], query, last)


@api(
    "Who read personal data about an entity, when, and why (admin)", query=tuple(sorted(REPORT_FILTERS)), returns="Any"
)
async def access_report(request: Request) -> Response:
    """Who read personal data about `subject` (an entity id), when, and for which purpose."""
    services = await _admin(request)
    subject = request.query_params.get("subject")
    if not subject:
        raise BadRequestData("subject (an entity id) is required")
    query = _query(request.query_params, services, REPORT_FILTERS)
    query.target, query.operation = subject, READ_PERSONAL
    records = await services.store.read_audit(query)
    last = records[query.limit - 2].seq if query.limit and len(records) >= query.limit else 0
    items = [
        {
            "time": r.time,
            "principal": r.principal,
            "tenant": r.tenant,
            "purpose": r.detail.get("purpose", ""),
            "attributes": r.detail.get("attributes", []),
            "request_id": r.request_id,
            "seq": r.seq,
        }
        for r in records
    ]
    return _page(request, items, query, last)


@api(
    "Whether the audit trail's hash chain and signed checkpoints verify, and when that was checked (admin)",
    query=("fresh",),
)
async def verification(request: Request) -> Response:
    """The check `cityos audit verify` makes of an export and `cityos backup --verify` of a copy,
    made on the live trail with the deployment's public key. Reading and hashing a long trail takes
    seconds (about 80 µs a record), so the check runs in the background, one at a time: the last
    answer is given while it is younger than VERIFIED_FOR seconds, or while a new check runs
    (`checking`: true); the caller waits for a check (at most WAIT seconds) only when there is no
    answer yet or it asks for a `fresh=true` one."""
    services = await _admin(request)
    unknown = set(request.query_params) - {"fresh"}
    if unknown:
        raise BadRequestData(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    checks: _Checks | None = getattr(request.app.state, "audit_verification", None)
    if checks is None:
        checks = request.app.state.audit_verification = _Checks()
    fresh = request.query_params.get("fresh") == "true"
    if checks.running is None and (fresh or checks.last is None or time.monotonic() - checks.at > VERIFIED_FOR):
        checks.start(services)
    if checks.running is not None and (fresh or checks.last is None):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(checks.running), WAIT)
    answer: dict[str, Any] = dict(checks.last) if checks.last is not None else {"verified": None}
    answer["checking"] = checks.running is not None
    return Response(orjson.dumps(answer), media_type="application/json")


class _Checks:
    """The last verification of this worker's app and the one running, if any."""

    def __init__(self) -> None:
        self.last: dict[str, Any] | None = None
        self.at = 0.0  # monotonic time of `last`
        self.running: asyncio.Task[None] | None = None

    def start(self, services: Services) -> None:
        async def run() -> None:
            try:
                self.last = await _verify(services)
                self.at = time.monotonic()
            except Exception:  # the store went away, say: the next request tries again
                log_failure(log, "the audit trail could not be verified")
            finally:
                self.running = None

        self.running = asyncio.create_task(run(), name="audit-verification")


async def _verify(services: Services) -> dict[str, Any]:
    from cityos.audit.check import verify_store
    from cityos.audit.service import AuditTrail
    from cityos.audit.signing import public_pem

    key = AuditTrail(services.store, services.settings).existing_key()
    found = await verify_store(services.store, public_pem(key).encode() if key is not None else None)
    problems = found.problems if found is not None else []
    return {
        "verified": not problems,
        "checkedAt": utc_now(),
        "signaturesChecked": key is not None,
        "records": found.records if found is not None else 0,
        "checkpoints": found.checkpoints if found is not None else 0,
        "firstSeq": found.first_seq if found is not None else None,
        "lastSeq": found.last_seq if found is not None else None,
        "signedThrough": found.signed_through if found is not None else 0,
        "problemCount": len(problems),
        "problems": problems[:MAX_PROBLEMS],
    }


def routes() -> list[Route]:
    return [
        Route(PREFIX, list_records, methods=["GET"]),
        Route(PREFIX + "/access-report", access_report, methods=["GET"]),
        Route(PREFIX + "/verification", verification, methods=["GET"]),
    ]
