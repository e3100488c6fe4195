"""Route matching that tries only the routes a path can match, in the router's order.

Starlette's router tries every route in turn, a regular expression each: a temporal or admin
request went through the 30 entity routes first (about 70 tries for `/temporal/entities/{id}`).
A route's path matches only paths that begin with its literal part (the text before its first
`{param}`), so the routes worth trying depend on the path's first segments: the list is worked out
once per distinct first segments and kept. A parameter matches no "/", so a path longer than its
key is also tried only on routes with as many "/" as it has (a retrieve by id no longer tries the
partial update's `/entities/{id}/attrs/{attr}` first). The routes tried, their order and everything after a
match (405 from a partial match, 404) are Starlette's own, so the answers are the same.
"""

from __future__ import annotations

from typing import TypeVar

from starlette.convertors import PathConvertor
from starlette.routing import PARAM_REGEX, BaseRoute, Match, Route, Router
from starlette.types import Receive, Scope, Send

K = TypeVar("K")
MAX_KEYS = 1024  # distinct keys kept (a key can hold an id: /iot/devices/{device_id})


def literal_prefix(route: BaseRoute) -> str | None:
    """The text every path this route matches begins with; None if unknown (not a plain Route)."""
    if type(route) is not Route:
        return None
    first = PARAM_REGEX.search(route.path)
    return route.path if first is None else route.path[: first.start()]


def slashes(route: BaseRoute) -> int | None:
    """How many "/" every path this route matches has (a parameter matches no "/"); None if any
    number (not a plain Route, or a `:path` parameter)."""
    if type(route) is not Route or any(isinstance(c, PathConvertor) for c in route.param_convertors.values()):
        return None
    return route.path.count("/")


class RouteIndex:
    """The router's `app` for http requests, trying only the routes a path's key allows."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self._routes: list[BaseRoute] = []
        self._prefixes: list[tuple[BaseRoute, str | None, int | None]] = []
        self._by_key: dict[tuple[str, int], list[BaseRoute]] = {}  # paths that go on after their key
        self._by_path: dict[str, list[BaseRoute]] = {}  # paths that are their key (/ngsi-ld/v1/entities)

    def candidates(self, path: str) -> list[BaseRoute]:
        routes = self.router.routes
        if routes is not self._routes or len(routes) != len(self._prefixes):  # routes added later
            self._routes = routes
            self._prefixes = [(route, literal_prefix(route), slashes(route)) for route in routes]
            self._by_key, self._by_path = {}, {}
        end = path.find("/", 1)  # the key ends at the path's 4th "/": "/ngsi-ld/v1/entities"
        if end > 0:
            end = path.find("/", end + 1)
            if end > 0:
                end = path.find("/", end + 1)
        if end < 0:  # the whole path is the key: only a route whose literal part it begins with
            found = self._by_path.get(path)
            if found is None:
                found = [route for route, prefix, _ in self._prefixes if prefix is None or path.startswith(prefix)]
                _keep(self._by_path, path, found)
            return found
        # a longer path: the routes whose literal part may begin it and whose "/" count is its own
        key = (path[:end], path.count("/", end))
        found = self._by_key.get(key)
        if found is None:
            count = key[1] + 3
            found = [
                route
                for route, prefix, many in self._prefixes
                if prefix is None or (_may_match(prefix, key[0]) and many in (None, count))
            ]
            _keep(self._by_key, key, found)
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("root_path"):  # as Starlette does it, unchanged
            await self.router.app(scope, receive, send)
            return
        if "router" not in scope:
            scope["router"] = self.router
        partial = partial_scope = None
        for route in self.candidates(scope["path"]):
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope["route"] = route
                scope.update(child_scope)
                await route.handle(scope, receive, send)
                return
            if match is Match.PARTIAL and partial is None:
                partial, partial_scope = route, child_scope
        if partial is not None and partial_scope is not None:
            scope["route"] = partial
            scope.update(partial_scope)
            await partial.handle(scope, receive, send)
            return
        await self.router.app(scope, receive, send)  # no route: Starlette's own 404 (or redirect)


def _keep(kept: dict[K, list[BaseRoute]], key: K, found: list[BaseRoute]) -> None:
    if len(kept) >= MAX_KEYS:
        kept.clear()
    kept[key] = found


def _may_match(prefix: str, key: str) -> bool:
    """Whether a path whose first segments are `key`, followed by "/" and more, can begin with
    `prefix`."""
    if len(prefix) <= len(key):
        return key.startswith(prefix)
    return prefix.startswith(key) and prefix[len(key)] == "/"


def index_routes(router: Router) -> None:
    """Route http requests through a RouteIndex (the lifespan and the rest as before); a router
    with middlewares of its own is left as it is."""
    if router.middleware_stack == router.app:
        router.middleware_stack = RouteIndex(router)
