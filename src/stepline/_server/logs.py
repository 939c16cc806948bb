"""Structured logs: one JSON object per line, with the request, response and step ids.

The ids travel in context variables: the gateway sets the request id for each
HTTP request, a route sets the response id before it launches the loop (whose
task inherits the context), and a caller can pass ``step_id`` (or any other
field) with ``extra=``. Every line goes through the secret mask
(:mod:`stepline._masking`): the values registered with :func:`register_secrets`
(upstream API keys, tool secrets) are replaced by ``***`` wherever they appear,
message or traceback. Secrets too short to mask safely are not registered.
"""

from __future__ import annotations

import datetime
import logging
import sys
from contextvars import ContextVar
from typing import Any, Literal

import orjson

from stepline._masking import mask, register_secrets

__all__ = [
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "mask",
    "register_secrets",
    "request_id_var",
    "response_id_var",
]

request_id_var: ContextVar[str | None] = ContextVar("stepline_request_id", default=None)
response_id_var: ContextVar[str | None] = ContextVar("stepline_response_id", default=None)

#: attributes every LogRecord has; anything else came in through ``extra=``
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


def _ids(record: logging.LogRecord) -> dict[str, Any]:
    ids: dict[str, Any] = {}
    request_id = getattr(record, "request_id", None) or request_id_var.get()
    if request_id:
        ids["request_id"] = request_id
    response_id = getattr(record, "response_id", None) or response_id_var.get()
    if response_id:
        ids["response_id"] = response_id
    return ids


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "request_id", "response_id", ...}``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask(record.getMessage()),
            **_ids(record),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in data and not name.startswith("_"):
                data[name] = mask(value) if isinstance(value, str) else value
        if record.exc_info:
            data["exception"] = mask(self.formatException(record.exc_info))
        return mask(orjson.dumps(data, default=str).decode())


class TextFormatter(logging.Formatter):
    """The classic one-line format, with the ids appended and secrets masked."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(f"{name}={value}" for name, value in _ids(record).items())
        return mask(f"{line} [{ids}]" if ids else line)


def configure_logging(
    *, log_format: Literal["json", "text"] = "json", level: int = logging.INFO
) -> None:
    """Send every log record of the process to stderr in ``log_format``."""
    # neither format shows a record's source line, thread or process: a record need
    # not look them up (the caller's frame walk is most of a record's cost)
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # one line per request comes from stepline's gateway; httpx's own is noise
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
