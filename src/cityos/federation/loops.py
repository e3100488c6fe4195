"""Loop detection with the Via header (spec 6.3.18, annex D.3): each broker that forwards a
request adds itself to Via; a request whose Via already names this broker has gone round a
cycle of registrations and is refused with 508 instead of being forwarded again."""

from __future__ import annotations

from typing import ClassVar

from cityos.errors import NgsiLdError

PROTOCOL = "1.1"


class LoopDetected(NgsiLdError):
    type_name: ClassVar[str] = "LoopDetected"
    status: ClassVar[int] = 508
    title: ClassVar[str] = "Loop detected"


def hops(via: str | None) -> list[str]:
    """The received-by names of a Via value ("1.1 a:1026, HTTP/1.1 b" -> ["a:1026", "b"])."""
    out: list[str] = []
    for hop in (via or "").split(","):
        parts = hop.split()
        if len(parts) >= 2:
            out.append(parts[1].lower())
    return out


def check(via: str | None, me: str) -> None:
    if me.lower() in hops(via):
        raise LoopDetected(f"the request has already passed through {me} (Via: {via})")


def extend(via: str | None, me: str) -> str:
    """The Via value to send on: what came in, then this broker."""
    mine = f"{PROTOCOL} {me}"
    return f"{via}, {mine}" if via else mine
