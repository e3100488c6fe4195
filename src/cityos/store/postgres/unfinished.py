"""What the PostgreSQL back-end does not implement yet raises BackendIncomplete naming itself, so a
caller learns exactly what is missing instead of getting a silent empty answer."""

from __future__ import annotations

from typing import NoReturn


class BackendIncomplete(NotImplementedError):
    """A storage-contract method the PostgreSQL back-end does not have yet."""


def missing(method: str) -> NoReturn:
    raise BackendIncomplete(f"PostgresStore.{method} is not implemented yet (see docs/deployment.md)")
