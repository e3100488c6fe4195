"""Log lines that a client cannot forge or read secrets from.

Values that reach a log line come from clients (device ids, API keys, endpoint URIs, entity ids),
so the formatter CityOS logs with escapes every control character of the rendered message (a
newline becomes the two characters `\\n`: one record is always one line), hides the password of
any URL in it (redact.redact_text), and marks each line of a traceback as a continuation, so no
line a client wrote can pass for a record of its own.
"""

from __future__ import annotations

import logging
import re
import time

import orjson

from cityos.auth.principal import current_request_id
from cityos.errors import MAX_LOGGED_TRACEBACK
from cityos.redact import redact_text

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
CONTINUATION = "\n  | "


def escape_control(text: str) -> str:
    """`text` with each control character written as a Python escape (\\n, \\x1b, \\u2028)."""
    return CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class SafeFormatter(logging.Formatter):
    """The formatter of CityOS's log handler (see the module docstring)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_control(redact_text(record.message))
        return super().formatMessage(record)

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        """The traceback, cut to MAX_LOGGED_TRACEBACK characters (its start and its end, where
        the error is): a RecursionError's runs to hundreds of kilobytes."""
        text = redact_text(super().formatException(ei))  # before the cut, which could halve a URL
        if len(text) > MAX_LOGGED_TRACEBACK:
            half = MAX_LOGGED_TRACEBACK // 2
            text = f"{text[:half]}\n... {len(text) - 2 * half} characters left out ...\n{text[-half:]}"
        return text.replace("\n", CONTINUATION)

    def formatStack(self, stack_info: str) -> str:
        return super().formatStack(stack_info).replace("\n", CONTINUATION)


class JsonFormatter(SafeFormatter):
    """--log-format json: one JSON object per line (time, level, logger, message, the request id
    of the request or notification it was logged for, the access-log fields, the traceback).
    orjson escapes every control character, so a record is still one line."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        access = getattr(record, "access", None)
        if access is not None:
            out.update(access)
        else:
            request_id = current_request_id.get()
            if request_id:
                out["request_id"] = request_id
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info).replace(CONTINUATION, "\n")
        if record.stack_info:
            out["stack"] = record.stack_info
        return orjson.dumps(out).decode()


def formatter(log_format: str = "text") -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else SafeFormatter(FORMAT)


def configure(level: str, log_format: str = "text") -> None:
    """Log to stderr at `level` through SafeFormatter, or JsonFormatter (`log_format` json), once
    per process; a handler that is already there, such as a test's, only gets the formatter."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level.upper(), format=FORMAT)
    else:
        root.setLevel(level.upper())
    wanted = JsonFormatter if log_format == "json" else SafeFormatter
    for handler in root.handlers:
        if type(handler.formatter) is not wanted:
            handler.setFormatter(formatter(log_format))
