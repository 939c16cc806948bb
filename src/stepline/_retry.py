"""The one retry policy of every call stepline makes over the network.

The upstream client (:mod:`stepline._upstream.client`) and the HTTP tools
(:mod:`stepline._tools.http`) decide retries with the same rules, at the edge
that talks to the network:

* A failure before any answer (refused, reset, a pooled connection the peer
  had just closed, a connect timeout) is worth another try, and so are
  408, 409, 429 and every 5xx. Every other status is final.
* The wait before try ``n + 1`` is the peer's ``Retry-After`` when it sent one
  (OpenAI's ``retry-after-ms`` wins; seconds or an HTTP date), else drawn at
  random below an exponential bound (full jitter), so callers that failed
  together do not all come back together.
* The caller bounds how many retries it makes, and how long it waits in all.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["RETRY_STATUSES", "Backoff", "retry_after", "retryable_status"]

#: statuses worth another attempt besides every 5xx
RETRY_STATUSES = frozenset({408, 409, 429})


def retryable_status(status: int) -> bool:
    """Whether an answer with this status may be tried again."""
    return status in RETRY_STATUSES or status >= 500


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` as seconds (delta or HTTP date); OpenAI's ``retry-after-ms`` wins.

    ``headers`` must look names up case-insensitively (``httpx.Headers``, aiohttp's
    ``CIMultiDictProxy``)."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - time.time())


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Exponential backoff with full jitter: retry ``n`` (from 0) waits a random time
    below ``min(cap, base * 2**n)``, unless the peer said how long with ``Retry-After``."""

    base: float
    cap: float

    def delay(self, retries: int, *, retry_after: float | None = None) -> float:
        """Seconds before the next try, ``retries`` tries having been retried already."""
        if retry_after is not None:
            return retry_after
        return random.random() * min(self.cap, self.base * 2.0**retries)
