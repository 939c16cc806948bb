"""The one error tree of stepline.

Errors split by whose fault they are: a caller who configured or called
stepline wrongly gets a :class:`UsageError`; something that failed while a
response ran raises a :class:`RunError`. Each error carries the context a
reader needs (HTTP status, upstream body, step id) rather than a formatted
string only.

    StepLineError
    ├── UsageError                 you called it wrong; never retried
    │   ├── ConfigError            the config file or environment is invalid
    │   └── RequestError           an API request is refused (HTTP 4xx, 501, 503)
    │       ├── InvalidRequest     400, names the bad ``param``
    │       ├── Unauthorized       401, no key or an unknown one
    │       ├── Forbidden          403, the key may not do this
    │       ├── NotFound           404, names the missing id
    │       ├── RateLimited        429, with ``Retry-After``
    │       ├── NotSupported       501, this server is not set up for it
    │       └── Unavailable        503, the server is draining
    └── RunError                   it failed while a response ran
        ├── UpstreamError          the model upstream failed (status, body)
        │   └── UpstreamTimeout    connect / first_byte / chunk / total
        ├── ToolError              a tool failed (timeout, non-2xx, bad args)
        └── StoreError             the durable store failed; aborts the loop
            └── LeaseLost          another process took the response over

``RequestError.to_envelope()`` renders the OpenAI error envelope that every
HTTP error of stepline uses.
"""

from __future__ import annotations

import math
from typing import Any, Literal

__all__ = [
    "ConfigError",
    "Forbidden",
    "InvalidRequest",
    "LeaseLost",
    "NotFound",
    "NotSupported",
    "RateLimited",
    "RequestError",
    "RunError",
    "StepLineError",
    "StoreError",
    "ToolError",
    "Unauthorized",
    "Unavailable",
    "UpstreamError",
    "UpstreamTimeout",
    "UsageError",
]


class StepLineError(Exception):
    """The root of every error stepline raises on purpose."""


class UsageError(StepLineError):
    """stepline was configured or called wrongly; retrying cannot help."""


class ConfigError(UsageError):
    """The config file or an environment variable is invalid."""


class RequestError(UsageError):
    """An API request that stepline refuses, rendered as the OpenAI envelope."""

    status_code: int = 400
    error_type: str = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status_code is not None:
            self.status_code = status_code
        if error_type is not None:
            self.error_type = error_type
        self.headers = headers or {}

    def to_envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(RequestError):
    """HTTP 400: the body or a parameter is invalid; ``param`` names it."""


class Unauthorized(RequestError):
    """HTTP 401: no API key, or one stepline does not know."""

    status_code = 401

    def __init__(self, message: str, *, code: str = "invalid_api_key") -> None:
        super().__init__(message, code=code, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(RequestError):
    """HTTP 403: the caller's key may not use this model, tool or endpoint."""

    status_code = 403


class NotFound(RequestError):
    """HTTP 404: the named object does not exist (or is not the caller's)."""

    status_code = 404
    error_type = "not_found"


class RateLimited(RequestError):
    """HTTP 429, with ``Retry-After`` in whole seconds (and ``retry-after-ms``)."""

    status_code = 429
    error_type = "too_many_requests"

    def __init__(self, message: str, *, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            message,
            code="rate_limit_exceeded",
            headers={
                "Retry-After": str(seconds),
                "retry-after-ms": str(max(1, math.ceil(retry_after * 1000))),
            },
        )
        self.retry_after = retry_after


class NotSupported(RequestError):
    """HTTP 501: this server is not set up for the endpoint (its store keeps responses
    in memory, and the endpoint reads them with SQL); no retry will change that."""

    status_code = 501
    error_type = "server_error"


class Unavailable(RequestError):
    """HTTP 503: the server cannot take the request now (it is shutting down)."""

    status_code = 503
    error_type = "server_error"


class RunError(StepLineError):
    """Something failed while a response ran."""

    #: the Open Responses error code placed in ``response.error.code``
    code: str = "server_error"

    def __init__(self, message: str, *, step_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.step_id = step_id


class UpstreamError(RunError):
    """The Chat Completions upstream failed; ``status`` is its HTTP status or None."""

    code = "model_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        step_id: str | None = None,
    ) -> None:
        super().__init__(message, step_id=step_id)
        self.status = status
        self.body = body
        self.retryable = retryable
        self.retry_after = retry_after


class UpstreamTimeout(UpstreamError):
    """The upstream took too long in one of four phases, named by ``phase``."""

    def __init__(
        self,
        phase: Literal["connect", "first_byte", "chunk", "total"],
        seconds: float,
        *,
        step_id: str | None = None,
    ) -> None:
        super().__init__(
            f"upstream {phase.replace('_', ' ')} timeout after {seconds:g}s",
            retryable=phase == "connect",
            step_id=step_id,
        )
        self.phase = phase
        self.seconds = seconds


class ToolError(RunError):
    """A tool failed: it timed out, answered non-2xx, or got invalid arguments."""

    code = "tool_error"

    def __init__(
        self,
        message: str,
        *,
        tool: str,
        status: int | None = None,
        step_id: str | None = None,
    ) -> None:
        super().__init__(message, step_id=step_id)
        self.tool = tool
        self.status = status


class StoreError(RunError):
    """The durable store failed; the loop stops and the lease lets it resume later."""


class LeaseLost(StoreError):
    """Another process holds this response's lease now: its writes here were refused.

    The loop stops here and leaves the response to its new owner; nothing this
    process did after the takeover reached the store.
    """
