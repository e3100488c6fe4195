"""One access-log line per request (--access-log), written by app.ProtocolGuard once the answer
is out: request id, principal, tenant, method, path, route template, status and duration.

The line has the shape of the other log records (logs.py): in text format
`2026-12-07 05:23:27,957 INFO cityos.access: GET /ngsi-ld/v1/entities/x 200 1.2ms route=... rid=...
principal=... tenant=...`, in JSON (--log-format json) one object with the same fields as members.

It is on the path of every request, so it costs as little as Python allows (issue 20's "at most
5%", docs/performance.md, "Metrics and access log cost"): no logging module (a LogRecord, a
formatter and a locked, flushed write cost tens of microseconds), and the request's own part is
one tuple appended to a list (with the Shape of its route, method and status: the pieces of its
line that depend on nothing else, made once). The lines of 50 ms (at most 256) are formatted
together and written to stderr in one write: the parts of every line, values as they are (no dict,
no orjson call, no float formatting), are joined once, and the values from outside of the whole
batch are checked at once, in C, for anything that needs escaping (a control or non-ASCII
character; in JSON a quote or a backslash; in text an `@` of URL credentials; a method that is not
a known one). Only a batch that has some is formatted again line by line, escaped
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
from cityos.observe.metrics import METHODS
from cityos.redact import redact_text

LOGGER = "cityos.access"  # its level decides (INFO), as for a logger of that name
MAX_PENDING = 256  # lines kept before a write, even within FLUSH_SECONDS
FLUSH_SECONDS = 0.05  # how late a line may be written: one write for the lines of 50 ms
MILLIS = [f"{n:03d}" for n in range(1000)]  # "000" to "999": a list index instead of a format
MAX_SHAPES = 4096  # Shapes kept (routes x known methods x statuses: far fewer in practice)
# the pieces of a line after its milliseconds or a duration's fraction, by a list index: each piece
# is one part fewer for the line's f-string to join (parts cost ~120 instructions each)
_JSON_MILLIS = [f'{n:03d}Z","level":"INFO","logger":"cityos.access","message":"' for n in range(1000)]
_JSON_FRACTIONS = [f".{n:03d}}}\n" for n in range(1000)]  # a line's end
_TEXT_MILLIS = [f"{n:03d} INFO cityos.access: " for n in range(1000)]


class Shape:
    """What the lines of one route, method and status have in common, made once (AccessLog.shape):
    the pieces between a line's values with the method, status and route template written in, so
    that a line is 12 parts in JSON and 9 in text instead of 20 and 15 (docs/performance.md,
    "Metrics and access log cost, fourth pass")."""

    __slots__ = ("code", "middle", "start", "status", "tail", "template", "tenths")

    def __init__(self, route: Any, method: str, status: int, json: bool) -> None:
        self.template = template = "-" if route is None else str(route.path)
        self.status = status
        self.start = f"{method} "  # the message's method
        if json:  # ...{start}{path}{code}{request id}...{middle}{path}{tail}{milliseconds}...
            self.code = f' {status}","request_id":"'
            self.middle = f'","method":"{method}","path":"'
            self.tail = f'","route":"{template}","status":{status},"duration_ms":'
            self.tenths: list[str] = []
        else:  # ...{start}{path}{code}{milliseconds}{tenths[tenth]}{request id}...
            self.code = f" {status} "
            self.middle = self.tail = ""
            self.tenths = [f".{n}ms route={template} rid=" for n in range(10)]


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
# Shape of its matched route (or none), method and status, duration in nanoseconds
Pending = tuple[int, str, str, str, str, str, Shape, int]


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
        # the Shapes by (id(route), method, status), as app.ProtocolGuard looks them up
        self.shapes: dict[tuple[int, str, int], Shape] = {}
        self.armed = False  # a write of the batch is planned
        self.odd = False  # the batch has a method that is not one of METHODS
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
        shape = self.shapes.get((id(route), method, status)) or self.shape(route, method, status)
        pending = self.pending
        pending.append((ended, request_id, principal, tenant, method, path, shape, nanos))
        if not self.armed or len(pending) >= MAX_PENDING:
            self.grew()

    def shape(self, route: Any, method: str, status: int, tally: Any = None) -> Shape:
        """The Shape of a route (None: no route matched), method and status, kept for the next
        requests when the method is a known one (any token is a method to HTTP: not kept), here
        and in the request's metrics Tally when there is one (app.ProtocolGuard reads it there)."""
        made = Shape(route, method, status, self.json)
        if method not in METHODS:
            self.odd = True  # its batch is escaped (a method is any token, and not checked)
        elif tally is not None:  # the tally of this route, method and status (an unknown
            tally.shape = made  # method's is shared by every unknown one: not kept there)
        elif len(self.shapes) < MAX_SHAPES:
            self.shapes[(id(route), method, status)] = made  # the route lives as long as the app
        return made

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
            self.odd = False
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
        odd, self.odd = self.odd, False
        if odd:  # a method that is not one of METHODS: the batch is escaped line by line
            return self.escaped(pending, clock)
        # the parts of every line, in order, joined once: a line is no string of its own (the
        # newline is in its last part)
        parts: list[str] = []
        add = parts.extend
        head_of = self._head_of
        # the time of a line as nanoseconds past `base`, the start of its second on the
        # perf_counter_ns clock (the big ints divided once per second of the batch, not per line)
        base, head = -(10**18), ""
        # principal and tenant change seldom from a line to the next: their part is made again
        # only when they do
        principal_was = tenant_was = None
        known = ""
        # the values from outside (paths, principals, tenants; the methods are METHODS, route
        # templates the code's own, and request_id_of keeps only [A-Za-z0-9._:-] in a request id)
        # are checked at once after the loop, in C
        outside: list[str] = []
        keep = outside.append
        if self.json:
            for ended, request_id, principal, tenant, _method, path, shape, nanos in pending:
                offset = ended - base  # nanoseconds into the second of `base`: a small int
                if offset >= 1_000_000_000:  # a later second (ended never decreases)
                    second = (ended + clock) // 1_000_000_000
                    base, head = second * 1_000_000_000 - clock, head_of(second)
                    offset = ended - base
                if principal != principal_was or tenant != tenant_was:
                    principal_was, tenant_was = principal, tenant
                    known = f'","principal":"{principal}","tenant":"{tenant}'
                    outside += (principal, tenant)
                keep(path)
                micros = (nanos + 500) // 1000
                add(  # the logger name (LOGGER) is written in _JSON_MILLIS
                    (
                        head,
                        _JSON_MILLIS[offset // 1_000_000],
                        shape.start,
                        path,
                        shape.code,
                        request_id,
                        known,
                        shape.middle,
                        path,
                        shape.tail,
                        f"{micros // 1000}",
                        _JSON_FRACTIONS[micros % 1000],
                    )
                )
        else:
            for ended, request_id, principal, tenant, _method, path, shape, nanos in pending:
                offset = ended - base
                if offset >= 1_000_000_000:  # a later second (ended never decreases)
                    second = (ended + clock) // 1_000_000_000
                    base, head = second * 1_000_000_000 - clock, head_of(second)
                    offset = ended - base
                if principal != principal_was or tenant != tenant_was:
                    principal_was, tenant_was = principal, tenant
                    known = f" principal={principal} tenant={tenant or '-'}\n"
                    outside += (principal, tenant)
                keep(path)
                tenths = (nanos + 50_000) // 100_000
                add(
                    (
                        head,
                        _TEXT_MILLIS[offset // 1_000_000],
                        shape.start,
                        path,
                        shape.code,
                        f"{tenths // 10}",
                        shape.tenths[tenths % 10],
                        request_id,
                        known,
                    )
                )
        joined = "".join(outside)
        if joined.isascii():
            data = joined.encode("ascii")
            # bytes.translate returns its very input when no byte changed: nothing to escape
            if data.translate(_JSON_PLAIN if self.json else _TEXT_PLAIN) is data:
                return "".join(parts)
        return self.escaped(pending, clock)  # the rare batch

    def escaped(self, pending: list[Pending], clock: int) -> str:
        """The lines of `pending`, each escaped (the rare batch with a value that needs it)."""
        return "".join(self._escaped(entry, clock) + "\n" for entry in pending)

    def _escaped(self, entry: Pending, clock: int) -> str:
        """One line with its values escaped (JSON by orjson; text as logs.SafeFormatter does)."""
        ended, request_id, principal, tenant, method, path, shape, nanos = entry
        now = ended + clock
        second = now // 1_000_000_000
        millis = MILLIS[now // 1_000_000 % 1000]
        template, status = shape.template, shape.status
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
