"""One access-log line per request (--access-log), written by app.ProtocolGuard once the answer
is out: request id, principal, tenant, method, path, route template, status and duration.

The line has the shape of the other log records (logs.py): in text format
`2026-12-07 05:23:27,957 INFO cityos.access: GET /ngsi-ld/v1/entities/x 200 1.2ms route=... rid=...
principal=... tenant=...`, in JSON (--log-format json) one object with the same fields as members.

It is on the path of every request, so it costs as little as Python allows (issue 20's "at most
5%", docs/performance.md, "Metrics and access log cost"): no logging module (a LogRecord, a
formatter and a locked, flushed write cost tens of microseconds), and the request's own part is
one tuple appended to a list. The lines of 50 ms (at most 256) are formatted together and written
to stderr in one write: each by one f-string of the values as they are (no dict, no orjson call, no
float formatting), then the values of the whole batch are checked at once, in C, for anything
that needs escaping (a control or non-ASCII character; in JSON a quote or a backslash; in text an
`@` of URL credentials). Only a batch that has some is formatted again line by line, escaped
(orjson in JSON; in text control characters escaped and URL credentials hidden, as
logs.SafeFormatter does). So a line may come up to 50 ms after records logged later, a killed
process loses at most its last 50 ms of lines, and the level of the `cityos.access` logger (INFO
writes) is read when a batch is written.
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
MILLIS = [f"{n:03d}" for n in range(1000)]  # "000" to "999": a list index instead of a format
CODES = [str(n) for n in range(1000)]  # the status codes' text, likewise
# the pieces of a line around a status or after a duration's whole milliseconds, by a list index:
# each piece is one part fewer for the line's f-string to join (parts cost ~120 instructions each)
_JSON_CODE = [f' {n}","request_id":"' for n in range(1000)]
_JSON_STATUS = [f'","status":{n},"duration_ms":' for n in range(1000)]
_TEXT_STATUS = [f" {n} " for n in range(1000)]
_JSON_MILLIS = [f'{n:03d}Z","level":"INFO","logger":"cityos.access","message":"' for n in range(1000)]
_JSON_FRACTIONS = [f".{n:03d}}}" for n in range(1000)]
_TEXT_MILLIS = [f"{n:03d} INFO cityos.access: " for n in range(1000)]
_TEXT_TENTHS = [f".{n}ms route=" for n in range(10)]


def _table(forbidden: bytes) -> bytes:
    """A bytes.translate table that changes only the `forbidden` bytes (to non-ASCII ones)."""
    return bytes(b | 0x80 if b in forbidden else b for b in range(256))


# what a value may not hold to be written as it is: control characters, and in JSON a quote or a
# backslash, in text an @ (URL credentials). bytes.translate returns its very input when no byte
# changed, so `data.translate(table) is data` says the batch is plain.
_CONTROLS = bytes(range(32)) + b"\x7f"
_JSON_PLAIN = _table(_CONTROLS + b'"\\')
_TEXT_PLAIN = _table(_CONTROLS + b"@")

# a request as kept until its batch is written: its end (perf_counter_ns: the batch turns it into
# wall-clock time, no time_ns call per request), request id, principal, tenant, method, path, the
# matched route (None: no route matched), status, duration in nanoseconds
Pending = tuple[int, str, str, str, str, str, Any, int, int]


def _clean(text: str) -> str:
    if "@" in text:
        text = redact_text(text)
    return escape_control(text) if CONTROL.search(text) else text


class AccessLog:
    """Keeps the requests of a batch and writes their lines; `stream` None writes to sys.stderr
    as it is at the time of the write."""

    def __init__(self, log_format: str = "text", stream: TextIO | None = None) -> None:
        self.json = log_format == "json"
        self.stream = stream
        self.logger = logging.getLogger(LOGGER)
        # the requests of the batch: app.ProtocolGuard appends to this very list (a C call, no
        # Python frame) and calls grew() when `armed` is off or the list is full; flush() empties it
        self.pending: list[Pending] = []
        self.armed = False  # a write of the batch is planned
        self._second = -1
        self._stamp = ""

    def record(
        self,
        request_id: str,
        principal: str,
        tenant: str,
        method: str,
        path: str,
        route: Any,
        status: int,
        ended: int,
        nanos: int,
    ) -> None:
        """One answered request; `ended` is perf_counter_ns() at its end, `nanos` its duration
        (what app.ProtocolGuard does inline)."""
        pending = self.pending
        pending.append((ended, request_id, principal, tenant, method, path, route, status, nanos))
        if not self.armed or len(pending) >= MAX_PENDING:
            self.grew()

    def grew(self) -> None:
        """After an append: the first of a batch is written with the others FLUSH_SECONDS later;
        a full batch at once."""
        if len(self.pending) >= MAX_PENDING:
            self.flush()
        elif not self.armed:
            try:
                asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop (a synchronous caller): at once
                self.flush()
            else:
                self.armed = True

    def flush(self) -> None:
        pending = self.pending[:]
        self.pending.clear()
        self.armed = False  # a timer still planned writes what comes until then: harmless
        if not pending or not self.logger.isEnabledFor(logging.INFO):
            return
        text = self.lines(pending, time.time_ns() - time.perf_counter_ns())
        stream = self.stream or sys.stderr
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # a closed stderr must not fail requests
            pass

    def _stamp_of(self, second: int) -> str:
        """The record time to the second, as the other records show it (strftime is slow: once a
        second)."""
        if second != self._second:
            self._second = second
            if self.json:
                self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            else:
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return self._stamp

    def _head_of(self, second: int) -> str:
        """What a line starts with, up to its milliseconds."""
        stamp = self._stamp_of(second)
        return f'{{"time":"{stamp}.' if self.json else f"{stamp},"

    def lines(self, pending: list[Pending], clock: int) -> str:
        """The lines of `pending`, each ended by a newline; `clock` is time_ns() - perf_counter_ns()."""
        formatted: list[str] = []
        line = formatted.append
        head_of = self._head_of
        # the time of a line as nanoseconds past `base`, the start of its second on the
        # perf_counter_ns clock (the big ints divided once per second of the batch, not per line)
        base, head = -(10**18), ""
        if self.json:
            for ended, request_id, principal, tenant, method, path, route, status, nanos in pending:
                offset = ended - base  # nanoseconds into the second of `base`: a small int
                if offset >= 1_000_000_000:  # a later second (ended never decreases)
                    second = (ended + clock) // 1_000_000_000
                    base, head = second * 1_000_000_000 - clock, head_of(second)
                    offset = ended - base
                micros = (nanos + 500) // 1000
                template = "-" if route is None else route.path
                line(  # the logger name (LOGGER) is written in _JSON_MILLIS
                    f"{head}{_JSON_MILLIS[offset // 1_000_000]}{method} {path}{_JSON_CODE[status]}{request_id}"
                    f'","principal":"{principal}","tenant":"{tenant}","method":"{method}","path":"{path}",'
                    f'"route":"{template}{_JSON_STATUS[status]}{micros // 1000}{_JSON_FRACTIONS[micros % 1000]}'
                )
            table = _JSON_PLAIN
        else:
            for ended, request_id, principal, tenant, method, path, route, status, nanos in pending:
                offset = ended - base
                if offset >= 1_000_000_000:  # a later second (ended never decreases)
                    second = (ended + clock) // 1_000_000_000
                    base, head = second * 1_000_000_000 - clock, head_of(second)
                    offset = ended - base
                tenths = (nanos + 50_000) // 100_000
                template = "-" if route is None else route.path
                line(
                    f"{head}{_TEXT_MILLIS[offset // 1_000_000]}{method} {path}{_TEXT_STATUS[status]}"
                    f"{tenths // 10}{_TEXT_TENTHS[tenths % 10]}{template} rid={request_id} principal={principal} "
                    f"tenant={tenant or '-'}"
                )
            table = _TEXT_PLAIN
        # the values from outside (principal to path; route templates are the code's own, and
        # request_id_of keeps only [A-Za-z0-9._:-] in a request id), as columns of the batch (zip,
        # in C), joined and checked at once
        columns = list(zip(*pending, strict=True))
        joined = "".join(["".join(column) for column in columns[2:6]])
        if joined.isascii():
            data = joined.encode("ascii")
            if data.translate(table) is data:  # no byte changed: nothing to escape
                line("")
                return "\n".join(formatted)
        return "".join(self._escaped(entry, clock) + "\n" for entry in pending)  # the rare batch

    def _escaped(self, entry: Pending, clock: int) -> str:
        """One line with its values escaped (JSON by orjson; text as logs.SafeFormatter does)."""
        ended, request_id, principal, tenant, method, path, route, status, nanos = entry
        now = ended + clock
        second = now // 1_000_000_000
        millis = MILLIS[now // 1_000_000 % 1000]
        template = "-" if route is None else str(route.path)
        if self.json:
            return orjson.dumps(
                {
                    "time": f"{self._stamp_of(second)}.{millis}Z",
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
                    "duration_ms": (nanos + 500) // 1000 / 1000,
                }
            ).decode()
        tenths = (nanos + 50_000) // 100_000
        return (
            f"{self._stamp_of(second)},{millis} INFO {LOGGER}: {_clean(method)} {_clean(path)} {status} "
            f"{tenths // 10}.{tenths % 10}ms route={_clean(template)} rid={_clean(request_id)} "
            f"principal={_clean(principal)} tenant={_clean(tenant) or '-'}"
        )
