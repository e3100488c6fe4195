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
 ├── Forbidden                403  (AccessDenied, not a spec type: access policies refuse the operation)
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
import sys
import traceback
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


class Forbidden(NgsiLdError):
    """The caller may see the resource but not do this to it (docs/security.md); what it may not
    see at all answers 404 instead, so an error never tells that it exists. (The same ProblemDetails
    as the policy package's AccessDenied: one 403 for every refusal.)"""

    type_name, status, title = "AccessDenied", 403, "Access denied"


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
    db_busy_timeout setting: nothing was written, and the same request may be sent again."""

    type_name, status, title = "DatabaseBusy", 503, "Database busy"
    retry_after: ClassVar[int] = 1  # seconds; the lock holder is usually another short transaction

    @property
    def type_uri(self) -> str:
        return "urn:cityos:errors:DatabaseBusy"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class DatabaseUnavailable(DatabaseBusy):
    """The connection to the database was lost (the server restarted, or ended the session) and
    one more try on a fresh connection failed too, or it was lost while a write was committing, so
    whether that write was applied is unknown. A 503 with Retry-After, never a 500: the request may
    be sent again (writes in NGSI-LD are idempotent by id, except appends of temporal instances)."""

    type_name, title = "DatabaseUnavailable", "Database unavailable"

    @property
    def type_uri(self) -> str:
        return "urn:cityos:errors:DatabaseUnavailable"


def log_failure(logger: logging.Logger, message: str, *args: Any) -> None:
    """For background loops, inside `except`: a busy database is one line (it passes, and the loop
    tries again), anything else is logged with its traceback."""
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
