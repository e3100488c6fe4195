"""Serving limits below the application: slow and idle clients, the connection cap, open files.

The ASGI app never sees a client that does not finish its request head, so these limits live in
the HTTP protocol (`protocol.py`) that `cityos serve` hands to uvicorn.
"""

from __future__ import annotations

import logging
import resource

from cityos.serving.protocol import ConnectionLimits, GuardedHttpToolsProtocol, configure, limits_from

__all__ = ["ConnectionLimits", "GuardedHttpToolsProtocol", "configure", "limits_from", "raise_open_file_limit"]

log = logging.getLogger("cityos.serving")

RESERVED_FILES = 128
"""Open files kept for everything but client connections: database files and connections, logs,
notification and MQTT sockets, the listening socket."""


def raise_open_file_limit(max_connections: int) -> int:
    """Raise this process's soft open-file limit to its hard limit (workers inherit it), so that
    --max-connections, not the operating system, decides when a connection is refused; returns
    the cap that fits the limit (lowered, with a warning, when the hard limit is too small)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, max_connections + RESERVED_FILES)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("open-file limit raised from %d to %d", soft, target)
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    room = soft - RESERVED_FILES
    if max_connections > room:
        log.warning(
            "--max-connections %d does not fit the open-file limit %d; %d connections are served per process",
            max_connections,
            soft,
            max(room, 1),
        )
        return max(room, 1)
    return max_connections
