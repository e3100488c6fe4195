"""The alert rules' API: thin handlers over AlertRules.

GET  /cityos/v1/rules                          every loaded rule, as declared (anyone: how an alert
                                               is decided is public, as an algorithm register)
PUT  /cityos/v1/rules/{id}                     add or replace one from its TOML text (kept in
                                               --rules-dir; this worker only until the others start
                                               again), admins of every tenant
POST /cityos/v1/alerts/{alert_id}/acknowledge  an admin has seen the alert (who and when), admins of
                                               every tenant
The alerts themselves are NGSI-LD entities of type Alert: read them with the entities API.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.auth.credentials import require_admin
from cityos.errors import ResourceNotFound
from cityos.insight.alerts import AlertRules, UnknownAlert
from cityos.insight.http import put_file
from cityos.insight.rules import Rule
from cityos.ngsild.common import principal, tenant
from cityos.ops.declare import api

RULES = "/cityos/v1/rules"
ALERTS = "/cityos/v1/alerts"


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def describe(rule: Rule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "name": rule.name,
        "description": rule.description,
        "type": rule.type,
        "severity": rule.severity,
        "category": rule.category,
        "subCategory": rule.sub_category,
        "for": rule.hold,
        rule.mode: [
            {
                "kind": c.kind,
                "attribute": c.attribute,
                **{k: getattr(c, k) for k in ("above", "below", "clear") if getattr(c, k) is not None},
                **({"per": c.per} if c.kind == "rate" else {}),
                **({"absent": c.absent} if c.kind == "absent" else {}),
                **({"inside": [list(p) for p in c.polygon]} if c.kind == "inside" else {}),
            }
            for c in rule.conditions
        ],
        "version": rule.version,
        "digest": rule.digest,
        "source": PurePath(rule.source).name,
    }


def _rules(request: Request) -> AlertRules:
    rules: AlertRules = request.app.state.alert_rules
    return rules


@api("The register of alert rules (public)", returns="Any", errors=())
async def list_rules(request: Request) -> Response:
    rules = _rules(request)
    return _json([describe(rules.rules[key]) for key in sorted(rules.rules)])


@api("Add or replace an alert rule (admin)", body="Object", returns="Any", more={201: "Any"}, errors=(400,))
async def put_rule(request: Request) -> Response:
    require_admin(principal(request), every_tenant=True)
    return await put_file(request, _rules(request).put, "rule_id", describe, "a rule file")


@api("Acknowledge an alert", body="Object", body_required=False, returns="Any", errors=(400, 404))
async def acknowledge(request: Request) -> Response:
    who = principal(request)
    require_admin(who, every_tenant=True)
    try:
        done = await _rules(request).acknowledge(tenant(request), request.path_params["alert_id"], who.id)
    except UnknownAlert as exc:
        raise ResourceNotFound(f"no alert {exc.args[0]}") from None
    return _json(done)


def routes() -> list[Route]:
    return [
        Route(RULES, list_rules, methods=["GET"]),
        Route(RULES + "/{rule_id}", put_rule, methods=["PUT"]),
        Route(ALERTS + "/{alert_id}/acknowledge", acknowledge, methods=["POST"]),
    ]
