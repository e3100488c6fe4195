"""Route matching that tries only the routes a path can match, in the router's order.

Starlette's router tries every route in turn, a regular expression each: a temporal or admin
request went through the 30 entity routes first (about 70 tries for `/temporal/entities/{id}`).
A route's path matches only paths that begin with its literal part (the text before its first
`{param}`), so the routes worth trying depend on the path's first segments: the list is worked out
once per distinct first segments and kept. The routes tried, their order and everything after a
match (405 from a partial match, 404) are Starlette's own, so the answers are the same.
"""

from __future__ import annotations

from starlette.routing import PARAM_REGEX, BaseRoute, Match, Route, Router
from starlette.types import Receive, Scope, Send

MAX_KEYS = 1024  # distinct keys kept (a key can hold an id: /iot/devices/{device_id})


def literal_prefix(route: BaseRoute) -> str | None:
    """The text every path this route matches begins with; None if unknown (not a plain Route)."""
    if type(route) is not Route:
        return None
    first = PARAM_REGEX.search(route.path)
    return route.path if first is None else route.path[: first.start()]


class RouteIndex:
    """The router's `app` for http requests, trying only the routes a path's key allows."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self._routes: list[BaseRoute] = []
        self._prefixes: list[tuple[BaseRoute, str | None]] = []
        self._by_key: dict[str, list[BaseRoute]] = {}  # paths that go on after their key
        self._by_path: dict[str, list[BaseRoute]] = {}  # paths that are their key (/ngsi-ld/v1/entities)

    def candidates(self, path: str) -> list[BaseRoute]:
        routes = self.router.routes
        if routes is not self._routes or len(routes) != len(self._prefixes):  # routes added later
            self._routes = routes
            self._prefixes = [(route, literal_prefix(route)) for route in routes]
            self._by_key, self._by_path = {}, {}
        end = path.find("/", 1)  # the key ends at the path's 4th "/": "/ngsi-ld/v1/entities"
        if end > 0:
            end = path.find("/", end + 1)
            if end > 0:
                end = path.find("/", end + 1)
        if end < 0:  # the whole path is the key: only a route whose literal part it begins with
            kept, key = self._by_path, path
        else:
            kept, key = self._by_key, path[:end]
        found = kept.get(key)
        if found is None:
            found = [
                route
                for route, prefix in self._prefixes
                if prefix is None or (key.startswith(prefix) if end < 0 else _may_match(prefix, key))
            ]
            if len(kept) >= MAX_KEYS:
                kept.clear()
            kept[key] = found
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
