"""How each way an upstream call can fail becomes an :class:`~stepline.errors.UpstreamError`.

Invariants:

* An upstream's API key never leaves in an error: it is masked in messages and
  bodies before they are raised (unless it is too short to mask, see
  :data:`~stepline._masking.MIN_SECRET_LENGTH`), and so is every registered
  secret.
* Whether a failure may be retried is decided by :mod:`stepline._retry` alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import orjson

from stepline._config import TimeoutsConfig
from stepline._masking import MASK, is_maskable, mask
from stepline._retry import retry_after, retryable_status
from stepline._transport import ReadFailed
from stepline._upstream.sse import error_message
from stepline.errors import UpstreamError, UpstreamTimeout

__all__ = ["Phase", "error_kind", "mask_secret", "read_failure", "status_error", "timeout"]

Phase = Literal["connect", "first_byte", "chunk", "total"]

#: how much of an error body is kept on the exception and in its message
_BODY_LIMIT = 16_384
_MESSAGE_LIMIT = 500


def timeout(phase: Phase, timeouts: TimeoutsConfig, step_id: str) -> UpstreamTimeout:
    seconds: float = getattr(timeouts, phase)
    return UpstreamTimeout(phase, seconds, step_id=step_id)


def read_failure(exc: ReadFailed, step_id: str) -> UpstreamError:
    """A body that broke off after the answer's head (never retried: output may have left)."""
    if exc.dropped:
        return UpstreamError("upstream connection dropped mid-stream", step_id=step_id)
    return UpstreamError(f"upstream stream failed: {exc}", step_id=step_id)


def mask_secret(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` masked (when it is long enough)."""
    return text.replace(secret, MASK) if is_maskable(secret) and secret in text else text


def status_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    step_id: str,
    *,
    secret: str | None = None,
) -> UpstreamError:
    """A non-2xx answer, with the upstream's own message when its body has one."""
    retryable = retryable_status(status)
    text = mask(mask_secret(body[:_BODY_LIMIT].decode("utf-8", "replace"), secret))
    try:
        message = error_message(orjson.loads(body))
    except orjson.JSONDecodeError:
        message = None
    if not message:
        message = text.strip()[:_MESSAGE_LIMIT] or f"upstream returned HTTP {status}"
    return UpstreamError(
        mask(mask_secret(message, secret)),
        status=status,
        body=text,
        retryable=retryable,
        retry_after=retry_after(headers) if retryable else None,
        step_id=step_id,
    )


def error_kind(exc: UpstreamError) -> str:
    """The kind of a failed attempt, as metrics count it."""
    if isinstance(exc, UpstreamTimeout):
        return "connect" if exc.phase == "connect" else "timeout"
    if exc.status is not None:
        return f"http_{exc.status}"
    return "connect" if exc.retryable else "request"
