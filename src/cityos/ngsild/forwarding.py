"""The NGSI-LD side of distributed operations (spec 4.3.6, annex D): thin calls from the entity,
query and batch handlers into cityos.federation. Each function first asks whether any
registration of the tenant takes part (none, or `local=true`: the handler goes on alone) and
only then plans, forwards and merges. Remote entities are not filtered by access policies, so a
restricted caller is never forwarded (its request stays local).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson
from starlette.requests import Request
from starlette.responses import Response

from cityos.errors import NgsiLdError, ResourceNotFound
from cityos.federation import loops, merge
from cityos.federation.client import Answer, Call, Forwarder, source_headers
from cityos.federation.planning import Doc, Plan, Target, plan, targets
from cityos.jsonld.registry import ResolvedContext
from cityos.ngsild import access
from cityos.ngsild.common import json_response, link_context, services

WARNING_HEADER = "NGSILD-Warning"
PATH_SAFE = ":/@!$&'()*+,;=-._~"
ENTITY_CORE = frozenset({"id", "@id", "type", "@type", "@context", "scope"})


class NotFoundWithWarnings(ResourceNotFound):
    """404, saying which sources could not answer (6.3.17)."""

    def __init__(self, detail: str, warnings: Sequence[str]) -> None:
        super().__init__(detail)
        self.warnings = list(warnings)

    def headers(self) -> dict[str, str]:
        return {WARNING_HEADER: ", ".join(self.warnings)} if self.warnings else {}


def forwarder(request: Request) -> Forwarder:
    found: Forwarder = request.scope["app"].state.federation
    return found


def _me(request: Request) -> str:
    """This broker in Via: the authority its callers (and so its partners' registrations) use."""
    return request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"


def _is_local(request: Request) -> bool:
    return request.query_params.get("local") == "true" or not access.view(request, "").unrestricted


async def _registrations(request: Request, tenant_name: str) -> list[Doc]:
    if _is_local(request):
        return []
    return [row.document for row in await services(request).store.list_registrations(tenant_name)]


def _headers(request: Request, target: Target, *, body: bool = False) -> dict[str, str]:
    incoming = {k.lower(): v for k, v in request.headers.items()}
    headers = source_headers(target.registration, incoming)
    headers["Via"] = loops.extend(request.headers.get("via"), _me(request))
    headers["Accept"] = "application/json"
    link = request.headers.get("link")
    if link and link_context(request) is not None:
        headers["Link"] = link
    if body:
        headers["Content-Type"] = request.headers.get("content-type", "application/json").split(";")[0]
    return headers


def warnings_of(answers: Sequence[Answer]) -> list[str]:
    return [w for a in answers if (w := a.warning) is not None]


def with_warnings(response: Response, answers: Sequence[Answer]) -> Response:
    found = warnings_of(answers)
    if found:
        response.headers[WARNING_HEADER] = ", ".join(found)
    return response


def _names(attrs: frozenset[str] | None, context: ResolvedContext, asked: Sequence[str] | None) -> list[str] | None:
    if attrs is None:
        return list(asked) if asked else None
    return sorted(context.terms.compact(a) for a in attrs)


# -- consumption --------------------------------------------------------------------------------------
@dataclass
class Consumption:
    """A read some sources take part in."""

    request: Request
    context: ResolvedContext
    plan: Plan
    attrs: list[str] | None = None  # the requested attribute names, as sent

    def ranked(self, local: list[dict[str, Any]], answers: Sequence[Answer]) -> list[list[dict[str, Any]]]:
        """Answers in merge order: exclusive sources, the local store, inclusive, auxiliary."""
        by_mode: dict[str, list[list[dict[str, Any]]]] = {
            "exclusive": [],
            "inclusive": [],
            "redirect": [],
            "auxiliary": [],
        }
        for answer in answers:
            if answer.ok:
                body = answer.body
                items = body if isinstance(body, list) else [body] if isinstance(body, dict) else []
                by_mode[answer.call.target.mode].append([i for i in items if isinstance(i, dict)])
        owned = [self.context.terms.compact(a) for a in self.plan.remote_only]
        local = [merge.drop_attrs(e, owned) for e in local] if owned else local
        return [*by_mode["exclusive"], *by_mode["redirect"], local, *by_mode["inclusive"], *by_mode["auxiliary"]]


async def consumption(
    request: Request,
    tenant_name: str,
    context: ResolvedContext,
    operation: str,
    *,
    ids: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
    attrs: Sequence[str] | None = None,
    alternative: str | None = None,
) -> Consumption | None:
    """The sources a read goes to, or None when it stays local (most reads: no registration).
    `alternative`: another operation name that also admits a registration (queryBatch / queryEntity)."""
    documents = await _registrations(request, tenant_name)
    if not documents:
        return None
    expanded = [context.terms.expand(a) for a in attrs] if attrs else None
    found = targets(documents, operation, ids=ids, types=types, attrs=expanded)
    if alternative is not None:
        have = {t.id for t in found}
        more = targets(documents, alternative, ids=ids, types=types, attrs=expanded)
        found += [t for t in more if t.id not in have]
    if not found:
        return None
    loops.check(request.headers.get("via"), _me(request))
    return Consumption(request, context, plan(found), list(attrs) if attrs else None)


async def retrieve(
    read: Consumption, entity_id: str, local: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, list[Answer]]:
    """GET /entities/{id}: the entity as the local store and the sources together know it."""
    path = "/entities/" + quote(entity_id, safe=PATH_SAFE)
    calls = []
    for target in read.plan.targets:
        params = [(k, v) for k, v in read.request.query_params.multi_items() if k not in ("attrs", "local")]
        names = _names(target.attrs, read.context, read.attrs)
        if names:
            params.append(("attrs", ",".join(names)))
        calls.append(Call(target, "GET", path, params, headers=_headers(read.request, target)))
    answers = await forwarder(read.request).send_all(calls)
    for answer in answers:
        if answer.ok and not (isinstance(answer.body, dict) and answer.body.get("id") == entity_id):
            answer.problem = "the answer is not the entity asked for"
    own = [local] if local is not None and read.plan.local else []
    merged = merge.merge_lists(read.ranked(own, answers))
    return (merged[0] if merged else None), answers


async def query(
    read: Consumption, local: list[dict[str, Any]], params: Sequence[tuple[str, str]]
) -> tuple[list[dict[str, Any]], list[Answer]]:
    """GET /entities (and POST /entityOperations/query): the local page and the sources' answers
    merged by entity. Each source gets the query narrowed to what it registered (ids, attrs)."""
    calls = []
    for target in read.plan.targets:
        sent = [(k, v) for k, v in params if k not in ("attrs", "local", "limit", "offset", "count")]
        if target.ids and not any(k == "id" for k, _ in sent):
            sent.append(("id", ",".join(target.ids)))
        names = _names(target.attrs, read.context, read.attrs)
        if names:
            sent.append(("attrs", ",".join(names)))
        calls.append(Call(target, "GET", "/entities", sent, headers=_headers(read.request, target)))
    answers = await forwarder(read.request).send_all(calls)
    for answer in answers:
        if answer.ok and not isinstance(answer.body, list):
            answer.problem = "the answer is not an entity array"
    own = local if read.plan.local else []
    return merge.merge_lists(read.ranked(own, answers)), answers


async def query_response(
    read: Consumption, response: Response, media: str, params: Sequence[tuple[str, str]]
) -> Response:
    """The local query's response with the sources' entities merged in (the page size kept)."""
    local = orjson.loads(bytes(response.body)) if response.status_code == 200 else []
    merged, answers = await query(read, local if isinstance(local, list) else [], params)
    kept = {k: v for k, v in response.headers.items() if k.lower() in ("ngsild-results-count", "preference-applied")}
    out = json_response(merged, media=media, context=read.context, headers=kept)
    for value in response.headers.getlist("link"):
        if 'rel="next"' in value or 'rel="prev"' in value:
            out.headers.append("Link", value)
    return with_warnings(out, answers)


def query_params(body: dict[str, Any], context: ResolvedContext) -> list[tuple[str, str]]:
    """A POST /entityOperations/query body as the GET /entities parameters sent to a source."""
    out: list[tuple[str, str]] = []
    selectors = [s for s in body.get("entities") or [] if isinstance(s, dict)]
    types = [s["type"] for s in selectors if isinstance(s.get("type"), str)]
    ids = [s["id"] for s in selectors if isinstance(s.get("id"), str)]
    patterns = [s["idPattern"] for s in selectors if isinstance(s.get("idPattern"), str)]
    if types:
        out.append(("type", ",".join(dict.fromkeys(types))))
    if ids:
        out.append(("id", ",".join(ids)))
    if patterns:
        out.append(("idPattern", patterns[0]))
    for member in ("attrs", "q", "scopeQ", "csf", "lang"):
        value = body.get(member)
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        if isinstance(value, str):
            out.append((member, value))
    return out


# -- provision ----------------------------------------------------------------------------------------
@dataclass
class Provision:
    """A write some sources take part in: what stays local, what each source gets."""

    request: Request
    local_body: Any
    local: bool
    calls: list[Call] = field(default_factory=list)


def _split(body: Any, keep: Callable[[str], bool]) -> Any:
    if not isinstance(body, dict):
        return body
    return {k: v for k, v in body.items() if k in ENTITY_CORE or keep(k)}


def _has_attrs(body: Any) -> bool:
    return not isinstance(body, dict) or any(k not in ENTITY_CORE for k in body)


async def provision(
    request: Request,
    tenant_name: str,
    operation: str,
    entity_id: str,
    body: Any,
    context: ResolvedContext | None,
    *,
    types: Sequence[str] | None = None,
    attr: str | None = None,
) -> Provision | None:
    """The split of a write on one entity, or None when it stays local. `attr`: the attribute
    (an IRI) of a write on /entities/{id}/attrs/{attr}, whose body is that attribute alone."""
    documents = await _registrations(request, tenant_name)
    if not documents:
        return None
    found = targets(documents, operation, ids=[entity_id], types=types)
    if not found:
        return None
    loops.check(request.headers.get("via"), _me(request))
    shared = plan(found)

    def expand(name: str) -> str:
        return context.terms.expand(name) if context is not None else name

    with_body = body is not None
    if attr is not None:
        found = [t for t in found if t.holds(attr)]
        if not found:
            return None
        local_body, local = body, shared.local and attr not in shared.remote_only
    else:
        local_body = _split(body, lambda name: expand(name) not in shared.remote_only)
        local = shared.local and (not with_body or _has_attrs(local_body) or not _has_attrs(body))
    path = request.url.path.removeprefix("/ngsi-ld/v1")
    path = quote(path, safe=PATH_SAFE)
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "local"]
    out = Provision(request, local_body, local)
    for target in found:
        sent = body
        if attr is None:
            sent = _split(body, lambda name, t=target: t.holds(expand(name)))  # type: ignore[misc]
            if with_body and _has_attrs(body) and not _has_attrs(sent):
                continue
        headers = _headers(request, target, body=with_body)
        out.calls.append(Call(target, request.method, path, params, sent, headers))
    return out


def _problem(answer: Answer) -> dict[str, Any]:
    body = answer.body
    if isinstance(body, dict) and isinstance(body.get("status"), int):
        return body
    status = answer.status or 504
    return {
        "type": "https://uri.etsi.org/ngsi-ld/errors/" + ("GatewayTimeout" if not answer.status else "InternalError"),
        "title": answer.problem or f"HTTP {status} from the context source",
        "status": status,
    }


async def run_provision(
    split: Provision, entity_id: str, local: Callable[[Any], Awaitable[Response]], success: Callable[[], Response]
) -> Response:
    """The local part and the forwarded parts at once; 207 with the failed parts when some failed
    and some succeeded (spec 4.3.6.2: partial success of a distributed operation)."""

    async def run_local() -> Response | NgsiLdError | None:
        if not split.local:
            return None
        try:
            return await local(split.local_body)
        except NgsiLdError as error:
            return error

    outcome, answers = await asyncio.gather(run_local(), forwarder(split.request).send_all(split.calls))
    errors: list[dict[str, Any]] = []
    succeeded = 0
    if isinstance(outcome, NgsiLdError):
        errors.append({"entityId": entity_id, "error": outcome.problem()})
    elif outcome is not None:
        succeeded += 1
    for answer in answers:
        if 200 <= answer.status < 300:
            succeeded += 1
        else:
            errors.append({"entityId": entity_id, "registrationId": answer.call.target.id, "error": _problem(answer)})
    if not errors:
        return with_warnings(outcome if isinstance(outcome, Response) else success(), answers)
    if not succeeded and isinstance(outcome, NgsiLdError):
        raise outcome
    body = {"success": [entity_id] if succeeded else [], "errors": errors}
    return with_warnings(json_response(body, status=207), answers)


async def run_write(
    request: Request,
    tenant_name: str,
    operation: str,
    entity_id: str,
    body: Any,
    context: ResolvedContext | None,
    local: Callable[[Any], Awaitable[Response]],
    success: Callable[[], Response],
    *,
    types: Sequence[str] | None = None,
    attr: str | None = None,
) -> Response:
    """A write on one entity: local alone when no source takes part, else split and forwarded."""
    split = await provision(request, tenant_name, operation, entity_id, body, context, types=types, attr=attr)
    if split is None:
        return await local(body)
    return await run_provision(split, entity_id, local, success)


# -- batches ------------------------------------------------------------------------------------------
def _item_id(item: Any) -> Any:
    if isinstance(item, dict):
        return item.get("id", item.get("@id"))
    return item


BATCH_OPERATIONS = {
    "create": "createBatch",
    "upsert": "upsertBatch",
    "update": "updateBatch",
    "merge": "mergeBatch",
    "delete": "deleteBatch",
}


async def batch(
    request: Request,
    tenant_name: str,
    kind: str,
    items: list[Any],
    context_of: Callable[[Any], Awaitable[ResolvedContext]],
) -> tuple[list[Any], list[dict[str, Any]], list[str]]:
    """Forward the parts of a batch the sources take: (the items left for the local store, the
    errors of the forwarded parts, the ids a source took whole). `context_of(item)`: the @context
    an item is read with."""
    documents = await _registrations(request, tenant_name)
    if not documents:
        return items, [], []
    terms: dict[int, ResolvedContext] = {}
    for item in items:
        if isinstance(item, dict):
            try:
                terms[id(item)] = await context_of(item)
            except NgsiLdError:
                continue  # the local part reports it

    def expand(item: Any, name: str) -> str:
        found = terms.get(id(item))
        return found.terms.expand(name) if found is not None else name

    operation = BATCH_OPERATIONS[kind]
    loops_checked = False
    local_items: list[Any] = []
    per_target: dict[str, tuple[Target, list[Any]]] = {}
    remote_whole: list[str] = []
    for item in items:
        entity_id = _item_id(item)
        types = None
        if isinstance(item, dict) and isinstance(item.get("type"), str):
            types = [expand(item, item["type"])]
        found = targets(documents, operation, ids=[entity_id], types=types) if isinstance(entity_id, str) else []
        if not found:
            local_items.append(item)
            continue
        if not loops_checked:
            loops.check(request.headers.get("via"), _me(request))
            loops_checked = True
        shared = plan(found)
        kept = _split(item, lambda name, i=item, s=shared: expand(i, name) not in s.remote_only)  # type: ignore[misc]
        if shared.local and (not isinstance(item, dict) or _has_attrs(kept) or not _has_attrs(item)):
            local_items.append(kept)
        elif isinstance(entity_id, str):
            remote_whole.append(entity_id)
        for target in found:
            sent = _split(item, lambda name, t=target, i=item: t.holds(expand(i, name)))  # type: ignore[misc]
            if isinstance(item, dict) and _has_attrs(item) and not _has_attrs(sent):
                continue
            per_target.setdefault(target.id, (target, []))[1].append(sent)
    path = request.url.path.removeprefix("/ngsi-ld/v1")
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "local"]
    calls = [
        Call(target, "POST", path, params, sent, _headers(request, target, body=True))
        for target, sent in per_target.values()
    ]
    answers = await forwarder(request).send_all(calls)
    errors: list[dict[str, Any]] = []
    for answer in answers:
        failed: dict[str, dict[str, Any]] = {}
        if 200 <= answer.status < 300 and isinstance(answer.body, dict):
            for error in answer.body.get("errors") or []:
                if isinstance(error, dict) and isinstance(error.get("entityId"), str):
                    failed[error["entityId"]] = error.get("error") or {}
        elif not 200 <= answer.status < 300:
            for sent in answer.call.body or []:
                sent_id = _item_id(sent)
                if isinstance(sent_id, str):
                    failed[sent_id] = _problem(answer)
        for entity_id, problem in failed.items():
            errors.append({"entityId": entity_id, "registrationId": answer.call.target.id, "error": problem})
    return local_items, errors, remote_whole
