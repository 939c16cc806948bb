"""The Chat Completions client: the one place stepline talks to model upstreams.

:meth:`ChatClient.stream` yields ``chat.completion.chunk`` dicts whether the
upstream streams (SSE) or answers in one body, so the loop reads one shape.

Invariants:

* Retries are decided here, by :mod:`stepline._retry`'s policy (connection
  failures, 408, 409, 429 and 5xx, with full jitter, honouring
  ``Retry-After``), bounded by ``max_retries`` and ``retry_deadline``, and only
  before the first chunk has been yielded: once output has left, a failure is
  raised, never replayed.
* Every failure leaves as :class:`~stepline.errors.UpstreamError` (or its
  :class:`~stepline.errors.UpstreamTimeout`); a transport's exceptions never
  escape, and cancellation always propagates untouched and closes the reply.
* No timeout scope spans a ``yield``: each wait on the network gets its own
  deadline, so time a slow consumer spends between chunks is never charged to
  the upstream's chunk gap, and the consumer is never cancelled by our clock.
* This is the hot path of every token: a streamed chunk costs what
  :mod:`~stepline._upstream.sse` spends on it, and when the server registered
  secrets (:mod:`stepline._masking`), its text is masked as it is decoded, so a
  secret the model repeats is never stored nor streamed; with none registered
  that is one ``None`` test per chunk.
* A route with several targets (``UpstreamTarget.candidates``) fails over
  here, in the same place: a retryable failure before any output moves the
  call to the next target at once; when every target failed, the retry policy
  of the route's first target decides whether a new round starts after a
  backoff. The :class:`~stepline._upstream.routing.TargetPool` orders the
  targets, takes failing ones out for a cool-down and bounds calls in flight.
* An upstream's API key never leaves in an error (:mod:`~stepline._upstream.failures`).

The network is an :class:`~stepline._transport.Transport`: aiohttp's by
default, or any httpx transport given as ``transport``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import httpx
import orjson

from stepline._masking import stream_masker
from stepline._retry import Backoff
from stepline._transport import (
    AiohttpTransport,
    ConnectFailed,
    ConnectTimedOut,
    HttpxTransport,
    InvalidURL,
    ReadFailed,
    Reply,
    RequestFailed,
    Transport,
)
from stepline._upstream.failures import Phase, error_kind, read_failure, status_error, timeout
from stepline._upstream.forward import ForwardedReply
from stepline._upstream.routing import TargetPool, UpstreamTarget
from stepline._upstream.sse import SSEParser, completion_chunks
from stepline._upstream.watchdog import Watchdog
from stepline.errors import UpstreamError, UpstreamTimeout

__all__ = ["ChatClient", "ForwardedReply", "NullUpstreamObserver", "UpstreamObserver"]


class UpstreamObserver(Protocol):
    """What the client reports per attempt, for metrics; must be cheap and never raise."""

    def upstream_attempt(self, target: str, *, seconds: float, error: str | None) -> None:
        """One attempt at ``target`` ended; ``error`` is None on success, else its kind
        (``connect``, ``timeout``, ``http_503``, ``stream``...)."""
        ...

    def upstream_cooldown(self, target: str) -> None:
        """``target`` was taken out of rotation for its cool-down."""
        ...


class NullUpstreamObserver:
    def upstream_attempt(self, target: str, *, seconds: float, error: str | None) -> None:
        return None

    def upstream_cooldown(self, target: str) -> None:
        return None


@dataclass(frozen=True, kw_only=True)
class _Opened:
    """A response whose status is 2xx, the target that gave it, and its deadlines."""

    target: UpstreamTarget
    response: Reply
    first_byte_deadline: float
    attempt_started: float


class ChatClient:
    """Streams Chat Completions from any OpenAI-compatible upstream.

    One instance serves every upstream through one shared connection pool;
    create it once per process and :meth:`aclose` it on shutdown. ``transport``
    replaces the network with an httpx transport (tests pass ``httpx.MockTransport``,
    the library ``httpx.ASGITransport``); ``sleep`` is what
    waits between retries, so tests can record the delays instead of waiting.
    ``pool`` holds the targets' health and capacity; ``observer`` gets one
    report per attempt. ``step_headers`` (set when tracing is on) gives the
    headers a step's requests carry besides its id: its ``traceparent``.
    """

    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_connections: int = 1000,
        pool: TargetPool | None = None,
        observer: UpstreamObserver | None = None,
    ) -> None:
        self._sleep = sleep
        self.pool = pool or TargetPool()
        self.observer: UpstreamObserver = observer or NullUpstreamObserver()
        self.step_headers: Callable[[str], Mapping[str, str]] | None = None
        self._transport: Transport = (
            AiohttpTransport(max_connections=max_connections)
            if transport is None
            else HttpxTransport(transport)
        )

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def stream(
        self, target: UpstreamTarget, payload: dict[str, Any], *, step_id: str
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Run one Chat Completions call and yield its chunks as they arrive.

        ``payload`` is the request body; ``model`` is set to
        ``target.upstream_model`` and the streaming flags to what the upstream
        is configured for. ``step_id`` travels as ``X-Stepline-Step-Id`` and on
        every error raised. Close the generator (``contextlib.aclosing``) to
        stop early; the HTTP response is closed with it.

        Timeouts: ``connect`` bounds opening a connection; ``first_byte``
        bounds one attempt from sending until its first chunk; ``chunk``
        bounds each later wait for the upstream (a keep-alive comment counts
        as life); ``total`` bounds the whole call, retries and the consumer's
        time included.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        total_deadline = started + target.config.timeouts.total
        opened = await self._open(
            target,
            lambda current: self._build_request(current, payload, step_id),
            step_id,
            started,
            total_deadline,
            affinity=payload.get("prompt_cache_key"),
        )
        target, response = opened.target, opened.response
        first_byte_deadline = opened.first_byte_deadline
        config = target.config
        timeouts = config.timeouts

        reads = response.body()
        watchdog = Watchdog(loop)
        masker = stream_masker()
        outcome: str | None = "cancelled"
        try:
            # Some servers ignore ``stream`` and answer with one JSON body.
            if not config.stream or response.headers.get("content-type", "").startswith(
                "application/json"
            ):
                body = await _read_body(reads, target, step_id, total_deadline)
                chunks = completion_chunks(body, step_id)
                outcome = None
                for chunk in chunks:
                    if masker is not None:
                        masker.chunk(chunk)
                    yield chunk
                return

            parser = SSEParser(step_id)
            phase: Phase = "first_byte"
            deadline = first_byte_deadline
            chunk_seconds = timeouts.chunk
            while True:
                now = loop.time()
                if phase == "chunk":
                    deadline = now + chunk_seconds
                which: Phase = phase if deadline < total_deadline else "total"
                expires = deadline if deadline < total_deadline else total_deadline
                if now >= expires:  # e.g. the consumer held us past the total deadline
                    raise timeout(which, timeouts, step_id)
                watchdog.arm(expires)
                try:
                    block = await anext(reads, None)
                except asyncio.CancelledError:
                    if watchdog.disarm():
                        raise timeout(which, timeouts, step_id) from None
                    raise
                except ReadFailed as exc:
                    watchdog.disarm()
                    raise read_failure(exc, step_id) from exc
                if watchdog.disarm():  # something inside the read swallowed our cancel
                    raise timeout(which, timeouts, step_id)

                chunks = parser.close() if block is None else parser.feed(block)
                for chunk in chunks:
                    if masker is not None:
                        masker.chunk(chunk)
                    yield chunk
                if parser.failure is not None:
                    raise parser.failure
                if block is None:
                    break
                if parser.done:
                    # read on to the body's end, so the connection goes back to the
                    # pool for the next model call instead of being closed
                    await _drain(reads, loop.time() + _DRAIN_SECONDS)
                    break
                if chunks:
                    phase = "chunk"
            if not parser.finished:
                raise UpstreamError("upstream stream ended before finish_reason", step_id=step_id)
            outcome = None
        except UpstreamTimeout:
            outcome = "timeout"
            raise
        except UpstreamError:
            outcome = "stream"
            raise
        finally:
            watchdog.close()
            await reads.aclose()
            await response.aclose()
            self._finished(opened, outcome)

    async def _open(
        self,
        target: UpstreamTarget,
        build: Callable[[UpstreamTarget], _Request],
        step_id: str,
        started: float,
        total_deadline: float,
        *,
        affinity: str | None = None,
    ) -> _Opened:
        """Send to the route's targets in the pool's order until one answers 2xx.

        A retryable failure moves on to the next target at once; after a round
        in which every target failed, the first target's retry policy decides on
        another round. The returned target's call slot is held: :meth:`_finished`
        gives it back.
        """
        loop = asyncio.get_running_loop()
        config = target.config
        candidates = target.candidates or (target,)
        retries = 0
        while True:
            failure: UpstreamError | None = None
            for current in self.pool.order(candidates, affinity):
                request = build(current)
                await self._acquire(current, step_id, total_deadline)
                attempt_started = loop.time()
                try:
                    response, first_byte_deadline = await self._send(
                        request, current, step_id, total_deadline
                    )
                except UpstreamError as exc:
                    self.pool.release(current)
                    self._report(current, attempt_started, error_kind(exc), health=exc.retryable)
                    if not exc.retryable:
                        raise
                    failure = exc
                    if loop.time() >= total_deadline:
                        raise
                    continue
                except BaseException:
                    self.pool.release(current)
                    raise
                return _Opened(
                    target=current,
                    response=response,
                    first_byte_deadline=first_byte_deadline,
                    attempt_started=attempt_started,
                )
            assert failure is not None
            delay = _retry_delay(failure, retries, config.max_retries)
            now = loop.time()
            if (
                delay is None
                or now - started + delay > config.retry_deadline
                or now + delay >= total_deadline
            ):
                raise failure
            retries += 1
            await self._sleep(delay)

    async def _acquire(self, target: UpstreamTarget, step_id: str, total_deadline: float) -> None:
        try:
            async with asyncio.timeout_at(total_deadline):
                await self.pool.acquire(target)
        except TimeoutError:
            raise timeout("total", target.config.timeouts, step_id) from None

    def _finished(self, opened: _Opened, error: str | None) -> None:
        """The call on an opened response ended: free its slot, count its outcome."""
        self.pool.release(opened.target)
        if error == "cancelled":
            return  # the consumer stopped early: says nothing about the upstream
        self._report(opened.target, opened.attempt_started, error, health=True)

    def _report(
        self, target: UpstreamTarget, attempt_started: float, error: str | None, *, health: bool
    ) -> None:
        seconds = asyncio.get_running_loop().time() - attempt_started
        self.observer.upstream_attempt(target.name, seconds=seconds, error=error)
        if error is None:
            self.pool.succeeded(target)
        elif health and self.pool.failed(target):
            self.observer.upstream_cooldown(target.name)

    async def forward(
        self,
        target: UpstreamTarget,
        body: dict[str, Any],
        raw: bytes,
        *,
        request_id: str,
    ) -> ForwardedReply:
        """Send a client's Chat Completions body as it is, but for the model name,
        to the route's targets with the same failover as :meth:`stream`.

        ``raw`` goes out untouched when the target's model name is the client's;
        otherwise ``body`` is sent with ``model`` replaced. The reply's bytes are
        relayed without decoding. A final failure raises ``UpstreamError`` (with
        the upstream's ``status`` and masked ``body`` when it answered).
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        total_deadline = started + target.config.timeouts.total

        def build(current: UpstreamTarget) -> _Request:
            content = raw
            if current.upstream_model != body.get("model"):
                content = orjson.dumps({**body, "model": current.upstream_model})
            headers = {
                "Content-Type": "application/json",
                "Accept-Encoding": "identity",
                "X-Request-Id": request_id,
            }
            if current.api_key:
                headers["Authorization"] = f"Bearer {current.api_key}"
            return _Request(
                url=f"{current.base_url}/chat/completions", headers=headers, content=content
            )

        cache_key = body.get("prompt_cache_key")
        opened = await self._open(
            target,
            build,
            request_id,
            started,
            total_deadline,
            affinity=cache_key if isinstance(cache_key, str) else None,
        )
        return ForwardedReply(
            opened.response,
            target=opened.target.name,
            timeouts=opened.target.config.timeouts,
            total_deadline=total_deadline,
            request_id=request_id,
            finished=lambda outcome: self._finished(opened, outcome),
        )

    def _build_request(
        self, target: UpstreamTarget, payload: dict[str, Any], step_id: str
    ) -> _Request:
        body = {**payload, "model": target.upstream_model}
        headers = {"Content-Type": "application/json", "X-Stepline-Step-Id": step_id}
        if self.step_headers is not None:
            headers.update(self.step_headers(step_id))
        if target.api_key:
            headers["Authorization"] = f"Bearer {target.api_key}"
        if target.config.stream:
            body["stream"] = True
            body["stream_options"] = {
                **(payload.get("stream_options") or {}),
                "include_usage": True,
            }
            headers["Accept"] = "text/event-stream"
            # Compression makes proxies buffer a stream of small events.
            headers["Accept-Encoding"] = "identity"
        else:
            body["stream"] = False
            body.pop("stream_options", None)
        return _Request(
            url=f"{target.base_url}/chat/completions", headers=headers, content=orjson.dumps(body)
        )

    async def _send(
        self, request: _Request, target: UpstreamTarget, step_id: str, total_deadline: float
    ) -> tuple[Reply, float]:
        """One attempt: the reply once its status is 2xx, and its first-byte deadline."""
        timeouts = target.config.timeouts
        first_byte_deadline = asyncio.get_running_loop().time() + timeouts.first_byte
        phase: Phase = "first_byte" if first_byte_deadline < total_deadline else "total"
        try:
            async with asyncio.timeout_at(min(first_byte_deadline, total_deadline)):
                reply = await self._transport.post(
                    request.url,
                    headers=request.headers,
                    content=request.content,
                    connect_timeout=timeouts.connect,
                )
                if 200 <= reply.status < 300:
                    return reply, first_byte_deadline
                try:
                    body = b"".join([block async for block in reply.body()])
                finally:
                    await reply.aclose()
        except TimeoutError:
            raise timeout(phase, timeouts, step_id) from None
        except ConnectTimedOut as exc:
            raise timeout("connect", timeouts, step_id) from exc
        except ConnectFailed as exc:
            # No answer yet: the request never reached a live upstream (refused,
            # reset, or a pooled connection the server had just closed).
            raise UpstreamError(
                f"upstream connection failed: {exc}", retryable=True, step_id=step_id
            ) from exc
        except InvalidURL as exc:
            raise UpstreamError(
                f"invalid upstream URL {target.base_url!r}: {exc}", step_id=step_id
            ) from exc
        except (RequestFailed, ReadFailed) as exc:
            raise UpstreamError(f"upstream request failed: {exc}", step_id=step_id) from exc
        raise status_error(reply.status, reply.headers, body, step_id, secret=target.api_key)


@dataclass(frozen=True, kw_only=True)
class _Request:
    """One attempt's POST, built per target (each has its own URL, model and key)."""

    url: str
    headers: dict[str, str]
    content: bytes


#: the longest the rest of a body after ``[DONE]`` is read for the connection's sake
_DRAIN_SECONDS = 1.0

#: the backoff between rounds of attempts (see :mod:`stepline._retry`)
_BACKOFF = Backoff(base=0.2, cap=8.0)


async def _drain(reads: AsyncGenerator[bytes, None], deadline: float) -> None:
    """Read what is left of a body (normally nothing but its terminator)."""
    with contextlib.suppress(ReadFailed, TimeoutError):
        async with asyncio.timeout_at(deadline):
            async for _ in reads:
                pass


def _retry_delay(exc: UpstreamError, retries: int, max_retries: int) -> float | None:
    """Seconds to wait before the next round, or None when ``exc`` is final."""
    if not exc.retryable or retries >= max_retries:
        return None
    return _BACKOFF.delay(retries, retry_after=exc.retry_after)


async def _read_body(
    reads: AsyncGenerator[bytes, None], target: UpstreamTarget, step_id: str, total_deadline: float
) -> bytes:
    """A non-streamed body; each read may wait ``timeouts.chunk``, all within the total."""
    loop = asyncio.get_running_loop()
    timeouts = target.config.timeouts
    parts: list[bytes] = []
    while True:
        deadline = loop.time() + timeouts.chunk
        try:
            async with asyncio.timeout_at(min(deadline, total_deadline)):
                block = await anext(reads, None)
        except TimeoutError:
            phase: Phase = "chunk" if deadline < total_deadline else "total"
            raise timeout(phase, timeouts, step_id) from None
        except ReadFailed as exc:
            raise read_failure(exc, step_id) from exc
        if block is None:
            return b"".join(parts)
        parts.append(block)
