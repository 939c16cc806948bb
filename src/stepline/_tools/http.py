"""HTTP tools: POST the model's arguments as JSON to a configured URL.

The step id goes out as ``Idempotency-Key`` (and ``X-Stepline-Step-Id``), so
a tool server can tell a retried call after a crash from a new one; with
tracing on, the step's ``traceparent`` goes too. A 2xx
body, JSON or text, is the tool's output; anything else is a
:class:`~stepline.errors.ToolError`.

Invariants:

* The URL is the configured one; nothing from the model or the request
  changes where the call goes, and redirects are not followed.
* The tool's secret header values (``env:NAME``) never come back: a tool
  that echoes one gets it masked, in its output and in an error alike.
* A call is tried again only when the tool's ``retries`` says so, with the
  same idempotency key, by the one policy of :mod:`stepline._retry`: after a
  connection error, a timeout, a 408, 409, 429 or 5xx, waiting what the tool's
  ``Retry-After`` asks or a jittered backoff.
* An output longer than ``max_output_chars`` reaches the model cut, with a
  ``[truncated: N more characters]`` marker saying how much is missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from stepline._config import HttpToolConfig
from stepline._masking import is_maskable
from stepline._retry import Backoff, retry_after, retryable_status
from stepline._transport import Transport, TransportError
from stepline.errors import ToolError

__all__ = ["call_http_tool", "mask_secrets", "truncate_output"]

_MAX_ERROR_BODY = 500
#: bounds of the backoff between tries of a tool call: 0.1 s, 0.2 s, 0.4 s ... at most 2 s
_BACKOFF = Backoff(base=0.1, cap=2.0)
#: the longest a tool's ``Retry-After`` is waited for; a longer one ends the retries
_RETRY_AFTER_CAP = 10.0
_MASK = "***"


def truncate_output(text: str, limit: int | None) -> str:
    """``text`` cut to ``limit`` characters, with a marker saying how many are left out."""
    if limit is None or len(text) <= limit:
        return text
    return f"{text[:limit]}\n[truncated: {len(text) - limit} more characters]"


def mask_secrets(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every occurrence of each secret masked (those long enough to mask:
    a short one would corrupt ordinary text, see :mod:`stepline._masking`)."""
    for secret in secrets:
        if is_maskable(secret) and secret in text:
            text = text.replace(secret, _MASK)
    return text


async def call_http_tool(
    transport: Transport,
    name: str,
    config: HttpToolConfig,
    arguments: dict[str, Any],
    *,
    step_id: str,
    headers: Mapping[str, str] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> str:
    """Call the tool, trying again ``config.retries`` times after a transient failure;
    ``headers`` (the step's trace context) go with every try, under the configured ones.
    ``sleep`` waits out each backoff (tests record it)."""
    attempt = 0
    while True:
        try:
            return await _call_once(
                transport, name, config, arguments, step_id=step_id, passed_on=headers or {}
            )
        except _Retryable as exc:
            if attempt >= config.retries or (exc.retry_after or 0.0) > _RETRY_AFTER_CAP:
                raise exc.error from None
            delay = _BACKOFF.delay(attempt, retry_after=exc.retry_after)
        attempt += 1
        await sleep(delay)


class _Retryable(Exception):
    """A try that failed in a way worth another: the error it ends with otherwise."""

    def __init__(self, error: ToolError, retry_after: float | None = None) -> None:
        self.error = error
        self.retry_after = retry_after


async def _call_once(
    transport: Transport,
    name: str,
    config: HttpToolConfig,
    arguments: dict[str, Any],
    *,
    step_id: str,
    passed_on: Mapping[str, str],
) -> str:
    headers = {
        **passed_on,
        **config.resolved_headers(),
        "Content-Type": "application/json",
        "Idempotency-Key": step_id,
        "X-Stepline-Step-Id": step_id,
    }
    secrets = config.secret_values()
    try:
        # the tool's timeout bounds the whole call: connecting, waiting, reading
        async with asyncio.timeout(config.timeout):
            reply = await transport.post(
                config.url,
                headers=headers,
                content=orjson.dumps(arguments),
                connect_timeout=config.timeout,
            )
            try:
                status = reply.status
                text = _text(b"".join([block async for block in reply.body()]), reply.headers)
            finally:
                await reply.aclose()
    except TimeoutError:
        raise _Retryable(
            ToolError(
                f"tool {name!r} timed out after {config.timeout:g}s", tool=name, step_id=step_id
            )
        ) from None
    except TransportError as exc:
        raise _Retryable(
            ToolError(f"tool {name!r} could not be reached: {exc}", tool=name, step_id=step_id)
        ) from None
    if not 200 <= status < 300:
        body = mask_secrets(text, secrets)[:_MAX_ERROR_BODY]
        error = ToolError(
            f"tool {name!r} answered HTTP {status}: {body}",
            tool=name,
            status=status,
            step_id=step_id,
        )
        if retryable_status(status):
            raise _Retryable(error, retry_after(reply.headers))
        raise error
    return truncate_output(mask_secrets(text, secrets), config.max_output_chars)


def _text(body: bytes, headers: Mapping[str, str]) -> str:
    """A body as text, in the charset its ``Content-Type`` names (UTF-8 otherwise)."""
    charset = "utf-8"
    for parameter in headers.get("content-type", "").split(";")[1:]:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip('"')
    try:
        return body.decode(charset, "replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", "replace")
