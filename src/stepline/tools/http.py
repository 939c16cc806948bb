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
* A call is tried again only when the tool's ``retries`` says so, after a
  connection error, a timeout or a 5xx, with the same idempotency key, after a
  jittered backoff (:func:`_retry_delay`).
* An output longer than ``max_output_chars`` reaches the model cut, with a
  ``[truncated: N more characters]`` marker saying how much is missing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import orjson

from stepline.config import HttpToolConfig
from stepline.errors import ToolError
from stepline.masking import is_maskable

__all__ = ["call_http_tool", "mask_secrets", "truncate_output"]

_MAX_ERROR_BODY = 500
#: bounds of the backoff between tries of a tool call: 0.1 s, 0.2 s, 0.4 s ... at most 2 s
_RETRY_BASE = 0.1
_RETRY_CAP = 2.0
_MASK = "***"


def truncate_output(text: str, limit: int | None) -> str:
    """``text`` cut to ``limit`` characters, with a marker saying how many are left out."""
    if limit is None or len(text) <= limit:
        return text
    return f"{text[:limit]}\n[truncated: {len(text) - limit} more characters]"


def mask_secrets(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every occurrence of each secret masked (those long enough to mask:
    a short one would corrupt ordinary text, see :mod:`stepline.masking`)."""
    for secret in secrets:
        if is_maskable(secret) and secret in text:
            text = text.replace(secret, _MASK)
    return text


def _retry_delay(attempt: int) -> float:
    """Seconds before try ``attempt + 1``: drawn at random below the exponential bound
    (full jitter), so the calls a restarting tool server failed together do not all
    come back together."""
    return random.random() * min(_RETRY_BASE * 2.0 ** (attempt - 1), _RETRY_CAP)


async def call_http_tool(
    client: httpx.AsyncClient,
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
                client, name, config, arguments, step_id=step_id, passed_on=headers or {}
            )
        except ToolError as exc:
            transient = exc.status is None or exc.status >= 500
            if not transient or attempt >= config.retries:
                raise
        attempt += 1
        await sleep(_retry_delay(attempt))


async def _call_once(
    client: httpx.AsyncClient,
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
        reply = await client.post(
            config.url,
            content=orjson.dumps(arguments),
            headers=headers,
            timeout=httpx.Timeout(config.timeout),
            follow_redirects=False,
        )
    except httpx.TimeoutException:
        raise ToolError(
            f"tool {name!r} timed out after {config.timeout:g}s", tool=name, step_id=step_id
        ) from None
    except httpx.HTTPError as exc:
        raise ToolError(
            f"tool {name!r} could not be reached: {type(exc).__name__}",
            tool=name,
            step_id=step_id,
        ) from None
    if not reply.is_success:
        body = mask_secrets(reply.text, secrets)[:_MAX_ERROR_BODY]
        raise ToolError(
            f"tool {name!r} answered HTTP {reply.status_code}: {body}",
            tool=name,
            status=reply.status_code,
            step_id=step_id,
        )
    return truncate_output(mask_secrets(reply.text, secrets), config.max_output_chars)
