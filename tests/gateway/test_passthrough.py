"""``POST /v1/chat/completions``: bytes through unchanged, with keys, mapping and limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from stepline.scripted import serve_app
from tests.gateway.conftest import GatewayFactory

pytestmark = pytest.mark.timeout(30)

#: odd spacing and key order that a decode and re-encode would not keep
REPLY = b'{ "id":"chatcmpl-raw" ,"object": "chat.completion",\n "choices":[{"index":0,\
"message":{"role":"assistant","content":"caf\\u00e9"},"finish_reason":"stop"}], "x":1.50}'
STREAM = [
    b'data: {"id":"c1", "choices":[{"index":0,"delta":{"content":"he"}}]}\n\n',
    b": keep-alive\n\n",
    b'data: {"id":"c1",  "choices":[{"index":0,"delta":{"content":"llo"},"finish_reason":"stop"}]}'
    b"\n\n",
    b"data: [DONE]\n\n",
]


class RawUpstream:
    """An upstream that answers fixed bytes and keeps the raw request bodies and headers."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []

    def app(self) -> Starlette:
        async def completions(request: Request) -> Response:
            body = await request.body()
            self.bodies.append(body)
            self.headers.append(dict(request.headers))
            if b'"stream":true' in body.replace(b" ", b""):

                async def chunks() -> AsyncIterator[bytes]:
                    for chunk in STREAM:
                        yield chunk
                        await asyncio.sleep(0)

                return StreamingResponse(chunks(), media_type="text/event-stream")
            return Response(REPLY, media_type="application/json")

        return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


async def _raw_stack(gateway_factory: GatewayFactory, raw: RawUpstream, url: str) -> Any:
    def add(settings: dict[str, Any]) -> None:
        settings["upstreams"]["raw"] = {"base_url": f"{url}/v1", "api_key": "upstream-key"}
        settings["models"] += [
            {"name": "same", "upstream": "raw"},
            {"name": "alias", "upstream": "raw", "upstream_model": "real-model"},
        ]

    return await gateway_factory(keys={"client": {}}, change=add)


async def test_reply_bytes_pass_through_unchanged(gateway_factory: GatewayFactory) -> None:
    raw = RawUpstream()
    async with serve_app(raw.app()) as url:
        gw = await _raw_stack(gateway_factory, raw, url)
        sent = b'{"model":"same",  "messages":[{"role":"user","content":"hi"}], "n": 1, "foo": {}}'
        reply = await gw.http.post(
            "/v1/chat/completions",
            content=sent,
            headers={**gw.auth("client"), "Content-Type": "application/json"},
        )
        assert reply.status_code == 200
        assert reply.content == REPLY
        assert reply.headers["content-type"] == "application/json"
        assert reply.headers["x-request-id"]
        # the same model name: the request's bytes went out untouched too
        assert raw.bodies[-1] == sent
        # with the upstream's key, never the client's
        assert raw.headers[-1]["authorization"] == "Bearer upstream-key"
        assert gw.tokens["client"] not in str(raw.headers)

        async with gw.http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "same", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            headers=gw.auth("client"),
        ) as streamed:
            assert streamed.headers["content-type"].startswith("text/event-stream")
            received = b"".join([chunk async for chunk in streamed.aiter_raw()])
        assert received == b"".join(STREAM)


async def test_the_model_name_is_mapped_and_nothing_else_changes(
    gateway_factory: GatewayFactory,
) -> None:
    raw = RawUpstream()
    async with serve_app(raw.app()) as url:
        gw = await _raw_stack(gateway_factory, raw, url)
        body = {
            "model": "alias",
            "messages": [{"role": "user", "content": "hi"}],
            "logit_bias": {"42": -100},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        }
        reply = await gw.http.post("/v1/chat/completions", json=body, headers=gw.auth("client"))
        assert reply.content == REPLY
        assert orjson.loads(raw.bodies[-1]) == {**body, "model": "real-model"}


async def test_the_openai_sdk_talks_chat_completions_through_stepline(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(keys={"client": {}})
    gw.script("chatty", [{"content": "hello there friend", "chunk_size": 1}], repeat_last=True)
    client = gw.client("client")
    completion = await client.chat.completions.create(
        model="chatty", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "hello there friend"
    stream = await client.chat.completions.create(
        model="chatty",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
    assert "".join(piece or "" for piece in pieces) == "hello there friend"
    # nothing of it was stored as a response
    assert (await gw.http.get("/v1/models", headers=gw.auth("client"))).status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b'{"messages": []}', "model"),
        (b'{"model": "beta"}', "messages"),
    ],
)
async def test_a_bad_body_is_a_400(
    gateway_factory: GatewayFactory, body: bytes, param: str
) -> None:
    gw = await gateway_factory()
    reply = await gw.http.post(
        "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == param


async def test_an_unroutable_model_is_a_400(gateway_factory: GatewayFactory) -> None:
    def no_catch_all(settings: dict[str, Any]) -> None:
        settings["default_model"] = None

    gw = await gateway_factory(change=no_catch_all)
    reply = await gw.http.post(
        "/v1/chat/completions",
        json={"model": "nowhere", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "model_not_found"
