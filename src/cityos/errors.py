"""The NGSI-LD error hierarchy: each exception carries its ProblemDetails type and HTTP status.

NgsiLdError
 ├── InvalidRequest            400
 ├── BadRequestData            400
 ├── AlreadyExists             409
 ├── Conflict                  409
 ├── OperationNotSupported     422
 ├── ResourceNotFound          404
 ├── NonexistentTenant         404
 ├── TooComplexQuery           403
 ├── TooManyResults            403
 ├── LdContextNotAvailable     504
 ├── InternalError             500
 ├── NotAcceptable             406
 ├── UnsupportedMediaType      415
 ├── LengthRequired            411
 ├── MethodNotAllowed          405
 ├── PayloadTooLarge           413
 └── DatabaseBusy              503  (not a spec type: the database lock was not free in time)
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
import traceback
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from cityos.audit.events import AuditEvent

ERROR_BASE = "https://uri.etsi.org/ngsi-ld/errors/"


class NgsiLdError(Exception):
    """Base class: subclasses name their ProblemDetails type and HTTP status."""

    type_name: ClassVar[str] = "InternalError"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    # a request refused by access control: the error handler records it (request.denied) before answering
    audit: AuditEvent | None = None

    def __init__(self, detail: str = "", **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    @property
    def type_uri(self) -> str:
        return ERROR_BASE + self.type_name

    def headers(self) -> dict[str, str]:
        """Response headers that go with the error (none but for a few)."""
        return {}

    def problem(self) -> dict[str, Any]:
        """The RFC 7807 ProblemDetails body."""
        body: dict[str, Any] = {"type": self.type_uri, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        body.update(self.extra)
        return body


class InvalidRequest(NgsiLdError):
    type_name, status, title = "InvalidRequest", 400, "Invalid request"


class BadRequestData(NgsiLdError):
    type_name, status, title = "BadRequestData", 400, "Bad request data"


class AlreadyExists(NgsiLdError):
    type_name, status, title = "AlreadyExists", 409, "Already exists"


class Conflict(NgsiLdError):
    type_name, status, title = "Conflict", 409, "Conflict"


class OperationNotSupported(NgsiLdError):
    type_name, status, title = "OperationNotSupported", 422, "Operation not supported"


class ResourceNotFound(NgsiLdError):
    type_name, status, title = "ResourceNotFound", 404, "Resource not found"


class NonexistentTenant(NgsiLdError):
    type_name, status, title = "NonexistentTenant", 404, "Tenant does not exist"


class TooComplexQuery(NgsiLdError):
    type_name, status, title = "TooComplexQuery", 403, "Query too complex"


class TooManyResults(NgsiLdError):
    type_name, status, title = "TooManyResults", 403, "Too many results"


class QueryTimeout(NgsiLdError):
    """Not a spec type: a query stopped at the query_timeout setting (a server-side limit)."""

    type_name, status, title = "TooComplexQuery", 403, "Query took too long"


class LdContextNotAvailable(NgsiLdError):
    type_name, status, title = "LdContextNotAvailable", 504, "@context not available"


class InternalError(NgsiLdError):
    type_name, status, title = "InternalError", 500, "Internal error"


class NotAcceptable(NgsiLdError):
    type_name, status, title = "NotAcceptable", 406, "Not acceptable"


class UnsupportedMediaType(NgsiLdError):
    type_name, status, title = "UnsupportedMediaType", 415, "Unsupported media type"


class LengthRequired(NgsiLdError):
    type_name, status, title = "LengthRequired", 411, "Length required"


class MethodNotAllowed(NgsiLdError):
    type_name, status, title = "MethodNotAllowed", 405, "Method not allowed"


class PayloadTooLarge(NgsiLdError):
    type_name, status, title = "PayloadTooLarge", 413, "Payload too large"


class DatabaseBusy(NgsiLdError):
    """The database stayed locked by another connection or process for longer than the
    db_busy_timeout setting: nothing was written, and the same request may be sent again.

    `retry_after` is how long the store waited before giving up (the busy timeout, or the time
    its retries took), answered as whole seconds, at least 1 (RFC 9110 delay-seconds): a lock
    held that long belongs to a long transaction (a bulk import, a migration, another process),
    so a client coming back sooner would most likely wait as long again and fail."""

    type_name, status, title = "DatabaseBusy", 503, "Database busy"

    def __init__(self, detail: str = "", *, retry_after: float = 1.0, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after_seconds(retry_after)

    @property
    def type_uri(self) -> str:
        return "urn:cityos:errors:DatabaseBusy"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


def retry_after_seconds(wait: float) -> int:
    """A wait in seconds as a Retry-After value: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(round(wait, 3)))


class DatabaseUnavailable(DatabaseBusy):
    """The connection to the database was lost (the server restarted, or ended the session) and
    one more try on a fresh connection failed too, or it was lost while a write was committing, so
    whether that write was applied is unknown. A 503 with Retry-After (the busy timeout: a server
    restarting or failing over), never a 500: the request may be sent again (writes in NGSI-LD are
    idempotent by id, except appends of temporal instances)."""

    type_name, title = "DatabaseUnavailable", "Database unavailable"

    @property
    def type_uri(self) -> str:
        return "urn:cityos:errors:DatabaseUnavailable"


def log_failure(logger: logging.Logger, message: str, *args: Any) -> None:
    """For background loops, inside `except`: a busy database is one line (it passes, and the loop
    tries again), anything else is logged with its traceback (cut to MAX_LOGGED_TRACEBACK by the
    log formatter, logs.SafeFormatter). A failure that can repeat with every request or message
    goes through a FailureLog instead."""
    error = sys.exc_info()[1]
    if isinstance(error, DatabaseBusy):
        logger.warning(message + ": %s; will retry", *args, error.detail)
    else:
        logger.exception(message, *args)


MAX_LOGGED_MESSAGE = 200  # characters of an exception message in a one-line report
MAX_LOGGED_TRACEBACK = 4000  # characters of a traceback, logged at DEBUG only


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit // 2]} ... {text[-limit // 2 :]}"


def log_briefly(logger: logging.Logger, exc: BaseException, message: str, *args: Any) -> None:
    """An unexpected error met while serving a request, in ONE line at ERROR (type and message cut
    to MAX_LOGGED_MESSAGE); the traceback only at DEBUG, cut to MAX_LOGGED_TRACEBACK. A request,
    however often it is sent, cannot fill the log."""
    logger.error(message + ": %s: %s", *args, type(exc).__name__, _cut(str(exc), MAX_LOGGED_MESSAGE))
    if logger.isEnabledFor(logging.DEBUG):
        text = "".join(traceback.format_exception(exc))
        logger.debug(message + ", traceback:\n%s", *args, _cut(text, MAX_LOGGED_TRACEBACK))


class FailureLog:
    """Failures that can repeat with every request, message or change (a faulty subscription met
    by every matching write, a device whose every message fails), logged without flooding: per
    key and kind of exception, the first as log_failure logs it (its traceback cut by the log
    formatter), then at most one line every `interval` seconds that counts the failures since,
    said when the next one comes. At most `max_keys` keys are remembered (the oldest forgotten
    first), so neither the log nor the memory grows with the number of failures. Thread-safe:
    the store's change listeners run on the writer thread."""

    def __init__(self, logger: logging.Logger, *, interval: float = 60.0, max_keys: int = 10_000) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._seen: dict[tuple[Hashable, str], list[float]] = {}  # -> [time of its last line, failures since]
        self._lock = threading.Lock()

    def failed(self, key: Hashable, message: str, *args: Any) -> None:
        """Inside `except`: count the failure under `key`, and log it if its line is due."""
        error = sys.exc_info()[1]
        kind = type(error).__name__
        clock = time.monotonic()
        with self._lock:
            entry = self._seen.get((key, kind))
            if entry is None:
                if len(self._seen) >= self.max_keys:
                    del self._seen[next(iter(self._seen))]
                self._seen[(key, kind)] = [clock, 0]
            else:
                entry[1] += 1
                if clock - entry[0] < self.interval:
                    return
                since, count = entry[0], int(entry[1])
                entry[0], entry[1] = clock, 0
        if entry is None:
            log_failure(self.logger, message, *args)
            return
        detail = _cut(str(error), MAX_LOGGED_MESSAGE)
        self.logger.warning(
            message + ": failed %d more times in the last %d s (%s: %s)",
            *args,
            count,
            round(clock - since),
            kind,
            detail,
        )
