"""Per-key rate and concurrency limits, and the request body cap.

A key's ``rate`` is a token bucket (``requests_per_second`` on average,
``burst`` at once) that every ``/v1`` request of the key draws from; its
``max_concurrent`` bounds the responses it has running (a response holds its
slot until its loop ends, background ones included) and its chat completions
in flight. Over either limit the request is refused with 429 and a
``Retry-After`` that says when to come back.

Limits are kept per process: with N processes behind a balancer a key gets
up to N times its rate. The anonymous caller of a server without keys is not
limited.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import Message, Receive

from stepline._config import RateConfig
from stepline._server.auth import Caller
from stepline.errors import RateLimited, RequestError

__all__ = ["KeyLimits", "RateLimited", "TokenBucket", "cap_body", "too_large"]


@dataclass
class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` saved up."""

    rate: float
    capacity: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, config: RateConfig, now: float) -> TokenBucket:
        return cls(
            rate=config.requests_per_second,
            capacity=config.capacity,
            tokens=config.capacity,
            updated=now,
        )

    def take(self, now: float) -> float:
        """Take one token: 0.0 when there was one, else the seconds until there is."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class KeyLimits:
    """The buckets and in-flight counts of every key this process has seen."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, RateConfig], TokenBucket] = {}
        self._running: dict[str, int] = {}

    def admit(self, caller: Caller) -> None:
        """Count one request against the key's rate; RateLimited when over it."""
        key = caller.key
        if key is None or key.config.rate is None:
            return
        rate = key.config.rate
        now = self._clock()
        # keyed by the rate too: a key whose limits changed starts a fresh bucket
        bucket = self._buckets.get((key.id, rate))
        if bucket is None:
            bucket = self._buckets[(key.id, rate)] = TokenBucket.full(rate, now)
        wait = bucket.take(now)
        if wait > 0:
            raise RateLimited(
                f"Rate limit reached for API key '{key.name}': "
                f"{rate.requests_per_second:g} requests per second, burst {rate.capacity:g}.",
                retry_after=wait,
            )

    def enter(self, caller: Caller) -> Callable[[], None]:
        """Take one of the key's concurrency slots; call the result to give it back."""
        key = caller.key
        if key is None or key.config.max_concurrent is None:
            return _nothing
        running = self._running.get(key.id, 0)
        if running >= key.config.max_concurrent:
            raise RateLimited(
                f"API key '{key.name}' already has {running} requests running, "
                f"its limit is {key.config.max_concurrent}.",
                retry_after=1.0,
            )
        self._running[key.id] = running + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                left = self._running.get(key.id, 1) - 1
                if left > 0:
                    self._running[key.id] = left
                else:
                    self._running.pop(key.id, None)

        return release

    def running(self, name: str) -> int:
        return self._running.get(name, 0)


def _nothing() -> None:
    return None


def too_large(limit: int) -> RequestError:
    return RequestError(
        f"The request body is larger than the {limit} bytes this server accepts.",
        code="request_too_large",
        status_code=413,
    )


def cap_body(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises a 413 once the body passes ``limit`` bytes."""
    seen = 0

    async def capped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise too_large(limit)
        return message

    return capped
