"""The server's logs: one JSON object per line, each tagged with the request it belongs to.

``request_id`` holds the id of the request being handled; set it in the handler's own thread
(gRPC runs each call in a pool thread, and a context variable does not cross threads by itself)::

    token = request_id.set(new_request_id(request.id))
    try: ...
    finally: request_id.reset(token)

Extra fields go in ``extra={"fields": {...}}``; they join the line's top level (a field named like a
standard key, e.g. ``msg``, is written as ``fields.msg`` so it never hides it).
"""
from __future__ import annotations

import contextvars
import itertools
import json
import logging
import sys
import uuid
from datetime import datetime, timezone

from millrace.serving.errors import ServingError

LOGGER = "millrace.serving"
MAX_REQUEST_ID = 128
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
RESERVED = ("ts", "level", "logger", "msg", "request_id", "exc", "stack")

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("millrace_serving_request_id", default="")


def new_request_id(incoming: str = "") -> str:
    """The client's id (``ModelInferRequest.id`` or ``x-request-id``) when it is sane, else a fresh one.
    Sane: 1 to 128 printable ASCII characters (so a log line can never be forged or bloated with it)."""
    incoming = (incoming or "").strip()
    if 0 < len(incoming) <= MAX_REQUEST_ID and all(" " <= c <= "~" for c in incoming):
        return incoming
    return f"{_PREFIX}{next(_COUNTER):08x}"  # unique per process and start; cheaper than uuid4 per call


_PREFIX = uuid.uuid4().hex[:8]
_COUNTER = itertools.count(1)


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "request_id"?, <fields>..., "exc"?}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": _iso_utc(record.created), "level": record.levelname, "logger": record.name,
                "msg": record.getMessage()}
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            line["request_id"] = rid
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                line[f"fields.{key}" if key in RESERVED else str(key)] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: a numpy number or a path in a field is written, never the reason a log line is lost.
        return json.dumps(line, default=str)


def _iso_utc(created: float) -> str:
    return datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def configure(level: str = "INFO", stream=None) -> logging.Logger:
    """The ``millrace.serving`` logger, writing JSON lines to ``stream`` (default: sys.stderr) and
    not to the root logger's handlers. Calling it again replaces its handler (never a second one)."""
    name = str(level).upper()
    if name not in LEVELS:
        raise ServingError(f"unknown log level {level!r} (fix: one of {', '.join(LEVELS)})")
    logger = logging.getLogger(LOGGER)
    for old in [h for h in logger.handlers if getattr(h, "_millrace_json", False)]:
        logger.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._millrace_json = True
    logger.addHandler(handler)
    logger.setLevel(name)
    logger.propagate = False
    return logger
