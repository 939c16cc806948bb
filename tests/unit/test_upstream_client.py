"""ChatClient against scripted upstreams: httpx.MockTransport for shapes and retries,
a real uvicorn server for everything that depends on time or on the socket."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

import stepline._upstream
from stepline._config import Settings, TimeoutsConfig, UpstreamConfig
from stepline._upstream import ChatClient, UpstreamTarget, resolve_target
from stepline.errors import UpstreamError, UpstreamTimeout

pytestmark = pytest.mark.timeout(10)

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


# -- scripted upstream pieces -------------------------------------------------


def make_target(
    base_url: str = "http://upstream.test/v1",
    *,
    stream: bool = True,
    api_key: str | None = None,
    max_retries: int = 2,
    retry_deadline: float = 30.0,
    timeouts: TimeoutsConfig | None = None,
) -> UpstreamTarget:
    config = UpstreamConfig(
        base_url=base_url,
        stream=stream,
        max_retries=max_retries,
        retry_deadline=retry_deadline,
        timeouts=timeouts or TimeoutsConfig(),
    )
    return UpstreamTarget(
        name="test", base_url=base_url, api_key=api_key, upstream_model="up-model", config=config
    )


def chunk(content: str | None = None, *, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    if content is not None:
        delta["content"] = content
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "up-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


USAGE_CHUNK = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1700000000,
    "model": "up-model",
    "choices": [],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
}

CHUNKS = [
    chunk("", role="assistant"),
    chunk(None, reasoning_content="thinking"),
    chunk("Hel"),
    chunk("lo ✓"),
    chunk(
        None,
        tool_calls=[
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "get", "arguments": '{"a":'},
            }
        ],
    ),
    chunk(None, tool_calls=[{"index": 0, "function": {"arguments": "1}"}}]),
    chunk(None, finish="tool_calls"),
    USAGE_CHUNK,
]


def sse(*events: dict[str, Any] | bytes, done: bool = True, newline: bytes = b"\n") -> bytes:
    out = b""
    for event in events:
        data = event if isinstance(event, bytes) else orjson.dumps(event)
        out += b"data: " + data + newline + newline
    if done:
        out += b"data: [DONE]" + newline + newline
    return out


def sse_response(body: bytes, *, split: int | None = None) -> httpx.Response:
    async def parts() -> AsyncIterator[bytes]:
        step = split or len(body) or 1
        for start in range(0, len(body), step):
            yield body[start : start + step]

    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=parts())


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    envelope = {"error": {"message": message, "type": "error", "param": None, "code": None}}
    return httpx.Response(status, json=envelope, headers=headers)


class Recorder:
    """The requests a MockTransport saw and the delays the client would have slept."""

    def __init__(self, *responses: httpx.Response | Exception) -> None:
        self.script = list(responses)
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        await request.aread()
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        return item

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)

    def client(self) -> ChatClient:
        return ChatClient(transport=httpx.MockTransport(self.handle), sleep=self.sleep)

    def bodies(self) -> list[dict[str, Any]]:
        return [orjson.loads(request.content) for request in self.requests]


async def collect(
    client: ChatClient, target: UpstreamTarget, into: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = [] if into is None else into
    async with contextlib.aclosing(
        client.stream(target, {"messages": [{"role": "user", "content": "hi"}]}, step_id="step_1")
    ) as chunks:
        async for item in chunks:
            got.append(item)
    return got


@contextlib.contextmanager
def no_pending_cancellation() -> Iterator[None]:
    yield
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


# -- streaming ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("split", "newline"),
    [(None, b"\n"), (7, b"\n"), (1, b"\r\n"), (64, b"\r\n")],
    ids=["one-read", "7-byte-reads", "byte-by-byte-crlf", "64-byte-reads-crlf"],
)
async def test_streamed_chunks_come_through_in_order_and_unchanged(
    split: int | None, newline: bytes
) -> None:
    body = b": keep-alive\n\n" + sse(*CHUNKS, newline=newline)
    recorder = Recorder(sse_response(body, split=split))
    async with recorder.client() as client:
        got = await collect(client, make_target())

    assert got == CHUNKS
    [sent] = recorder.bodies()
    assert sent == {
        "messages": [{"role": "user", "content": "hi"}],
        "model": "up-model",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert str(recorder.requests[0].url) == "http://upstream.test/v1/chat/completions"


async def test_stream_without_done_sentinel_ends_at_close() -> None:
    recorder = Recorder(sse_response(sse(chunk("hi"), chunk(None, finish="stop"), done=False)))
    async with recorder.client() as client:
        got = await collect(client, make_target())
    assert got == [chunk("hi"), chunk(None, finish="stop")]


async def test_multi_line_data_event_is_joined() -> None:
    event = orjson.dumps(chunk("x", finish="stop"), option=orjson.OPT_INDENT_2)
    body = b"".join(b"data: " + line + b"\n" for line in event.split(b"\n")) + b"\n"
    recorder = Recorder(sse_response(body))
    async with recorder.client() as client:
        assert await collect(client, make_target()) == [chunk("x", finish="stop")]


# -- non-streaming upstreams ----------------------------------------------------


async def test_non_stream_reply_becomes_equivalent_chunks() -> None:
    completion = {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1700000001,
        "model": "up-model",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "reasoning_content": "need data",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "a", "arguments": "{}"},
                        },
                        {
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "b", "arguments": '{"x":1}'},
                        },
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
    }
    recorder = Recorder(httpx.Response(200, json=completion))
    async with recorder.client() as client:
        got = await collect(client, make_target(stream=False))

    head = {
        "id": "chatcmpl-9",
        "object": "chat.completion.chunk",
        "created": 1700000001,
        "model": "up-model",
    }
    assert got == [
        {
            **head,
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "role": "assistant",
                        "content": "Checking.",
                        "reasoning_content": "need data",
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_a",
                                "type": "function",
                                "function": {"name": "a", "arguments": "{}"},
                            },
                            {
                                "index": 1,
                                "id": "call_b",
                                "type": "function",
                                "function": {"name": "b", "arguments": '{"x":1}'},
                            },
                        ],
                    },
                    "finish_reason": None,
                }
            ],
        },
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {**head, "choices": [], "usage": completion["usage"]},
    ]
    [sent] = recorder.bodies()
    assert sent["stream"] is False
    assert "stream_options" not in sent


async def test_json_reply_to_a_streaming_request_is_converted() -> None:
    completion = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    }
    recorder = Recorder(httpx.Response(200, json=completion))
    async with recorder.client() as client:
        got = await collect(client, make_target(stream=True))
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    assert got == [
        {
            **head,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": "hi"},
                    "finish_reason": None,
                }
            ],
        },
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]


async def test_non_stream_invalid_json_fails_clearly() -> None:
    recorder = Recorder(httpx.Response(200, content=b"<html>oops</html>"))
    async with recorder.client() as client:
        with pytest.raises(UpstreamError, match=r"^upstream sent invalid JSON: <html>oops"):
            await collect(client, make_target(stream=False))


# -- headers ------------------------------------------------------------------


@pytest.mark.parametrize("api_key", ["sk-test", None])
async def test_headers_carry_step_id_and_key(api_key: str | None) -> None:
    recorder = Recorder(sse_response(sse(chunk("x", finish="stop"))))
    async with recorder.client() as client:
        await collect(client, make_target(api_key=api_key))
    [request] = recorder.requests
    assert request.headers["x-stepline-step-id"] == "step_1"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "text/event-stream"
    if api_key:
        assert request.headers["authorization"] == "Bearer sk-test"
    else:
        assert "authorization" not in request.headers


# -- retries ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": "<now + 5s as an HTTP date>"}, 5.0),
        ({"retry-after-ms": "250", "retry-after": "1"}, 0.25),
    ],
    ids=["seconds", "fraction", "http-date", "milliseconds"],
)
async def test_429_honours_retry_after_then_succeeds(
    headers: dict[str, str], expected: float
) -> None:
    if headers.get("retry-after", "").startswith("<now"):
        headers = {"retry-after": email.utils.formatdate(time.time() + 5, usegmt=True)}
    recorder = Recorder(
        error_response(429, "slow down", headers),
        sse_response(sse(chunk("ok", finish="stop"))),
    )
    async with recorder.client() as client:
        got = await collect(client, make_target())
    assert got == [chunk("ok", finish="stop")]
    assert len(recorder.requests) == 2
    [slept] = recorder.sleeps
    # an HTTP date has whole seconds and was written a moment ago
    tolerance = 1.01 if "GMT" in headers.get("retry-after", "") else 1e-9
    assert slept == pytest.approx(expected, abs=tolerance)


async def test_server_errors_retry_with_jittered_backoff_then_succeed() -> None:
    recorder = Recorder(
        error_response(500, "boom"),
        error_response(502, "bad gateway"),
        sse_response(sse(chunk("ok", finish="stop"))),
    )
    async with recorder.client() as client:
        got = await collect(client, make_target())
    assert got == [chunk("ok", finish="stop")]
    assert len(recorder.requests) == 3
    first, second = recorder.sleeps
    assert 0 <= first <= 0.2
    assert 0 <= second <= 0.4
    # every attempt is the same request: same step id, same body
    assert {r.headers["x-stepline-step-id"] for r in recorder.requests} == {"step_1"}
    assert len({r.content for r in recorder.requests}) == 1


async def test_clients_that_failed_together_wait_different_jittered_times() -> None:
    """Full jitter: each wait is drawn from [0, the exponential bound], so clients an
    overloaded upstream turned away at the same moment do not all come back together."""
    waits: list[float] = []
    for _ in range(40):
        recorder = Recorder(
            error_response(503, "overloaded"), sse_response(sse(chunk("ok", finish="stop")))
        )
        async with recorder.client() as client:
            assert await collect(client, make_target()) == [chunk("ok", finish="stop")]
        waits.extend(recorder.sleeps)
    assert len(waits) == 40
    assert all(0 <= wait <= 0.2 for wait in waits)
    assert len(set(waits)) == len(waits)
    # spread over the whole range (each bound fails by chance with p = 0.75**40, ~1e-5)
    assert min(waits) < 0.05
    assert max(waits) > 0.15


@pytest.mark.parametrize("status", [408, 409])
async def test_conflict_and_request_timeout_are_retried(status: int) -> None:
    recorder = Recorder(
        error_response(status, "again"), sse_response(sse(chunk("ok", finish="stop")))
    )
    async with recorder.client() as client:
        assert await collect(client, make_target()) == [chunk("ok", finish="stop")]
    assert len(recorder.sleeps) == 1


async def test_400_is_not_retried_and_keeps_the_upstream_message() -> None:
    recorder = Recorder(error_response(400, "messages: field required"))
    async with recorder.client() as client:
        with pytest.raises(UpstreamError) as caught:
            await collect(client, make_target())
    error = caught.value
    assert type(error) is UpstreamError
    assert error.message == "messages: field required"
    assert error.status == 400
    assert error.retryable is False
    assert error.step_id == "step_1"
    assert error.body is not None
    assert "messages: field required" in error.body
    assert len(recorder.requests) == 1
    assert recorder.sleeps == []


async def test_retries_exhausted_raise_the_last_status() -> None:
    recorder = Recorder(error_response(503, "overloaded", {"retry-after": "1"}))
    async with recorder.client() as client:
        with pytest.raises(UpstreamError) as caught:
            await collect(client, make_target(max_retries=2))
    assert caught.value.status == 503
    assert caught.value.message == "overloaded"
    assert caught.value.retryable is True
    assert caught.value.retry_after == 1.0
    assert len(recorder.requests) == 3
    assert recorder.sleeps == [1.0, 1.0]


async def test_retry_after_past_the_retry_deadline_is_not_waited_for() -> None:
    recorder = Recorder(error_response(429, "quota", {"retry-after": "60"}))
    async with recorder.client() as client:
        with pytest.raises(UpstreamError) as caught:
            await collect(client, make_target(retry_deadline=30))
    assert caught.value.retry_after == 60.0
    assert recorder.sleeps == []
    assert len(recorder.requests) == 1


async def test_non_envelope_error_body_becomes_the_message() -> None:
    html = "<html><body>" + "Bad Gateway " * 100 + "</body></html>"
    recorder = Recorder(httpx.Response(502, text=html))
    async with recorder.client() as client:
        with pytest.raises(UpstreamError) as caught:
            await collect(client, make_target(max_retries=0))
    assert caught.value.message == html[:500]
    assert caught.value.body == html
    assert caught.value.status == 502


async def test_nothing_is_retried_after_the_first_chunk() -> None:
    async def two_then_drop() -> AsyncIterator[bytes]:
        yield sse(chunk("a"), done=False)
        yield sse(chunk("b"), done=False)
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")

    recorder = Recorder(httpx.Response(200, content=two_then_drop()))
    got: list[dict[str, Any]] = []
    async with recorder.client() as client:
        with pytest.raises(UpstreamError) as caught:
            await collect(client, make_target(), into=got)
    assert got == [chunk("a"), chunk("b")]
    assert caught.value.message == "upstream connection dropped mid-stream"
    assert caught.value.retryable is False
    assert len(recorder.requests) == 1
    assert recorder.sleeps == []


async def test_connect_timeout_is_retried_then_raised_as_timeout() -> None:
    recorder = Recorder(httpx.ConnectTimeout("timed out"))
    async with recorder.client() as client:
        with pytest.raises(UpstreamTimeout) as caught:
            await collect(client, make_target())
    assert caught.value.phase == "connect"
    assert len(recorder.requests) == 3
    assert len(recorder.sleeps) == 2


async def test_connect_error_to_a_closed_port_is_retried_then_raised() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps: list[float] = []

    async def record(delay: float) -> None:
        sleeps.append(delay)

    async with ChatClient(sleep=record) as client:
        with pytest.raises(UpstreamError) as caught:
            await collect(client, make_target(f"http://127.0.0.1:{port}/v1", max_retries=2))
    assert caught.value.message.startswith("upstream connection failed")
    assert caught.value.retryable is True
    assert caught.value.status is None
    assert len(sleeps) == 2


# -- malformed streams ----------------------------------------------------------


async def test_garbage_json_fails_after_the_good_chunks() -> None:
    recorder = Recorder(sse_response(sse(chunk("a"), b"{not json", chunk(None, finish="stop"))))
    got: list[dict[str, Any]] = []
    async with recorder.client() as client:
        with pytest.raises(UpstreamError, match=r"^upstream sent invalid JSON: \{not json$"):
            await collect(client, make_target(), into=got)
    assert got == [chunk("a")]
    assert recorder.sleeps == []


@pytest.mark.parametrize("done", [True, False], ids=["done-sentinel", "connection-closed"])
async def test_stream_without_finish_reason_fails(done: bool) -> None:
    recorder = Recorder(sse_response(sse(chunk("a"), chunk("b"), done=done)))
    got: list[dict[str, Any]] = []
    async with recorder.client() as client:
        with pytest.raises(UpstreamError, match=r"^upstream stream ended before finish_reason$"):
            await collect(client, make_target(), into=got)
    assert got == [chunk("a"), chunk("b")]


async def test_error_event_in_stream_raises_its_message() -> None:
    error = {"error": {"message": "context length exceeded", "type": "BadRequestError"}}
    recorder = Recorder(sse_response(sse(chunk("a"), error)))
    got: list[dict[str, Any]] = []
    async with recorder.client() as client:
        with pytest.raises(UpstreamError, match=r"^context length exceeded$"):
            await collect(client, make_target(), into=got)
    assert got == [chunk("a")]


# -- timing, against a real server ----------------------------------------------


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


@contextlib.asynccontextmanager
async def serve(handler: Callable[[Request], Awaitable[Response]]) -> AsyncIterator[str]:
    """Serve ``handler`` at POST /v1/chat/completions; yields the base URL."""
    app = Starlette(routes=[Route("/v1/chat/completions", handler, methods=["POST"])])
    server = _Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", ws="none"
        )
    )
    task = asyncio.create_task(server.serve())
    ready = asyncio.create_task(server.ready.wait())
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if not server.ready.is_set():
        ready.cancel()
        await task  # startup failed; surface why
        raise RuntimeError("test server did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        await task


#: a short first-byte wait; everything else generous
FIRST_BYTE = TimeoutsConfig(connect=2.0, first_byte=0.2, chunk=5.0, total=5.0)
#: a short chunk gap; everything else generous
CHUNK_GAP = TimeoutsConfig(connect=2.0, first_byte=5.0, chunk=0.2, total=5.0)


def events(*items: dict[str, Any]) -> list[bytes]:
    return [sse(item, done=False) for item in items]


async def test_first_byte_timeout_when_headers_never_come() -> None:
    release = asyncio.Event()

    async def stall(request: Request) -> Response:
        await release.wait()
        return Response()

    async with serve(stall) as url, ChatClient() as client:
        with no_pending_cancellation(), pytest.raises(UpstreamTimeout) as caught:
            await collect(client, make_target(url, timeouts=FIRST_BYTE))
        release.set()
    assert caught.value.phase == "first_byte"
    assert caught.value.seconds == 0.2
    assert caught.value.retryable is False


async def test_first_byte_timeout_when_headers_come_but_no_chunk() -> None:
    release = asyncio.Event()

    async def headers_only(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b": connected\n\n"
            await release.wait()

        return StreamingResponse(body(), media_type="text/event-stream")

    async with serve(headers_only) as url, ChatClient() as client:
        with no_pending_cancellation(), pytest.raises(UpstreamTimeout) as caught:
            await collect(client, make_target(url, timeouts=FIRST_BYTE))
        release.set()
    assert caught.value.phase == "first_byte"


async def test_chunk_gap_timeout_after_two_chunks() -> None:
    release = asyncio.Event()

    async def two_then_stall(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for event in events(chunk("a"), chunk("b")):
                yield event
            await release.wait()

        return StreamingResponse(body(), media_type="text/event-stream")

    got: list[dict[str, Any]] = []
    async with serve(two_then_stall) as url, ChatClient() as client:
        with no_pending_cancellation(), pytest.raises(UpstreamTimeout) as caught:
            await collect(client, make_target(url, timeouts=CHUNK_GAP), into=got)
        release.set()
    assert got == [chunk("a"), chunk("b")]
    assert caught.value.phase == "chunk"
    assert caught.value.seconds == 0.2


async def test_total_timeout_while_chunks_keep_coming() -> None:
    async def trickle(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for number in range(200):
                yield sse(chunk(str(number)), done=False)
                await asyncio.sleep(0.02)  # a slow but steady upstream

        return StreamingResponse(body(), media_type="text/event-stream")

    timeouts = TimeoutsConfig(connect=1.0, first_byte=1.0, chunk=1.0, total=0.3)
    got: list[dict[str, Any]] = []
    async with serve(trickle) as url, ChatClient() as client:
        with no_pending_cancellation(), pytest.raises(UpstreamTimeout) as caught:
            await collect(client, make_target(url, timeouts=timeouts), into=got)
    assert caught.value.phase == "total"
    assert 0 < len(got) < 200
    assert got == [chunk(str(number)) for number in range(len(got))]


async def test_a_slow_consumer_is_not_charged_to_the_chunk_gap() -> None:
    async def two_reads(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield sse(chunk("a"), done=False)
            await asyncio.sleep(0.05)  # so "b" arrives in a read of its own, in the chunk phase
            yield sse(chunk("b"), chunk(None, finish="stop"))

        return StreamingResponse(body(), media_type="text/event-stream")

    got: list[dict[str, Any]] = []
    async with serve(two_reads) as url, ChatClient() as client:
        stream = client.stream(make_target(url, timeouts=CHUNK_GAP), {"messages": []}, step_id="s")
        async with contextlib.aclosing(stream):
            async for item in stream:
                got.append(item)
                if len(got) == 2:
                    # The consumer's own work, longer than the chunk gap, while the
                    # deadline of the read that brought "b" passes.
                    await asyncio.sleep(0.3)
    assert got == [chunk("a"), chunk("b"), chunk(None, finish="stop")]


async def test_cancellation_propagates_and_closes_the_response() -> None:
    upstream_closed = asyncio.Event()
    received = asyncio.Event()

    async def endless(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            try:
                yield sse(chunk("a"), done=False)
                await asyncio.Event().wait()
            finally:
                upstream_closed.set()

        return StreamingResponse(body(), media_type="text/event-stream")

    got: list[dict[str, Any]] = []
    async with serve(endless) as url, ChatClient() as client:

        async def consume() -> None:
            stream = client.stream(make_target(url), {"messages": []}, step_id="s")
            async with contextlib.aclosing(stream):
                async for item in stream:
                    got.append(item)
                    received.set()

        consumer = asyncio.create_task(consume())
        await received.wait()
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        await asyncio.wait_for(upstream_closed.wait(), timeout=5)
    assert got == [chunk("a")]


# -- routing ------------------------------------------------------------------


def make_settings(**upstream: Any) -> Settings:
    return Settings.model_validate(
        {
            "upstreams": {"local": {"base_url": "http://127.0.0.1:8000/v1/", **upstream}},
            "models": [{"name": "llama", "upstream": "local", "upstream_model": "meta/llama"}],
            "default_model": {"upstream": "local"},
        }
    )


def test_resolve_target_maps_named_and_catch_all_models() -> None:
    settings = make_settings(api_key="sk-literal")
    named = resolve_target(settings, "llama")
    assert named == UpstreamTarget(
        name="local",
        base_url="http://127.0.0.1:8000/v1",
        api_key="sk-literal",
        upstream_model="meta/llama",
        config=settings.upstreams["local"],
    )
    other = resolve_target(settings, "qwen3:8b")
    assert other is not None
    assert other.upstream_model == "qwen3:8b"


def test_resolve_target_without_route_is_none() -> None:
    settings = Settings.model_validate({"upstreams": {"u": {"base_url": "http://x/v1"}}})
    assert resolve_target(settings, "anything") is None


def test_api_key_is_resolved_once_per_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPLINE_TEST_ROUTING_KEY", "first")
    settings = make_settings(api_key_env="STEPLINE_TEST_ROUTING_KEY")
    first = resolve_target(settings, "llama")
    monkeypatch.setenv("STEPLINE_TEST_ROUTING_KEY", "second")
    second = resolve_target(settings, "other")
    assert first is not None
    assert second is not None
    assert first.api_key == second.api_key == "first"


def test_public_surface() -> None:
    assert stepline._upstream.__all__ == ["ChatClient", "UpstreamTarget", "resolve_target"]


async def test_model_calls_reuse_one_connection() -> None:
    """The stream is read to its end after ``[DONE]``, so its connection goes back to
    the pool: back-to-back model calls open one TCP connection, not one each."""
    peers: list[tuple[str, int]] = []

    async def answer(request: Request) -> Response:
        assert request.client is not None
        peers.append((request.client.host, request.client.port))

        async def body() -> AsyncIterator[bytes]:
            for event in events(*CHUNKS):
                yield event
            yield b"data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    async with serve(answer) as url, ChatClient() as client:
        for _ in range(3):
            assert await collect(client, make_target(url)) == CHUNKS
    assert len(peers) == 3
    assert len(set(peers)) == 1, peers
