"""The Chat Completions client: the one place stepline talks to model upstreams.

:meth:`ChatClient.stream` yields ``chat.completion.chunk`` dicts whether the
upstream streams (SSE) or answers in one body, so the loop reads one shape.

Invariants:

* Retries are decided here and nowhere else. Connection failures, 408, 409,
  429 and 5xx retry with exponential backoff and full jitter, honouring
  ``Retry-After``, bounded by ``max_retries`` and ``retry_deadline``, and only
  before the first chunk has been yielded: once output has left, a failure is
  raised, never replayed.
* Every failure leaves as :class:`~stepline.errors.UpstreamError` (or its
  :class:`~stepline.errors.UpstreamTimeout`); httpx exceptions never escape,
  and cancellation always propagates untouched and closes the response.
* No timeout scope spans a ``yield``: each wait on the network gets its own
  deadline, so time a slow consumer spends between chunks is never charged to
  the upstream's chunk gap, and the consumer is never cancelled by our clock.
* This is the hot path of every token: a streamed chunk costs one
  ``orjson.loads`` and a few dict lookups, nothing more. When the server
  registered secrets (:mod:`stepline.masking`), each chunk's text is also
  masked, as it is decoded, so a secret the model repeats is never stored nor
  streamed; with none registered that is one ``None`` test per chunk.
* A route with several targets (``UpstreamTarget.candidates``) fails over
  here, in the same place: a retryable failure before any output moves the
  call to the next target at once; when every target failed, the retry policy
  of the route's first target decides whether a new round starts after a
  backoff. The :class:`~stepline.upstream.routing.TargetPool` orders the
  targets, takes failing ones out for a cool-down and bounds calls in flight.
* An upstream's API key never leaves in an error: it is masked in messages
  and bodies before they are raised (unless it is too short to mask, see
  :data:`~stepline.masking.MIN_SECRET_LENGTH`).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol, cast

import httpx
import orjson

from stepline.config import TimeoutsConfig
from stepline.errors import UpstreamError, UpstreamTimeout
from stepline.masking import MASK, StreamMasker, is_maskable, mask, mask_bytes, stream_masker
from stepline.upstream.routing import TargetPool, UpstreamTarget

__all__ = ["ChatClient", "ForwardedReply", "NullUpstreamObserver", "UpstreamObserver"]

_Phase = Literal["connect", "first_byte", "chunk", "total"]

#: statuses worth another attempt; every other non-2xx is final
_RETRY_STATUSES = frozenset({408, 409, 429})
_BACKOFF_BASE = 0.2
_BACKOFF_CAP = 8.0
#: how much of an error body is kept on the exception and in its message
_BODY_LIMIT = 16_384
_MESSAGE_LIMIT = 500

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


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
    response: httpx.Response
    first_byte_deadline: float
    attempt_started: float


class ChatClient:
    """Streams Chat Completions from any OpenAI-compatible upstream.

    One instance serves every upstream through one shared connection pool;
    create it once per process and :meth:`aclose` it on shutdown. ``transport``
    replaces the network (tests pass ``httpx.MockTransport``); ``sleep`` is what
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
        max_keepalive_connections: int = 200,
        pool: TargetPool | None = None,
        observer: UpstreamObserver | None = None,
    ) -> None:
        self._sleep = sleep
        self.pool = pool or TargetPool()
        self.observer: UpstreamObserver = observer or NullUpstreamObserver()
        self.step_headers: Callable[[str], Mapping[str, str]] | None = None
        self._http = httpx.AsyncClient(
            transport=transport,
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_keepalive_connections,
            ),
            timeout=None,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

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

        reads = cast(AsyncGenerator[bytes, None], response.aiter_bytes())
        watchdog = _Watchdog(loop)
        masker = stream_masker()
        outcome: str | None = "cancelled"
        try:
            # Some servers ignore ``stream`` and answer with one JSON body.
            if not config.stream or response.headers.get("content-type", "").startswith(
                "application/json"
            ):
                body = await _read_body(reads, target, step_id, total_deadline)
                chunks = _completion_chunks(body, step_id)
                outcome = None
                for chunk in chunks:
                    if masker is not None:
                        masker.chunk(chunk)
                    yield chunk
                return

            parser = _SSEParser(step_id)
            phase: _Phase = "first_byte"
            deadline = first_byte_deadline
            chunk_seconds = timeouts.chunk
            while True:
                now = loop.time()
                if phase == "chunk":
                    deadline = now + chunk_seconds
                which: _Phase = phase if deadline < total_deadline else "total"
                expires = deadline if deadline < total_deadline else total_deadline
                if now >= expires:  # e.g. the consumer held us past the total deadline
                    raise _timeout(which, timeouts, step_id)
                watchdog.arm(expires)
                try:
                    block = await anext(reads, None)
                except asyncio.CancelledError:
                    if watchdog.disarm():
                        raise _timeout(which, timeouts, step_id) from None
                    raise
                except httpx.HTTPError as exc:
                    watchdog.disarm()
                    raise _stream_failure(exc, phase, timeouts, step_id) from exc
                if watchdog.disarm():  # something inside the read swallowed our cancel
                    raise _timeout(which, timeouts, step_id)

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
            with contextlib.suppress(httpx.HTTPError):
                await response.aclose()
            self._finished(opened, outcome)

    async def _open(
        self,
        target: UpstreamTarget,
        build: Callable[[UpstreamTarget], httpx.Request],
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
                    self._report(current, attempt_started, _error_kind(exc), health=exc.retryable)
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
            raise _timeout("total", target.config.timeouts, step_id) from None

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

        def build(current: UpstreamTarget) -> httpx.Request:
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
            try:
                return self._http.build_request(
                    "POST",
                    f"{current.base_url}/chat/completions",
                    content=content,
                    headers=headers,
                    timeout=httpx.Timeout(None, connect=current.config.timeouts.connect),
                )
            except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
                raise UpstreamError(
                    f"invalid upstream URL {current.base_url!r}: {exc}", step_id=request_id
                ) from exc

        cache_key = body.get("prompt_cache_key")
        opened = await self._open(
            target,
            build,
            request_id,
            started,
            total_deadline,
            affinity=cache_key if isinstance(cache_key, str) else None,
        )
        return ForwardedReply(self, opened, total_deadline, request_id)

    def _build_request(
        self, target: UpstreamTarget, payload: dict[str, Any], step_id: str
    ) -> httpx.Request:
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
        timeout = httpx.Timeout(None, connect=target.config.timeouts.connect)
        try:
            return self._http.build_request(
                "POST",
                f"{target.base_url}/chat/completions",
                content=orjson.dumps(body),
                headers=headers,
                timeout=timeout,
            )
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise UpstreamError(
                f"invalid upstream URL {target.base_url!r}: {exc}", step_id=step_id
            ) from exc

    async def _send(
        self, request: httpx.Request, target: UpstreamTarget, step_id: str, total_deadline: float
    ) -> tuple[httpx.Response, float]:
        """One attempt: the response once its status is 2xx, and its first-byte deadline."""
        timeouts = target.config.timeouts
        first_byte_deadline = asyncio.get_running_loop().time() + timeouts.first_byte
        phase: _Phase = "first_byte" if first_byte_deadline < total_deadline else "total"
        try:
            async with asyncio.timeout_at(min(first_byte_deadline, total_deadline)):
                response = await self._http.send(request, stream=True)
                if response.is_success:
                    return response, first_byte_deadline
                try:
                    body = await response.aread()
                finally:
                    await response.aclose()
        except TimeoutError:
            raise _timeout(phase, timeouts, step_id) from None
        except httpx.ConnectTimeout as exc:
            raise _timeout("connect", timeouts, step_id) from exc
        except httpx.TimeoutException as exc:
            raise _timeout(phase, timeouts, step_id) from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
            # No response yet: the request never reached a live upstream (refused,
            # reset, or a pooled connection the server had just closed).
            raise UpstreamError(
                f"upstream connection failed: {exc or type(exc).__name__}",
                retryable=True,
                step_id=step_id,
            ) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream request failed: {exc}", step_id=step_id) from exc
        raise _status_error(response, body, step_id, secret=target.api_key)


class ForwardedReply:
    """An upstream's 2xx reply to a forwarded call: its status, content type and raw
    bytes. Iterate :meth:`body` once (it frees the target's slot at its end), or
    :meth:`aclose` it without reading.

    The bytes are relayed as they came, but for registered secrets
    (:mod:`stepline.masking`): then a JSON body is masked whole, and an event
    stream event by event, an event re-encoded only when masking changed it."""

    def __init__(
        self, client: ChatClient, opened: _Opened, total_deadline: float, request_id: str
    ) -> None:
        self._client = client
        self._opened = opened
        self._total_deadline = total_deadline
        self._request_id = request_id
        self._closed = False
        self.status_code = opened.response.status_code
        self.content_type = opened.response.headers.get("content-type", "application/json")
        #: relayed with the bytes, should an upstream compress despite being asked not to
        self.content_encoding = opened.response.headers.get("content-encoding")
        self.target = opened.target.name

    async def body(self) -> AsyncIterator[bytes]:
        """The reply's bytes as they arrive; each wait bounded by the ``chunk`` timeout."""
        loop = asyncio.get_running_loop()
        timeouts = self._opened.target.config.timeouts
        reads = cast(AsyncGenerator[bytes, None], self._opened.response.aiter_raw())
        relay = _MaskedRelay.of(self.content_type, self.content_encoding)
        outcome: str | None = "cancelled"
        try:
            while True:
                deadline = min(loop.time() + timeouts.chunk, self._total_deadline)
                try:
                    async with asyncio.timeout_at(deadline):
                        block = await anext(reads, None)
                except TimeoutError:
                    outcome = "timeout"
                    phase: _Phase = "chunk" if deadline < self._total_deadline else "total"
                    raise _timeout(phase, timeouts, self._request_id) from None
                except httpx.HTTPError as exc:
                    outcome = "stream"
                    raise _stream_failure(exc, "chunk", timeouts, self._request_id) from exc
                if block is None:
                    outcome = None
                    if relay is not None and (rest := relay.close()):
                        yield rest
                    return
                if relay is not None:
                    block = relay.feed(block)
                    if not block:
                        continue
                yield block
        finally:
            await reads.aclose()
            await self._close(outcome)

    async def read(self) -> bytes:
        return b"".join([block async for block in self.body()])

    async def aclose(self) -> None:
        await self._close("cancelled")

    async def _close(self, outcome: str | None) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(httpx.HTTPError):
            await self._opened.response.aclose()
        self._client._finished(self._opened, outcome)


#: the longest the rest of a body after ``[DONE]`` is read for the connection's sake
_DRAIN_SECONDS = 1.0


async def _drain(reads: AsyncGenerator[bytes, None], deadline: float) -> None:
    """Read what is left of a body (normally nothing but its terminator)."""
    with contextlib.suppress(httpx.HTTPError, TimeoutError):
        async with asyncio.timeout_at(deadline):
            async for _ in reads:
                pass


class _Watchdog:
    """Bounds each network wait of one call with a single lazily re-armed timer.

    An ``asyncio.timeout`` scope per read costs a timer handle per chunk; here
    arming is a few attribute writes, and the timer only fires (and moves
    itself forward) about once per deadline period. It cancels the task only
    while it is ``armed``, i.e. suspended in a network read, so the
    cancellation always lands inside that read and never in the consumer's
    code between chunks.
    """

    __slots__ = (
        "_cancelling",
        "_deadline",
        "_expired",
        "_handle",
        "_loop",
        "_task",
        "_when",
        "armed",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._when = math.inf
        self._deadline = math.inf
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._expired = False
        self.armed = False

    def arm(self, deadline: float) -> None:
        """Allow the next wait to last until ``deadline`` (loop time)."""
        self._deadline = deadline
        self._task = task = asyncio.current_task()
        self._cancelling = task.cancelling() if task is not None else 0
        self.armed = True
        if deadline < self._when:
            if self._handle is not None:
                self._handle.cancel()
            self._when = deadline
            self._handle = self._loop.call_at(deadline, self._fire)

    def disarm(self) -> bool:
        """End the wait; True when it was this watchdog that cancelled it."""
        self.armed = False
        if not self._expired:
            return False
        self._expired = False
        # A cancellation from outside that arrived as well still wins.
        return self._task is not None and self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        scheduled, self._when = self._when, math.inf
        if not self.armed:
            return  # between waits; the next arm() schedules the timer again
        if self._deadline > scheduled:  # the deadline moved on since we were scheduled
            self._when = self._deadline
            self._handle = self._loop.call_at(self._deadline, self._fire)
            return
        if self._task is not None:
            self._expired = True
            self._task.cancel()


class _SSEParser:
    """Server-sent events in, chunk dicts out; fed whatever each network read returns.

    Lines end in ``\\n`` or ``\\r\\n``; an event is dispatched at its blank line,
    multi-line ``data`` is joined with ``\\n``. A bad event sets ``failure``
    (chunks parsed before it in the same read are still returned), ``[DONE]``
    sets ``done``, and ``finished`` records whether any choice ever carried a
    ``finish_reason``.
    """

    __slots__ = ("_data", "_event", "_step_id", "_tail", "done", "failure", "finished")

    def __init__(self, step_id: str | None = None) -> None:
        self._step_id = step_id
        self._tail = b""
        self._data: bytes | None = None
        self._event: bytes | None = None
        self.done = False
        self.finished = False
        self.failure: UpstreamError | None = None

    def close(self) -> list[dict[str, Any]]:
        """End of the body: an unterminated last event still counts."""
        return self.feed(b"\n\n")

    def feed(self, block: bytes) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        if self.done or self.failure is not None:
            return chunks
        lines = (self._tail + block if self._tail else block).split(b"\n")
        self._tail = lines.pop()
        data = self._data
        for line in lines:
            if line.startswith(b"data:"):
                data = line[5:] if data is None else data + b"\n" + line[5:]
                continue
            if line and line != b"\r":
                if line.startswith(b"event:"):
                    self._event = line[6:].strip()
                # Comments (keep-alive pings) and id/retry fields carry nothing for us.
                continue
            if data is None:
                continue
            event, data = data, None
            try:
                chunk = _loads(event)  # JSON allows the leading space and a trailing \r
            except _JSONDecodeError:
                if event.strip() == b"[DONE]":
                    self.done = True
                elif self._event == b"error":
                    self.failure = self._error(event.strip().decode("utf-8", "replace"))
                else:
                    self.failure = self._error(f"upstream sent invalid JSON: {_clip(event)}")
                break
            if self._event is not None:
                if self._event == b"error":
                    self.failure = self._error(_error_message(chunk) or _clip(event))
                    break
                self._event = None
            if type(chunk) is not dict or chunk.get("error") is not None:
                self.failure = self._error(
                    _error_message(chunk) or f"upstream sent an unexpected event: {_clip(event)}"
                )
                break
            if not self.finished:
                choices = chunk.get("choices")
                if choices:
                    try:
                        for choice in choices:
                            if choice.get("finish_reason"):
                                self.finished = True
                    except (AttributeError, TypeError):
                        self.failure = self._error(
                            f"upstream sent a malformed chunk: {_clip(event)}"
                        )
                        break
                elif choices is None and chunk.get("object") == "error":
                    self.failure = self._error(_error_message(chunk) or _clip(event))
                    break
            chunks.append(chunk)
        self._data = data
        return chunks

    def _error(self, message: str) -> UpstreamError:
        return UpstreamError(mask(message), step_id=self._step_id)


class _MaskedRelay:
    """A forwarded body with registered secrets masked: an event stream line by line
    (a ``data:`` chunk through a :class:`~stepline.masking.StreamMasker`, so a secret
    split across events is caught too), any other body whole, at its end."""

    __slots__ = ("_masker", "_stream", "_tail")

    def __init__(self, masker: StreamMasker, *, stream: bool) -> None:
        self._masker = masker
        self._stream = stream
        self._tail = b""

    @classmethod
    def of(cls, content_type: str, content_encoding: str | None) -> _MaskedRelay | None:
        """The relay for a reply; None with no secret registered, or for a body
        compressed despite the ``identity`` asked for (it cannot be read)."""
        masker = stream_masker()
        if masker is None or content_encoding not in (None, "identity"):
            return None
        return cls(masker, stream=content_type.startswith("text/event-stream"))

    def feed(self, block: bytes) -> bytes:
        data = self._tail + block
        if not self._stream:
            self._tail = data
            return b""
        end = data.rfind(b"\n") + 1
        self._tail = data[end:]
        return b"".join(self._line(line) for line in data[:end].splitlines(keepends=True))

    def close(self) -> bytes:
        data, self._tail = self._tail, b""
        if not self._stream:
            return mask_bytes(data)
        return self._line(data) if data else b""

    def _line(self, line: bytes) -> bytes:
        if not line.startswith(b"data:"):
            return line
        content = line.rstrip(b"\r\n")
        try:
            chunk = _loads(content[5:])
        except _JSONDecodeError:
            return mask_bytes(line)  # [DONE], or not a chunk
        if type(chunk) is dict and self._masker.chunk(chunk):
            return b"data: " + orjson.dumps(chunk) + line[len(content) :]
        return mask_bytes(line)


def _retry_delay(exc: UpstreamError, retries: int, max_retries: int) -> float | None:
    """Seconds to wait before the next attempt, or None when ``exc`` is final."""
    if not exc.retryable or retries >= max_retries:
        return None
    if exc.retry_after is not None:
        return exc.retry_after
    # Full jitter: spreads a burst of clients that all failed at the same moment.
    return random.random() * min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0**retries)


def _retry_after(headers: httpx.Headers) -> float | None:
    """``Retry-After`` as seconds (delta or HTTP date); OpenAI's ``retry-after-ms`` wins."""
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


def _error_kind(exc: UpstreamError) -> str:
    if isinstance(exc, UpstreamTimeout):
        return "connect" if exc.phase == "connect" else "timeout"
    if exc.status is not None:
        return f"http_{exc.status}"
    return "connect" if exc.retryable else "request"


def mask_secret(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` masked (when it is long enough)."""
    return text.replace(secret, MASK) if is_maskable(secret) and secret in text else text


def _status_error(
    response: httpx.Response, body: bytes, step_id: str, *, secret: str | None = None
) -> UpstreamError:
    status = response.status_code
    retryable = status in _RETRY_STATUSES or status >= 500
    text = mask(mask_secret(body[:_BODY_LIMIT].decode("utf-8", "replace"), secret))
    try:
        message = _error_message(_loads(body))
    except _JSONDecodeError:
        message = None
    if not message:
        message = text.strip()[:_MESSAGE_LIMIT] or f"upstream returned HTTP {status}"
    return UpstreamError(
        mask(mask_secret(message, secret)),
        status=status,
        body=text,
        retryable=retryable,
        retry_after=_retry_after(response.headers) if retryable else None,
        step_id=step_id,
    )


def _error_message(data: Any) -> str | None:
    """The message of an error body in any of the shapes compatible servers use."""
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict):
        message = error.get("message")  # the OpenAI envelope
    elif isinstance(error, str):
        message = error  # {"error": "model not found"}
    elif data.get("object") == "error":
        message = data.get("message")  # {"object": "error", "message": ...}
    else:
        message = data.get("detail")  # a web framework's default error
    return message if isinstance(message, str) else None


def _timeout(phase: _Phase, timeouts: TimeoutsConfig, step_id: str) -> UpstreamTimeout:
    seconds: float = getattr(timeouts, phase)
    return UpstreamTimeout(phase, seconds, step_id=step_id)


def _stream_failure(
    exc: httpx.HTTPError, phase: _Phase, timeouts: TimeoutsConfig, step_id: str
) -> UpstreamError:
    if isinstance(exc, httpx.TimeoutException):
        return _timeout(phase, timeouts, step_id)
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return UpstreamError("upstream connection dropped mid-stream", step_id=step_id)
    return UpstreamError(f"upstream stream failed: {exc}", step_id=step_id)


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
            phase: _Phase = "chunk" if deadline < total_deadline else "total"
            raise _timeout(phase, timeouts, step_id) from None
        except httpx.HTTPError as exc:
            raise _stream_failure(exc, "chunk", timeouts, step_id) from exc
        if block is None:
            return b"".join(parts)
        parts.append(block)


def _completion_chunks(body: bytes, step_id: str) -> list[dict[str, Any]]:
    """A whole ``chat.completion`` as the chunks a stream of it would have sent."""
    try:
        completion = _loads(body)
    except _JSONDecodeError:
        raise UpstreamError(f"upstream sent invalid JSON: {_clip(body)}", step_id=step_id) from None
    message = _error_message(completion)
    if message is not None:
        raise UpstreamError(mask(message), step_id=step_id)
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not isinstance(choices, list) or not choices:
        raise UpstreamError(f"upstream reply has no choices: {_clip(body)}", step_id=step_id)

    head = {
        "id": completion.get("id", ""),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    if completion.get("system_fingerprint") is not None:
        head["system_fingerprint"] = completion["system_fingerprint"]
    deltas: list[dict[str, Any]] = []
    finishes: list[dict[str, Any]] = []
    for position, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise UpstreamError(
                mask(f"upstream sent a malformed choice: {choice!r:.200}"), step_id=step_id
            )
        index = choice.get("index", position)
        message_dict = choice.get("message") or {}
        delta = {
            key: value
            for key, value in message_dict.items()
            if value is not None and key != "tool_calls"
        }
        delta.setdefault("role", "assistant")
        tool_calls = message_dict.get("tool_calls")
        if tool_calls:
            delta["tool_calls"] = [
                {"index": number, **call} for number, call in enumerate(tool_calls)
            ]
        opening: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": None}
        if choice.get("logprobs") is not None:
            opening["logprobs"] = choice["logprobs"]
        deltas.append(opening)
        # A complete reply has ended, whether or not the server said why.
        finishes.append(
            {"index": index, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}
        )
    chunks = [{**head, "choices": deltas}, {**head, "choices": finishes}]
    if completion.get("usage") is not None:
        chunks.append({**head, "choices": [], "usage": completion["usage"]})
    return chunks


def _clip(data: bytes) -> str:
    """What an error quotes of an upstream's bytes: the start, secrets masked."""
    text = mask(data.strip().decode("utf-8", "replace"))
    return text if len(text) <= 200 else text[:200] + "..."
