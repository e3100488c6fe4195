"""One access-log line per request (--access-log), written by app.ProtocolGuard once the answer
is out: request id, principal, tenant, method, path, route template, status and duration.

The line has the shape of the other log records (logs.py): in text format
`2026-12-07 05:23:27,957 INFO cityos.access: GET /ngsi-ld/v1/entities/x 200 1.2ms route=... rid=...
principal=... tenant=...`, in JSON (--log-format json) one object with the same fields as members.
It is on the path of every request, so it does not go through the logging module (a LogRecord, a
formatter and a locked, flushed write cost tens of microseconds, benchmarks/observe_cost.py): the
line is built with one f-string or orjson call, and the lines of 50 ms (at most 256) are written
to stderr in one write. So a line may come up to 50 ms after records logged later, and a killed
process loses at most the last 50 ms of lines. Control characters of the path, principal and
tenant are escaped and URL credentials hidden, as logs.SafeFormatter does.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, TextIO

import orjson

from cityos.logs import CONTROL, escape_control
from cityos.redact import redact_text

LOGGER = "cityos.access"  # its level decides (INFO), as for a logger of that name
MAX_PENDING = 256  # lines kept before a write, even within FLUSH_SECONDS
FLUSH_SECONDS = 0.05  # how late a line may be written: one write for the lines of 50 ms


def _clean(text: str) -> str:
    if "@" in text:
        text = redact_text(text)
    return escape_control(text) if CONTROL.search(text) else text


class AccessLog:
    """Builds and batches the lines; `stream` None writes to sys.stderr as it is at the time."""

    def __init__(self, log_format: str = "text", stream: TextIO | None = None) -> None:
        self.json = log_format == "json"
        self.stream = stream
        self.logger = logging.getLogger(LOGGER)
        self._lines: list[str] = []
        self._second = -1
        self._stamp = ""

    def _time(self, now: float) -> str:
        """The record time as the other records show it (cached per second: strftime is slow)."""
        second = int(now)
        if second != self._second:
            self._second = second
            fmt = "%Y-%m-%dT%H:%M:%S" if self.json else "%Y-%m-%d %H:%M:%S"
            self._stamp = time.strftime(fmt, time.gmtime(second) if self.json else time.localtime(second))
        millis = int((now - second) * 1000)
        return f"{self._stamp}.{millis:03d}Z" if self.json else f"{self._stamp},{millis:03d}"

    def __call__(
        self,
        request_id: str,
        principal: str,
        tenant: str,
        method: str,
        path: str,
        route: Any,
        status: int,
        seconds: float,
    ) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        template = getattr(route, "path", None) or "-"
        ms = round(seconds * 1000, 3)
        stamp = self._time(time.time())
        if self.json:
            line = orjson.dumps(
                {
                    "time": stamp,
                    "level": "INFO",
                    "logger": LOGGER,
                    "message": f"{method} {path} {status}",
                    "request_id": request_id,
                    "principal": principal,
                    "tenant": tenant,
                    "method": method,
                    "path": path,
                    "route": template,
                    "status": status,
                    "duration_ms": ms,
                }
            ).decode()
        else:
            line = (
                f"{stamp} INFO {LOGGER}: {method} {_clean(path)} {status} {ms:.1f}ms route={template} "
                f"rid={request_id} principal={_clean(principal)} tenant={_clean(tenant) or '-'}"
            )
        lines = self._lines
        lines.append(line)
        if len(lines) == 1:  # the first of a batch: written with the others FLUSH_SECONDS later
            try:
                asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop (a synchronous caller): at once
                self.flush()
        elif len(lines) >= MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if not lines:
            return
        stream = self.stream or sys.stderr
        try:
            stream.write("\n".join(lines) + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed stderr must not fail requests
            pass
