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

from cityos.errors import Conflict, NgsiLdError, ResourceNotFound
from cityos.federation import loops, merge
from cityos.federation.client import Answer, Call, Forwarder, source_headers, steering
from cityos.federation.planning import Doc, Plan, Target, conflicts, csf_matches, plan, targets
from cityos.jsonld.registry import ResolvedContext
from cityos.ngsild import access
from cityos.ngsild.common import CONTEXT_REL as LINK_REL
from cityos.ngsild.common import json_response, link_context, services
from cityos.ngsild.negotiation import JSON_LD
from cityos.query import q

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


def _is_local(request: Request, tenant_name: str) -> bool:
    # the query string is parsed only when it may say local=true (every read asks: keep it cheap;
    # a percent-encoded name is parsed too)
    query = request.scope["query_string"]
    if (b"local" in query or b"%" in query) and request.query_params.get("local") == "true":
        return True
    return not access.view(request, tenant_name).unrestricted


def unregistered(request: Request, tenant_name: str) -> bool:
    """True when the tenant is known to have no registration (kept in memory by the store): the
    request stays local, decided without a coroutine. False says nothing: ask `consumption` or
    `provision`, which read the registrations (the first request of a tenant keeps them)."""
    return services(request).store.registrations_none(tenant_name)


async def _registrations(request: Request, tenant_name: str) -> list[Doc]:
    """The tenant's registrations, or none for a request that stays local (local=true, or a caller
    the access policies restrict: remote entities are not filtered by them)."""
    if _is_local(request, tenant_name):
        return []
    return [row.document for row in await services(request).store.list_registrations(tenant_name)]


def _headers(
    request: Request, target: Target, context: ResolvedContext | None, *, body: bool = False
) -> dict[str, str]:
    """Via, the @context as a Link (or inline, when the registration asks for JSON-LD), Accept,
    and the registration's contextSourceInfo (4.3.6.4, 4.3.6.6, 6.3.5)."""
    incoming = {k.lower(): v for k, v in request.headers.items()}
    headers = source_headers(target.registration, incoming)
    steer = steering(target.registration)
    headers["Via"] = loops.extend(request.headers.get("via"), _me(request))
    headers["Accept"] = steer.get("accept", "application/json")
    link_url = steer.get("jsonldContext") or (context.link_url if context is not None else None)
    if link_url is None and link_context(request) is not None:
        link_url = link_context(request)
    inline = body and steer.get("contentType") == JSON_LD
    if link_url and not inline:
        headers["Link"] = f'<{link_url}>; rel="{LINK_REL}"; type="{JSON_LD}"'
    if body:
        headers["Content-Type"] = JSON_LD if inline else "application/json"
    return headers


def _payload(body: Any, headers: dict[str, str], context: ResolvedContext | None) -> Any:
    """A forwarded body: @context inline for a source that takes JSON-LD, else none (it is in Link)."""
    if isinstance(body, list):
        return [_payload(item, headers, context) for item in body]
    if not isinstance(body, dict):
        return body
    plain = {k: v for k, v in body.items() if k != "@context"}
    if headers.get("Content-Type") == JSON_LD:
        plain["@context"] = body.get("@context", context.value if context is not None else None)
    return plain


def warnings_of(answers: Sequence[Answer]) -> list[str]:
    """This broker's warnings about its sources, then those the sources relayed (6.3.17)."""
    own = [w for a in answers if (w := a.warning) is not None]
    return own + [a.relayed for a in answers if a.relayed]


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
READ_VIA = ("retrieveEntity", "queryEntity", "queryBatch")  # how a read may reach a source, preferred first
FILTERS = ("q", "scopeQ", "csf")  # removed from a forwarded query with splitEntities=true (5.7.2.4)


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
            m: [] for m in ("exclusive", "inclusive", "redirect", "auxiliary")
        }
        for answer in answers:
            if answer.ok:
                body = answer.body
                items = body if isinstance(body, list) else [body] if isinstance(body, dict) else []
                by_mode[answer.call.target.mode].append([i for i in items if isinstance(i, dict)])
        owned = [self.context.terms.compact(a) for a in self.plan.remote_only]
        local = [merge.drop_attrs(e, owned) for e in local] if owned else local
        return [*by_mode["exclusive"], *by_mode["redirect"], local, *by_mode["inclusive"], *by_mode["auxiliary"]]

    def call(self, target: Target, operation: str, params: list[tuple[str, str]], post: Any = None) -> Call:
        """The read `operation` as `target` takes it: by id, by GET query or by POST query."""
        names = _names(target.attrs, self.context, self.attrs)
        sent = [(k, v) for k, v in params if k not in ("attrs", "local")]
        if names:
            sent.append(("attrs", ",".join(names)))
        if target.local_only:
            sent.append(("local", "true"))
        headers = _headers(self.request, target, self.context)
        if operation == "retrieveEntity":
            entity_id = post
            return Call(target, "GET", "/entities/" + quote(entity_id, safe=PATH_SAFE), sent, headers=headers)
        if operation == "queryBatch":
            body = dict(post) if isinstance(post, dict) else {"type": "Query"}
            if names:
                body["attrs"] = names
            body.pop("@context", None)
            kept = [(k, v) for k, v in sent if k in ("limit", "offset", "count", "options", "format", "local")]
            headers["Content-Type"] = "application/json"
            return Call(target, "POST", "/entityOperations/query", kept, body, headers)
        return Call(target, "GET", "/entities", sent, headers=headers)


def _csf(request: Request, context: ResolvedContext) -> Callable[[Doc], bool] | None:
    text = request.query_params.get("csf")
    if not text:
        return None
    expr = q.parse_q(text, services(request).settings.max_pattern_length)
    return lambda doc: csf_matches(doc, expr, context.terms.expand)


async def consumption(
    request: Request,
    tenant_name: str,
    context: ResolvedContext,
    operations: Sequence[str],
    *,
    ids: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
    attrs: Sequence[str] | None = None,
) -> Consumption | None:
    """The sources a read goes to, or None when it stays local (most reads: no registration).
    `operations`: the names under which a registration admits the read, preferred first."""
    documents = await _registrations(request, tenant_name)
    if not documents:
        return None
    expanded = [context.terms.expand(a) for a in attrs] if attrs else None
    csf = _csf(request, context)
    found: list[Target] = []
    for operation in operations:
        have = {t.id for t in found}
        more = targets(documents, operation, ids=ids, types=types, attrs=expanded, csf=csf)
        found += [t for t in more if t.id not in have]
    if not found:
        return None
    loops.check(request.headers.get("via"), _me(request))
    return Consumption(request, context, plan(found), list(attrs) if attrs else None)


def _preferred(target: Target, order: Sequence[str]) -> str:
    return next((name for name in order if name in target.operations), order[0])


async def retrieve(
    read: Consumption, entity_id: str, local: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, list[Answer]]:
    """GET /entities/{id}: the entity as the local store and the sources together know it. A
    source that registered only queries is asked by query, for that id."""
    calls = []
    for target in read.plan.targets:
        params = [(k, v) for k, v in read.request.query_params.multi_items()]
        operation = _preferred(target, READ_VIA)
        if operation == "retrieveEntity":
            calls.append(read.call(target, operation, params, entity_id))
            continue
        kinds = [read.context.terms.compact(t) for t in target.types]
        if operation == "queryBatch":
            selector = {"id": entity_id, **({"type": kinds[0]} if kinds else {})}
            calls.append(read.call(target, operation, params, {"type": "Query", "entities": [selector]}))
        else:
            extra = [("id", entity_id)] + ([("type", ",".join(kinds))] if kinds else [])
            calls.append(read.call(target, operation, [*params, *extra]))
    answers = await forwarder(read.request).send_all(calls)
    for answer in answers:
        if answer.ok and isinstance(answer.body, list):  # asked by query: the entity, if it is there
            answer.body = next((e for e in answer.body if isinstance(e, dict) and e.get("id") == entity_id), None)
            if answer.body is None:
                answer.status = 404
        if answer.ok and not (isinstance(answer.body, dict) and answer.body.get("id") == entity_id):
            answer.problem = "the answer is not the entity asked for"
    own = [local] if local is not None and read.plan.local else []
    merged = merge.merge_lists(read.ranked(own, answers))
    return (merged[0] if merged else None), answers


async def query(
    read: Consumption, local: list[dict[str, Any]], params: Sequence[tuple[str, str]], post: Any = None
) -> tuple[list[dict[str, Any]], list[Answer]]:
    """GET /entities (and POST /entityOperations/query): the local page and the sources' answers
    merged by entity. Each source gets the query narrowed to what it registered (ids, attrs)."""
    split = any(k == "splitEntities" and v == "true" for k, v in params)
    calls = []
    for target in read.plan.targets:
        skipped = ("limit", "offset", "count", "splitEntities", *(FILTERS if split else ()))
        sent = [(k, v) for k, v in params if k not in skipped]
        if target.ids and not any(k == "id" for k, _ in sent):
            sent.append(("id", ",".join(target.ids)))
        order = ("queryBatch", "queryEntity") if post is not None else ("queryEntity", "queryBatch")
        operation = _preferred(target, order)
        body = post if post is not None else {"type": "Query", "entities": [{"type": t} for t in _types_of(sent)]}
        calls.append(read.call(target, operation, sent, body))
    answers = await forwarder(read.request).send_all(calls)
    for answer in answers:
        if answer.ok and not isinstance(answer.body, list):
            answer.problem = "the answer is not an entity array"
    own = local if read.plan.local else []
    return merge.merge_lists(read.ranked(own, answers)), answers


def _types_of(params: Sequence[tuple[str, str]]) -> list[str]:
    return [t for k, v in params if k == "type" for t in v.split(",") if t]


async def query_response(
    read: Consumption, response: Response, media: str, params: Sequence[tuple[str, str]], post: Any = None
) -> Response:
    """The local query's response with the sources' entities merged in (the page size kept)."""
    local = orjson.loads(bytes(response.body)) if response.status_code == 200 else []
    merged, answers = await query(read, local if isinstance(local, list) else [], params, post)
    kept = {k: v for k, v in response.headers.items() if k.lower() in ("ngsild-results-count", "preference-applied")}
    out = json_response(merged, media=media, context=read.context, headers=kept)
    for value in response.headers.getlist("link"):
        if 'rel="next"' in value or 'rel="prev"' in value:
            out.headers.append("Link", value)
    return with_warnings(out, answers)


async def discovery(
    request: Request, tenant_name: str, context: ResolvedContext, operation: str, local: Any
) -> tuple[Any, list[Answer]]:
    """GET /types, /attributes and their details (5.7.5-5.7.10): the local answer (None: not
    found here) and the sources' merged, or the local answer alone when no source takes part."""
    documents = await _registrations(request, tenant_name)
    found = targets(documents, operation) if documents else []
    if not found:
        return local, []
    loops.check(request.headers.get("via"), _me(request))
    path = quote(request.url.path.removeprefix("/ngsi-ld/v1"), safe=PATH_SAFE)
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "local"]
    calls = [Call(t, "GET", path, params, headers=_headers(request, t, context)) for t in found]
    answers = await forwarder(request).send_all(calls)
    remote = [a.body if a.ok and isinstance(a.body, dict | list) else None for a in answers]
    return merge.merge_catalogue([local, *remote]), answers


# -- provision ----------------------------------------------------------------------------------------
@dataclass
class Provision:
    """A write some sources take part in: what stays local, what each source gets."""

    request: Request
    local_body: Any
    local: bool
    refused: list[str] = field(default_factory=list)  # exclusive / redirect registrations without the operation
    calls: list[Call] = field(default_factory=list)


def _split(body: Any, keep: Callable[[str], bool]) -> Any:
    if not isinstance(body, dict):
        return body
    return {k: v for k, v in body.items() if k in ENTITY_CORE or keep(k)}


def _attr_names(body: Any, attr: str | None, context: ResolvedContext | None) -> list[str] | None:
    """The attributes (IRIs) a write touches; None: the entity as a whole."""
    if attr is not None:
        return [attr]
    if isinstance(body, dict) and context is not None:
        return [context.terms.expand(k) for k in body if k not in ENTITY_CORE] or None
    return None


def _has_attrs(body: Any) -> bool:
    return not isinstance(body, dict) or any(k not in ENTITY_CORE for k in body)


@dataclass(frozen=True)
class Write:
    """A write on one entity. `attr`: the attribute (an IRI) of a write on
    /entities/{id}/attrs/{attr}, whose body is that attribute alone."""

    tenant: str
    operation: str
    entity_id: str
    body: Any
    context: ResolvedContext | None
    types: Sequence[str] | None = None
    attr: str | None = None


async def provision(request: Request, write: Write) -> Provision | None:
    """The split of a write on one entity, or None when it stays local."""
    tenant_name, operation, entity_id, body = write.tenant, write.operation, write.entity_id, write.body
    context, types, attr = write.context, write.types, write.attr
    documents = await _registrations(request, tenant_name)
    if not documents:
        return None
    found = targets(documents, operation, ids=[entity_id], types=types)
    refused = conflicts(documents, operation, ids=[entity_id], types=types, attrs=_attr_names(body, attr, context))
    if not found and not refused:
        return None
    loops.check(request.headers.get("via"), _me(request))
    shared = plan([*found, *refused])

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
    out = Provision(request, local_body, local, refused=[t.id for t in refused])
    for target in found:
        sent = body
        if attr is None:
            sent = _split(body, lambda name, t=target: t.holds(expand(name)))  # type: ignore[misc]
            if with_body and _has_attrs(body) and not _has_attrs(sent):
                continue
        headers = _headers(request, target, context, body=with_body)
        out.calls.append(Call(target, request.method, path, params, _payload(sent, headers, context), headers))
    return out


def _problem(answer: Answer) -> dict[str, Any]:
    body = answer.body
    if isinstance(body, dict) and isinstance(body.get("status"), int):
        return body
    if answer.status == 207:
        return {"type": "https://uri.etsi.org/ngsi-ld/errors/InternalError", "title": "partly done", "status": 207}
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
    for registration_id in split.refused:
        error = Conflict(f"registration {registration_id} holds this entity but does not support the operation")
        errors.append({"entityId": entity_id, "registrationId": registration_id, "error": error.problem()})
    for answer in answers:
        if 200 <= answer.status < 300 and answer.status != 207:
            succeeded += 1
        else:
            errors.append({"entityId": entity_id, "registrationId": answer.call.target.id, "error": _problem(answer)})
    if not errors:
        return with_warnings(outcome if isinstance(outcome, Response) else success(), answers)
    if len(errors) == 1 and not succeeded and not answers:  # one part only: its own error
        if isinstance(outcome, NgsiLdError):
            raise outcome
        raise Conflict(str(errors[0]["error"].get("detail", "")))
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
    if unregistered(request, tenant_name):  # no source in this tenant
        return await local(body)
    split = await provision(request, Write(tenant_name, operation, entity_id, body, context, types, attr))
    if split is None:
        return await local(body)
    return await run_provision(split, entity_id, local, success)


async def run_purge(
    request: Request,
    tenant_name: str,
    context: ResolvedContext,
    types: Sequence[str] | None,
    local: Callable[[Any], Awaitable[Response]],
    success: Callable[[], Response],
) -> Response:
    """DELETE /entities (purge): the same selection sent to the sources registered for it."""
    documents = await _registrations(request, tenant_name)
    found = targets(documents, "purgeEntity", types=types) if documents else []
    if not found:
        return await local(None)
    loops.check(request.headers.get("via"), _me(request))
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "local"]
    calls = [Call(t, "DELETE", "/entities", params, headers=_headers(request, t, context)) for t in found]
    return await run_provision(Provision(request, None, plan(found).local, calls=calls), "", local, success)


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
) -> tuple[list[Any], list[dict[str, Any]], list[str], set[str]]:
    """Forward the parts of a batch the sources take: (the items left for the local store, the
    errors of the forwarded parts, the ids a source took whole, the ids some source took without
    error). `context_of(item)`: the @context an item is read with."""
    if unregistered(request, tenant_name):
        return items, [], [], set()
    documents = await _registrations(request, tenant_name)
    if not documents:
        return items, [], [], set()
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
    first = next(iter(terms.values()), None)
    calls = []
    for target, sent in per_target.values():
        headers = _headers(request, target, first, body=True)
        calls.append(Call(target, "POST", path, params, _payload(sent, headers, first), headers))
    answers = await forwarder(request).send_all(calls)
    errors: list[dict[str, Any]] = []
    done: set[str] = set()
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
        done.update(i for sent in answer.call.body or [] if isinstance(i := _item_id(sent), str) and i not in failed)
    return local_items, errors, remote_whole, done
