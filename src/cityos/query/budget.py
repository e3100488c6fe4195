"""One time budget per read request (`--query-timeout`), shared by everything the request does:
the store's SQL and Python halves, the fetches of linked entities (join), and the rendering of the
page on the event loop.

Why a request budget and not only a store timeout: a join makes one store query per entity and
level, each under its own timeout, and rendering runs after the store is done; without a deadline
for the request as a whole, N store calls each within their limit add up to N times it. The
deadline lives in a ContextVar, so code far from the handler (render loops, join, the store's
bounded predicates) checks it without threading it through every signature; a request that never
began a budget checks nothing.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import ParamSpec, TypeVar

from cityos.errors import QueryTimeout

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")

_deadline: ContextVar[tuple[float, float] | None] = ContextVar("cityos_request_deadline", default=None)

CHECK_EVERY = 32
"""Entities rendered between two looks at the clock (a look costs ~50 ns; 32 entities well under 1 ms)."""


def deadline() -> float | None:
    """The monotonic time the request's budget runs out, or None without a budget."""
    current = _deadline.get()
    return None if current is None else current[0]


def check() -> None:
    """Raise QueryTimeout (403) once the request's budget is spent."""
    current = _deadline.get()
    if current is not None and time.monotonic() > current[0]:
        raise QueryTimeout(f"the query took longer than {current[1]} s")


def checked(items: Iterable[T]) -> Iterator[T]:
    """`items`, with the budget checked every CHECK_EVERY of them (for loops on the event loop)."""
    current = _deadline.get()
    if current is None:
        yield from items
        return
    end, timeout = current
    for n, item in enumerate(items):
        if n % CHECK_EVERY == 0 and time.monotonic() > end:
            raise QueryTimeout(f"the query took longer than {timeout} s")
        yield item


async def within(awaitable: Awaitable[T]) -> T:
    """Await `awaitable` for no longer than the budget left (QueryTimeout past it)."""
    current = _deadline.get()
    if current is None:
        return await awaitable
    end, timeout = current
    try:
        async with asyncio.timeout(max(end - time.monotonic(), 0.0)):
            return await awaitable
    except TimeoutError as exc:
        raise QueryTimeout(f"the query took longer than {timeout} s") from exc


@contextmanager
def scope(timeout: float) -> Iterator[None]:
    """A budget of `timeout` seconds for the block, ended with it (an enclosing budget that ends
    sooner stays in force). Reset on the way out: a task that serves several requests in turn
    (an in-process test client) must not carry one request's deadline into the next."""
    current = _deadline.get()
    end = time.monotonic() + timeout
    if current is not None and current[0] <= end:
        yield
        return
    token = _deadline.set((end, timeout))
    try:
        yield
    finally:
        _deadline.reset(token)


def per_request(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Run an HTTP handler (Starlette request first) under a budget of `--query-timeout`."""

    @functools.wraps(handler)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        # scope() inlined: this wraps every read request, and a generator-based context manager
        # costs more than the rest of the budget together
        timeout: float = args[0].scope["app"].state["services"].settings.query_timeout  # type: ignore[attr-defined]
        end = time.monotonic() + timeout
        current = _deadline.get()
        if current is not None and current[0] <= end:
            return await handler(*args, **kwargs)
        token = _deadline.set((end, timeout))
        try:
            return await handler(*args, **kwargs)
        finally:
            _deadline.reset(token)

    return run
