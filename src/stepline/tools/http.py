"""HTTP tools: POST the model's arguments as JSON to a configured URL.

The step id goes out as ``Idempotency-Key`` (and ``X-Stepline-Step-Id``), so
a tool server can tell a retried call after a crash from a new one. A 2xx
body, JSON or text, is the tool's output verbatim; anything else is a
:class:`~stepline.errors.ToolError` whose message never carries the tool's
configured headers (they may hold secrets).
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from stepline.config import HttpToolConfig
from stepline.errors import ToolError

__all__ = ["call_http_tool"]

_MAX_ERROR_BODY = 500


async def call_http_tool(
    client: httpx.AsyncClient,
    name: str,
    config: HttpToolConfig,
    arguments: dict[str, Any],
    *,
    step_id: str,
) -> str:
    headers = {
        **config.resolved_headers(),
        "Content-Type": "application/json",
        "Idempotency-Key": step_id,
        "X-Stepline-Step-Id": step_id,
    }
    try:
        reply = await client.post(
            config.url,
            content=orjson.dumps(arguments),
            headers=headers,
            timeout=httpx.Timeout(config.timeout),
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
        raise ToolError(
            f"tool {name!r} answered HTTP {reply.status_code}: {reply.text[:_MAX_ERROR_BODY]}",
            tool=name,
            status=reply.status_code,
            step_id=step_id,
        )
    return reply.text
