"""What a handler says about itself for the API description (ops/openapi.py reads it from the
route table): a summary, its query parameters (the same tuples the handler checks), its body and
answers by component schema name (ops/schemas.py). Plain data, no web framework: the handler
modules import only this."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
ATTRIBUTE = "__api__"  # the handler attribute the declarations live in
ANY_METHOD = "*"
BROWSER_PAGE = "__browser_page__"  # a handler that answers browsers (HTML), not API clients


@dataclass(frozen=True)
class Operation:
    """One operation as the description shows it. `body`/`returns` name component schemas (None:
    no body); `ok` is the success status; `errors` the ProblemDetails statuses worth naming (any
    other 4xx is described by the 4XX range); `links` name operations (by operationId) whose path
    parameters a success answer gives, as {link name: (operationId, {parameter: expression})}."""

    summary: str
    query: tuple[str, ...] = ()
    body: str | None = None
    body_required: bool = True
    ok: int = 200
    returns: str | None = "Any"
    errors: tuple[int, ...] = (400,)
    media: tuple[str, ...] = ("application/json", "application/ld+json")  # of the answers
    # of the body: application/ld+json bodies are accepted too, with their @context inside
    body_media: tuple[str, ...] = ("application/json",)
    links: Mapping[str, tuple[str, Mapping[str, str]]] = field(default_factory=dict)
    more: Mapping[int, str | None] = field(default_factory=dict)  # other success answers: status -> schema
    errors_schema: str = "ProblemDetails"  # of every error answer (Open311 answers its spec's own shape)
    # the request headers it reads, by name (ops/schemas.HEADERS); None: NGSI-LD's (NGSILD-Tenant and
    # Link) for an operation under /ngsi-ld/v1/, none for the others
    headers: tuple[str, ...] | None = None


def api(summary: str, *, method: str = ANY_METHOD, **details: Any) -> Callable[[F], F]:
    """Declares `summary` and `details` (Operation's fields) on a handler; several `api(...)` with
    `method=` describe a handler routed for several methods."""

    def mark(handler: F) -> F:
        declared: dict[str, Operation] = dict(getattr(handler, ATTRIBUTE, {}))
        declared[method] = Operation(summary, **details)
        setattr(handler, ATTRIBUTE, declared)
        return handler

    return mark


def declared(handler: object, method: str) -> Operation | None:
    """The declaration of `handler` for `method`, or None if it declares none."""
    table: Mapping[str, Operation] = getattr(handler, ATTRIBUTE, {})
    return table.get(method) or table.get(ANY_METHOD)


def browser_page(handler: F) -> F:
    """Marks a handler of the web console (HTML pages, their assets and forms): not part of the API
    description, which is for API clients (docs/console.md describes the pages)."""
    setattr(handler, BROWSER_PAGE, True)
    return handler


def in_description(route: object) -> bool:
    """Whether a route belongs in the API description: a plain route that is not a browser page."""
    from starlette.routing import Route

    return isinstance(route, Route) and not getattr(route.endpoint, BROWSER_PAGE, False)
