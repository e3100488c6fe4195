"""The console's pages: thin Starlette handlers that ask the public APIs (client.py), shape the
answers (views.py) and render a template in the user's language (i18n.py).

Routes live at `/` (the overview) and under `/console/`; they pass the door without credentials
(auth/middleware.py, CONSOLE_PREFIX) because a browser sends none: each page forwards the session
cookie's bearer token to the API, which applies the access policies as to any client.
"""

from __future__ import annotations

import asyncio
import functools
import math
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from cityos.auth.middleware import SESSION_COOKIE
from cityos.auth.principal import Principal
from cityos.console import i18n, layers, views
from cityos.console import oidc as console_oidc
from cityos.console.client import API, Answer, ApiClient
from cityos.console.layers import LayerCache
from cityos.errors import NgsiLdError
from cityos.mapdata.changes import hub_of
from cityos.ops.declare import browser_page
from cityos.policy.decision import Action

PREFIX = "/console"
PAGE_SIZE = 20
PASSED_ON = ("content-type", "ngsild-results-count", "link", "www-authenticate", "content-range")
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".json": "application/json", ".txt": "text/plain"}
# what the console's pages may ask the API for through /console/api/ (reads only, the user's own rights)
PROXIED = ("ngsi-ld/v1/",)
# the Content-Security-Policy of every page: nothing from elsewhere unless a basemap is configured
CSP = (
    "default-src 'self'; img-src 'self' data: blob:{extra}; connect-src 'self'{extra}; "
    "worker-src 'self' blob:; child-src blob:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def _package_dir(name: str) -> Path:
    return Path(str(resources.files("cityos.console").joinpath(name)))


@functools.cache
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(_package_dir("templates"))),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["short"] = views.short_id
    env.filters["colour"] = views.colour
    env.filters["unit"] = views.unit
    env.filters["when"] = views.when
    env.filters["json"] = lambda v: orjson.dumps(v, option=orjson.OPT_INDENT_2).decode()
    env.filters["urlq"] = lambda v: quote(str(v), safe="")
    return env


def language(request: Request) -> str:
    return i18n.choose(
        request.query_params.get("lang"), request.cookies.get(i18n.COOKIE), request.headers.get("accept-language")
    )


def client(request: Request) -> ApiClient:
    token = request.cookies.get(SESSION_COOKIE)
    authorization = f"Bearer {token}" if token else request.headers.get("authorization")
    return ApiClient(request.app, authorization, request.headers.get("ngsild-tenant"))


def basemap(request: Request) -> str:
    return str(getattr(request.app.state.services.settings, "console_basemap_url", "") or "")


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    t = i18n.Translator(language(request))
    base = basemap(request)
    origin = ""
    if base.startswith(("http://", "https://")):
        origin = " " + "/".join(base.split("/")[:3])
    html = (
        _environment()
        .get_template(template)
        .render(
            t=t,
            lang=t.language,
            locale=t.locale,
            languages=i18n.LANGUAGES,
            path=request.url.path,
            here=str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
            signed_in=SESSION_COOKIE in request.cookies,
            auth_required=request.app.state.identity.required,
            static=f"{PREFIX}/static",
            **context,
        )
    )
    headers = {"Content-Security-Policy": CSP.format(extra=origin), "X-Content-Type-Options": "nosniff"}
    headers["Referrer-Policy"] = "same-origin"
    return HTMLResponse(html, status_code=status, headers=headers)


def problem_text(answer: Answer) -> str:
    if isinstance(answer.body, dict):
        return str(answer.body.get("detail") or answer.body.get("title") or answer.status)
    return str(answer.status)


async def overview(request: Request) -> Response:
    async with client(request) as api:
        types = await api.types()
        counts, kpi, alert, observed, devices = await asyncio.gather(
            api.counts(types),
            api.get(f"{API}/entities", {"type": "KeyPerformanceIndicator", "limit": 100}),
            api.get(f"{API}/entities", {"type": "Alert", "limit": 100}),
            api.get(
                f"{API}/entities",
                {"type": ",".join(t for t in types if t.endswith("Observed")) or "-", "limit": 100},
            ),
            api.get("/iot/devices", {"limit": 100}),
        )
    device_list = devices.body.get("devices", []) if devices.ok and isinstance(devices.body, dict) else []
    return render(
        request,
        "overview.html",
        counts=counts,
        total=sum(counts.values()),
        kpis=views.kpis(kpi.body if kpi.ok else []),
        alerts=views.alerts(alert.body if alert.ok else []),
        readings=views.readings(observed.body if observed.ok else [], 10),
        devices=device_list,
        devices_visible=devices.ok,
    )


async def entity_list(request: Request) -> Response:
    """Types with counts, and a page of the entities of one type matching id and q (server-side paging)."""
    params = request.query_params
    chosen, q, id_part = params.get("type", ""), params.get("q", ""), params.get("id", "").strip()
    page = max(1, int(params.get("page", "1")) if params.get("page", "1").isdigit() else 1)
    error = ""
    results: list[dict[str, Any]] = []
    total = 0
    async with client(request) as api:
        if id_part.startswith("urn:") and not chosen:
            found = await api.get(f"{API}/entities/{quote(id_part, safe='')}")
            if found.ok:
                return RedirectResponse(f"{PREFIX}/entity?id={quote(id_part, safe='')}", status_code=303)
        types = await api.types()
        counts = await api.counts(types)
        if chosen:
            query = {"type": chosen, "q": q, "limit": PAGE_SIZE, "offset": (page - 1) * PAGE_SIZE}
            if id_part:
                query["idPattern"] = f".*{_re_escape(id_part)}.*"
            answer = await api.entities(query)
            if answer.ok:
                results, total = answer.body, answer.count or 0
            else:
                error = problem_text(answer)
    pages = max(1, math.ceil(total / PAGE_SIZE))
    keep = {"type": chosen, "q": q, "id": id_part}

    def link(n: int) -> str:
        return f"{PREFIX}/entities?" + urlencode({**{k: v for k, v in keep.items() if v}, "page": n})

    return render(
        request,
        "entities.html",
        counts=counts,
        chosen=chosen,
        q=q,
        id_part=id_part,
        results=[{"id": e["id"], "type": e.get("type", ""), "shown": views.display(e)} for e in results],
        total=total,
        page=page,
        pages=pages,
        previous=link(page - 1) if page > 1 else "",
        next=link(page + 1) if page < pages else "",
        error=error,
    )


def _re_escape(text: str) -> str:
    return "".join("\\" + c if c in r".^$*+?{}[]\|()" else c for c in text)


async def entity_page(request: Request) -> Response:
    entity_id = request.query_params.get("id", "")
    async with client(request) as api:
        answer = await api.get(f"{API}/entities/{quote(entity_id, safe='')}")
        if not answer.ok:
            return render(request, "error.html", status=answer.status, detail=problem_text(answer))
        entity = answer.body
        incoming = await _incoming(api, entity_id, str(entity.get("type", "")))
        representations = {}
        for name, params, accept in (
            ("normalized", {}, "application/json"),
            ("concise", {"format": "concise"}, "application/json"),
            ("keyValues", {"format": "keyValues"}, "application/json"),
            ("json-ld", {}, "application/ld+json"),
            ("geojson", {}, "application/geo+json"),
        ):
            got = await api.get(f"{API}/entities/{quote(entity_id, safe='')}", params, accept=accept)
            representations[name] = got.body
    return render(
        request,
        "entity.html",
        entity=entity,
        rows=views.rows(entity),
        outgoing=views.relationships(entity),
        incoming=incoming,
        numeric=views.numeric_attributes(entity),
        representations=representations,
        may_acknowledge=entity.get("type") == "Alert" and await _may(request, "update", entity),
        may_edit=await _may(request, "update", entity),
    )


async def _incoming(api: ApiClient, entity_id: str, entity_type: str) -> list[tuple[str, str]]:
    """Entities that point at this one: a q on each relationship name known to point here (refX
    attributes, as Smart Data Models name them), over the types present (bounded)."""
    found: list[tuple[str, str]] = []
    types = await api.types()
    candidates = [f"ref{entity_type}", "refDevice", "alertSource", "refParkingSite", "hasPart", "isPartOf"]
    if not types:
        return found
    for attr in dict.fromkeys(candidates):
        query = {"type": ",".join(types), "q": f'{attr}=="{entity_id}"', "limit": 50}
        answer = await api.get(f"{API}/entities", query)
        if answer.ok:
            found += [(attr, e["id"]) for e in answer.body]
    return found


async def _may(request: Request, action: Action, entity: dict[str, Any]) -> bool:
    """Whether the signed-in user may do `action` on this entity, asked of the policy decision point
    (auth off: anyone may), so the page offers a write only where it would be allowed."""
    allowed = await _allowed(request, action, [str(entity.get("type"))], str(entity["id"]))
    return bool(allowed)


async def _principal(request: Request, authorization: str | None) -> Principal | None:
    """Who `authorization` (a bearer token) is (auth off: the open principal); None: no one valid."""
    from cityos.auth.principal import OPEN

    identity = request.app.state.identity
    if not identity.required:
        return OPEN
    if not authorization:
        return None
    try:
        found: Principal = await identity.authenticator.authenticate(authorization.encode())
    except NgsiLdError:
        return None
    return found


async def _allowed(request: Request, action: Action, types: list[str], entity_id: str | None = None) -> list[str]:
    """The types (of `types`) on which the signed-in user may do `action`."""
    from cityos.policy.decision import Target

    token = request.cookies.get(SESSION_COOKIE)
    principal = await _principal(request, f"Bearer {token}" if token else None)
    if principal is None:
        return []
    services = request.app.state.services
    terms = services.contexts.core_terms()
    allows = services.authorizer.allows
    return [t for t in types if allows(principal, action, Target("", entity_id, (terms.expand(t),)))]


def _layer_cache(request: Request) -> LayerCache:
    state = request.app.state
    found: LayerCache | None = getattr(state, "console_layers", None)
    if found is None:
        found = state.console_layers = LayerCache(float(state.services.settings.tile_cache_seconds))
    return found


async def _map_counts(request: Request, api: ApiClient) -> dict[str, int]:
    """The located count per type: kept between loads for every caller of the same policy view, and
    kept up to date from the changes committed since (layers.py)."""

    async def read() -> layers.Answer:
        failures = api.failures
        types = await api.types()
        counts = await api.counts(types, attrs="location")
        # each name as the API expands it (no Link header: the core context), so a change's types
        # can be matched to the counts (`/types?details=true` says it too, at 10 times the cost)
        expand = request.app.state.services.contexts.core_terms().expand
        return layers.Answer(counts, {expand(t): t for t in types}, api.failures == failures)

    authorizer = request.app.state.services.authorizer
    tenant = request.headers.get("ngsild-tenant") or ""
    principal = await _principal(request, api.headers.get("Authorization"))
    found = layers.key(authorizer, principal, tenant)
    hub = hub_of(request) if found is not None else None

    def again() -> layers.Key | None:
        now = layers.key(authorizer, principal, tenant)
        return None if now is None else now[0]

    return await _layer_cache(request).counts(hub, found, read, again)


async def map_page(request: Request) -> Response:
    async with client(request) as api:
        counts = await _map_counts(request, api)
    layers = [
        {"type": t, "colour": views.colour(t), "value": views.DISPLAY_VALUE.get(t, ""), "count": n}
        for t, n in counts.items()
        if n
    ]
    # the features come from /tiles and /cityos/v1/changes (static/map.js); the API for the rest
    config = {"layers": layers, "basemap": basemap(request), "api": f"{PREFIX}/api/ngsi-ld/v1"}
    return render(request, "map.html", config=config, layers=layers)


async def operations(request: Request) -> Response:
    async with client(request) as api:
        types = await api.types()
        subs, groups, devices, contexts, imports = await asyncio.gather(
            api.get(f"{API}/subscriptions", {"limit": 100}),
            api.get("/iot/services", {"limit": 100}),
            api.get("/iot/devices", {"limit": 100}),
            api.get(f"{API}/jsonldContexts", {"details": "true"}),
            api.get("/cityos/v1/imports", {"limit": 20}),
        )

    def listed(answer: Answer, key: str = "") -> Any:
        if not answer.ok or not answer.body:
            return []
        return answer.body.get(key, []) if key else answer.body

    return render(
        request,
        "operations.html",
        subscriptions=listed(subs),
        subscriptions_error="" if subs.ok else problem_text(subs),
        groups=listed(groups, "services"),
        devices=listed(devices, "devices"),
        iot_error="" if groups.ok else problem_text(groups),
        contexts=listed(contexts),
        contexts_error="" if contexts.ok else problem_text(contexts),
        imports=listed(imports),
        imports_error="" if imports.ok else problem_text(imports),
        subscribable=await _allowed(request, "subscribe", types),
    )


async def create_subscription(request: Request) -> Response:
    """A subscription to one type's changes (optionally some attributes and a q), made through the
    API, which checks the right to subscribe and the endpoint (docs/security.md)."""
    form = await request.form()
    entity_type, uri, q = (str(form.get(k, "")).strip() for k in ("type", "uri", "q"))
    attrs = [a.strip() for a in str(form.get("attrs", "")).split(",") if a.strip()]
    body: dict[str, Any] = {
        "type": "Subscription",
        "entities": [{"type": entity_type}],
        "notification": {"endpoint": {"uri": uri, "accept": "application/json"}},
    }
    if q:
        body["q"] = q
    if attrs:
        body["watchedAttributes"] = attrs
    async with client(request) as api:
        answer = await api.request("POST", f"{API}/subscriptions", body=body)
    if not answer.ok:
        return render(request, "error.html", status=answer.status, detail=problem_text(answer))
    return RedirectResponse(f"{PREFIX}/operations", status_code=303)


async def admin(request: Request) -> Response:
    """Keys, users, access policies and the audit trail, each as the admin APIs answer the user
    (a user without the admin role sees why each is not shown)."""
    after = request.query_params.get("after", "0")
    after = after if after.isdigit() else "0"
    fresh = "true" if request.query_params.get("fresh") else ""
    async with client(request) as api:
        keys, users, policies, audit, verification = await asyncio.gather(
            api.get("/cityos/v1/admin/keys"),
            api.get("/cityos/v1/admin/users"),
            api.get("/cityos/v1/admin/policies"),
            api.get("/cityos/v1/audit", {"limit": 50, "after": after}),
            api.get("/cityos/v1/audit/verification", {"fresh": fresh}),
        )

    def section(answer: Answer) -> dict[str, Any]:
        return {
            "items": answer.body if answer.ok and isinstance(answer.body, list) else [],
            "error": "" if answer.ok else problem_text(answer),
        }

    records = section(audit)
    last = records["items"][-1]["seq"] if records["items"] else None
    return render(
        request,
        "admin.html",
        keys=section(keys),
        users=section(users),
        policies=section(policies),
        audit=records,
        verification={
            "status": verification.body if verification.ok and isinstance(verification.body, dict) else None,
            "error": "" if verification.ok else problem_text(verification),
        },
        next_audit=f"{PREFIX}/admin?after={last}" if last is not None and len(records["items"]) == 50 else "",
    )


async def acknowledge(request: Request) -> Response:
    form = await request.form()
    alert_id = str(form.get("id", ""))
    async with client(request) as api:
        answer = await api.request("POST", f"/cityos/v1/alerts/{quote(alert_id, safe='')}/acknowledge")
    if not answer.ok:
        return render(request, "error.html", status=answer.status, detail=problem_text(answer))
    return RedirectResponse(f"{PREFIX}/entity?id={quote(alert_id, safe='')}", status_code=303)


async def edit_attribute(request: Request) -> Response:
    """A new value for one Property (a number stays a number), through the API's partial update,
    which decides again whether the user may."""
    form = await request.form()
    entity_id, name, raw = (str(form.get(k, "")) for k in ("id", "attr", "value"))
    value: Any = raw
    if str(form.get("numeric", "")) == "1":
        try:
            value = float(raw) if any(c in raw for c in ".eE") else int(raw)
        except ValueError:
            t = i18n.Translator(language(request))
            return render(request, "error.html", status=400, detail=t("entity.not_a_number"))
    async with client(request) as api:
        path = f"{API}/entities/{quote(entity_id, safe='')}/attrs/{quote(name, safe='')}"
        answer = await api.request("PATCH", path, body={"type": "Property", "value": value})
    if not answer.ok:
        return render(request, "error.html", status=answer.status, detail=problem_text(answer))
    return RedirectResponse(f"{PREFIX}/entity?id={quote(entity_id, safe='')}", status_code=303)


def _provider_name(request: Request) -> str:
    """The name on "Sign in with ..." when the console may sign in at the OpenID Connect issuer."""
    settings = request.app.state.services.settings
    return str(settings.console_oidc_name) if settings.oidc_issuer and settings.console_oidc_client_id else ""


async def sign_in(request: Request) -> Response:
    if request.method == "GET":
        return render(request, "signin.html", error="", oidc=_provider_name(request))
    form = await request.form()
    user, password = str(form.get("username", "")), str(form.get("password", ""))
    import base64

    basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    async with ApiClient(request.app, basic) as api:
        answer = await api.request("POST", "/cityos/v1/auth/token")
    if not answer.ok or not isinstance(answer.body, dict):
        t = i18n.Translator(language(request))  # the form again, with the reason (200, as browsers expect)
        return render(request, "signin.html", error=t("signin.failed"), oidc=_provider_name(request))
    reply = RedirectResponse("/", status_code=303)
    set_session(request, reply, answer.body["access_token"], int(answer.body.get("expires_in", 3600)))
    return reply


def set_session(request: Request, reply: Response, token: str, seconds: int) -> None:
    """The console's session: a bearer token in an HttpOnly, SameSite=Strict cookie (local users and
    OpenID Connect alike)."""
    secure = request.url.scheme == "https"
    reply.set_cookie(SESSION_COOKIE, token, max_age=seconds, httponly=True, samesite="strict", secure=secure)


async def sign_out(request: Request) -> Response:
    reply = RedirectResponse("/", status_code=303)
    reply.delete_cookie(SESSION_COOKIE)
    reply.delete_cookie(console_oidc.COOKIE, path=console_oidc.COOKIE_PATH)
    return reply


def _oidc_client(request: Request) -> console_oidc.ConsoleOidc | None:
    """The console's OpenID Connect client; None when not configured."""
    if not _provider_name(request):
        return None
    from cityos.auth.oidc import OidcVerifier  # loaded already: an issuer is set

    verifier = request.app.state.identity.authenticator.jwt
    if not isinstance(verifier, OidcVerifier):
        return None
    return console_oidc.ConsoleOidc(request.app.state.services.settings, verifier)


def _redirect_uri(request: Request) -> str:
    return str(request.base_url).rstrip("/") + f"{console_oidc.COOKIE_PATH}callback"


async def oidc_begin(request: Request) -> Response:
    """To the provider's sign-in, with a new state, nonce and PKCE verifier kept in the browser."""
    oidc = _oidc_client(request)
    if oidc is None:
        return Response(status_code=404)
    pending = console_oidc.Pending.new(request.query_params.get("next", "/"))
    try:
        target = await oidc.authorization_url(pending, _redirect_uri(request))
    except console_oidc.SignInFailed as failed:
        return _sign_in_failed(request, failed)
    reply = RedirectResponse(target, status_code=303)
    reply.set_cookie(
        console_oidc.COOKIE,
        pending.cookie(),
        max_age=console_oidc.PENDING_SECONDS,
        path=console_oidc.COOKIE_PATH,
        httponly=True,
        samesite="lax",  # it must come back with the provider's redirect (a cross-site navigation)
        secure=request.url.scheme == "https",
    )
    return reply


async def oidc_callback(request: Request) -> Response:
    """The provider's redirect: the code for tokens, the access token as the session (the API
    maps it to a principal as any bearer token), then on to the console."""
    oidc = _oidc_client(request)
    if oidc is None:
        return Response(status_code=404)
    pending = console_oidc.Pending.parse(request.cookies.get(console_oidc.COOKIE))
    try:
        tokens = await oidc.finish(request.query_params, pending, _redirect_uri(request))
        try:
            principal = await request.app.state.identity.authenticator.authenticate(f"Bearer {tokens.access_token}")
        except NgsiLdError as refused:
            raise console_oidc.SignInFailed("signin.oidc_token", f"access token: {refused.detail}", 502) from refused
        if (principal.claims or {}).get("sub") != tokens.id_claims.get("sub"):
            raise console_oidc.SignInFailed("signin.oidc_token", "the tokens name different subjects", 502)
    except console_oidc.SignInFailed as failed:
        return _sign_in_failed(request, failed)
    assert pending is not None  # finish() refuses a callback without one
    # a page, not a redirect: the provider's redirect may be a cross-site navigation, and the
    # browser sends a SameSite=Strict cookie on none of its hops; this page's own move is same-site
    reply = render(request, "signed_in.html", back=pending.back)
    set_session(request, reply, tokens.access_token, tokens.expires_in)
    reply.delete_cookie(console_oidc.COOKIE, path=console_oidc.COOKIE_PATH)
    return reply


def _sign_in_failed(request: Request, failed: console_oidc.SignInFailed) -> Response:
    """The sign-in page again with the reason (no session), and the pending sign-in forgotten."""
    t = i18n.Translator(language(request))
    reply = render(
        request,
        "signin.html",
        status=failed.status,
        error=t(failed.key, detail=failed.detail or "-"),
        oidc=_provider_name(request),
    )
    reply.delete_cookie(console_oidc.COOKIE, path=console_oidc.COOKIE_PATH)
    return reply


async def set_language(request: Request) -> Response:
    chosen = request.query_params.get("lang", i18n.DEFAULT)
    back = request.query_params.get("next", "/")
    if not back.startswith("/") or back.startswith("//"):
        back = "/"  # no open redirect
    reply = RedirectResponse(back, status_code=303)
    if chosen in i18n.LANGUAGES:
        reply.set_cookie(i18n.COOKIE, chosen, max_age=365 * 86400, samesite="lax")
    return reply


async def api_proxy(request: Request) -> Response:
    """GET of the NGSI-LD API with the session's credentials, for the map and the charts (the
    browser cannot send the HttpOnly session token itself)."""
    path = request.path_params["path"]
    if not path.startswith(PROXIED) or ".." in path:
        return Response(status_code=404)
    async with client(request) as api:
        answer = await api._client.get(
            "/" + path,
            params=request.query_params,
            headers={**api.headers, "Accept": request.headers.get("accept", "*/*")},
        )
    keep = {k: v for k, v in answer.headers.items() if k.lower() in PASSED_ON}
    return Response(answer.content, status_code=answer.status_code, headers=keep)


def static_file(folder: Path, path: str, types: dict[str, str]) -> Response:
    """A file of a package's static folder (never outside it: 404), typed by its suffix; also the
    citizens' page's (citizen/http.py)."""
    root = folder.resolve()
    target = (root / path).resolve()
    if root not in target.parents or not target.is_file():
        return Response(status_code=404)
    media = types.get(target.suffix, "application/octet-stream")
    return FileResponse(target, media_type=media, headers={"Cache-Control": "public, max-age=3600"})


async def static(request: Request) -> Response:
    return static_file(_package_dir("static"), request.path_params["path"], STATIC_TYPES)


def page(handler: Any) -> Any:
    """A page that needs a signed-in user when authentication is required (else: the sign-in page)."""

    @functools.wraps(handler)
    async def guarded(request: Request) -> Response:
        if request.app.state.identity.required and SESSION_COOKIE not in request.cookies:
            return RedirectResponse(f"{PREFIX}/signin", status_code=303)
        response: Response = await handler(request)
        return response

    return guarded


def routes() -> list[Route]:
    """The console's pages, forms, read proxy and assets: browser pages, outside the API description."""
    found = _routes()
    for route in found:
        browser_page(route.endpoint)
    return found


def _routes() -> list[Route]:
    return [
        Route("/", page(overview), methods=["GET"]),
        Route(f"{PREFIX}/entities", page(entity_list), methods=["GET"]),
        Route(f"{PREFIX}/entity", page(entity_page), methods=["GET"]),
        Route(f"{PREFIX}/map", page(map_page), methods=["GET"]),
        Route(f"{PREFIX}/operations", page(operations), methods=["GET"]),
        Route(f"{PREFIX}/admin", page(admin), methods=["GET"]),
        Route(f"{PREFIX}/subscriptions", page(create_subscription), methods=["POST"]),
        Route(f"{PREFIX}/entity/edit", page(edit_attribute), methods=["POST"]),
        Route(f"{PREFIX}/alerts/acknowledge", page(acknowledge), methods=["POST"]),
        Route(f"{PREFIX}/signin", sign_in, methods=["GET", "POST"]),
        Route(f"{PREFIX}/signout", sign_out, methods=["POST"]),
        Route(f"{PREFIX}/oidc/signin", oidc_begin, methods=["GET"]),
        Route(f"{PREFIX}/oidc/callback", oidc_callback, methods=["GET"]),
        Route(f"{PREFIX}/language", set_language, methods=["GET"]),
        Route(f"{PREFIX}/api/{{path:path}}", api_proxy, methods=["GET"]),
        Route(f"{PREFIX}/static/{{path:path}}", static, methods=["GET"]),
    ]
