"""Limits: per-key rate and concurrency, body and input caps, tool output size, and
the rule that nothing in a request decides where the server sends a call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepline._config import RateConfig
from stepline._server.limits import TokenBucket
from stepline._tools.http import truncate_output
from stepline.scripted import serve_app
from tests.gateway.conftest import GatewayFactory

pytestmark = pytest.mark.timeout(30)


async def test_a_key_over_its_rate_gets_429_with_retry_after(
    gateway_factory: GatewayFactory,
) -> None:
    # two at once, then one every 100 s: the third request comes far too soon
    rate = {"requests_per_second": 0.01, "burst": 2}
    gw = await gateway_factory(keys={"slow": {"rate": rate}, "free": {}})
    for _ in range(2):
        assert (await gw.http.get("/v1/models", headers=gw.auth("slow"))).status_code == 200
    refused = await gw.http.get("/v1/models", headers=gw.auth("slow"))
    assert refused.status_code == 429
    assert 90 <= int(refused.headers["retry-after"]) <= 100
    assert refused.headers["x-request-id"]
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert "slow" in error["message"]
    # the SDK sees a RateLimitError; another key is not affected
    with pytest.raises(openai.RateLimitError):
        await gw.client("slow").responses.create(model="beta", input="hi")
    for _ in range(5):
        assert (await gw.http.get("/v1/models", headers=gw.auth("free"))).status_code == 200


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket.full(RateConfig(requests_per_second=2, burst=3), now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0  # one token came back in half a second
    assert bucket.take(0.5) == pytest.approx(0.5)
    assert bucket.take(100.0) == 0.0
    assert bucket.tokens == pytest.approx(2.0)  # never more than the burst
    # without a burst the bucket holds one second's worth
    assert RateConfig(requests_per_second=5).capacity == 5
    assert RateConfig(requests_per_second=0.1).capacity == 1


async def test_a_key_at_its_concurrency_limit_gets_429_until_a_response_ends(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(keys={"single": {"max_concurrent": 1}})
    gw.script("hanger", [{"tool_calls": [{"name": "hang", "arguments": {}}]}, {"content": "ok"}])
    running = await gw.http.post(
        "/v1/responses",
        headers=gw.auth("single"),
        json={"model": "hanger", "input": "go", "background": True},
    )
    response_id = running.json()["id"]
    await gw.tools.entered.wait()
    loop_task = gw.app.state.runner.tasks[response_id]

    for path, body in [
        ("/v1/responses", {"model": "beta", "input": "hi"}),
        ("/v1/chat/completions", {"model": "beta", "messages": [{"role": "user", "content": "x"}]}),
    ]:
        refused = await gw.http.post(path, headers=gw.auth("single"), json=body)
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "1"
    # reading is not limited
    assert (await gw.http.get(f"/v1/responses/{response_id}", headers=gw.auth("single"))).is_success

    gw.tools.release.set()
    # the slot is given back when the loop's task is done
    await loop_task
    assert gw.app.state.gateway.limits.running("single") == 0
    again = await gw.http.post(
        "/v1/responses", headers=gw.auth("single"), json={"model": "beta", "input": "hi"}
    )
    assert again.status_code == 200, again.text


async def test_a_body_over_the_cap_is_refused_with_413(gateway_factory: GatewayFactory) -> None:
    def small(settings: dict[str, Any]) -> None:
        settings["limits"] = {"max_request_bytes": 2048}

    gw = await gateway_factory(change=small)
    big = {"model": "beta", "input": "x" * 4000}
    refused = await gw.http.post("/v1/responses", json=big)
    assert refused.status_code == 413
    assert refused.json()["error"]["code"] == "request_too_large"
    assert refused.headers["x-request-id"]

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        yield b'{"model": "beta", "input": "'
        for _ in range(10):
            yield b"y" * 400
        yield b'"}'

    streamed = await gw.http.post(
        "/v1/chat/completions", content=chunked(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    assert streamed.json()["error"]["code"] == "request_too_large"
    assert (await gw.http.post("/v1/responses", json={"model": "beta", "input": "hi"})).is_success


async def test_too_many_input_items_is_a_400(gateway_factory: GatewayFactory) -> None:
    def few(settings: dict[str, Any]) -> None:
        settings["limits"] = {"max_input_items": 3}

    gw = await gateway_factory(change=few)
    items = [{"role": "user", "content": f"message {n}"} for n in range(4)]
    refused = await gw.http.post("/v1/responses", json={"model": "beta", "input": items})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "input"
    chat = await gw.http.post("/v1/chat/completions", json={"model": "beta", "messages": items})
    assert chat.status_code == 400
    assert chat.json()["error"]["param"] == "messages"
    fits = await gw.http.post("/v1/responses", json={"model": "beta", "input": items[:3]})
    assert fits.status_code == 200


def test_truncate_output_says_how_much_is_missing() -> None:
    assert truncate_output("short", 10) == "short"
    assert truncate_output("abcdefghij", 10) == "abcdefghij"
    assert truncate_output("abcdefghijkl", 10) == "abcdefghij\n[truncated: 2 more characters]"
    assert truncate_output("abc", None) == "abc"


async def test_a_long_tool_output_reaches_the_model_truncated(
    gateway_factory: GatewayFactory,
) -> None:
    def cap(settings: dict[str, Any]) -> None:
        settings["limits"] = {"max_tool_output_chars": 100}
        settings["tools"]["weather"]["max_output_chars"] = 20  # a tool may set its own

    gw = await gateway_factory(change=cap)
    gw.script(
        "caller",
        [
            {
                "tool_calls": [
                    {"name": "long", "arguments": {}},
                    {"name": "weather", "arguments": {"city": "Paris"}},
                ]
            },
            {"content": "done"},
        ],
    )
    response = await gw.client(None).responses.create(model="caller", input="go")
    outputs = {item.name: item.output for item in response.output if item.type == "mcp_call"}
    assert outputs["long"] == "x" * 100 + "\n[truncated: 400 more characters]"
    assert outputs["weather"] is not None
    assert outputs["weather"].startswith('{"city":"Paris","con')
    assert outputs["weather"].endswith("\n[truncated: 17 more characters]")
    tool_messages = [
        message["content"]
        for message in gw.model.requests("caller")[-1]["messages"]
        if message["role"] == "tool"
    ]
    assert tool_messages == [outputs["long"], outputs["weather"]]


async def test_nothing_in_a_request_makes_the_server_call_another_address(
    gateway_factory: GatewayFactory,
) -> None:
    """A canary server is named everywhere a request can carry a URL; it is never called,
    and every call the server makes goes to a configured upstream or tool URL."""
    canary_hits: list[str] = []

    async def canary(request: Request) -> Response:
        canary_hits.append(f"{request.method} {request.url.path}")
        return Response("{}", media_type="application/json")

    canary_app = Starlette(
        routes=[Route("/{path:path}", canary, methods=["GET", "POST", "PUT", "DELETE"])]
    )
    async with serve_app(canary_app) as canary_url:
        gw = await gateway_factory()
        gw.script(
            "obedient",
            [
                {
                    "tool_calls": [
                        {"name": "weather", "arguments": {"city": f"{canary_url}/city"}},
                        {"name": "stock", "arguments": {"url": canary_url, "base_url": canary_url}},
                    ]
                },
                {"content": f"see {canary_url}"},
            ],
        )
        body = {
            "model": "obedient",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": f"fetch {canary_url}/secret"},
                        {"type": "input_image", "image_url": f"{canary_url}/image.png"},
                    ],
                }
            ],
            "instructions": f"Always call {canary_url}",
            "tools": [
                {
                    "type": "function",
                    "name": "client_tool",
                    "description": canary_url,
                    "parameters": {"type": "object", "$ref": f"{canary_url}/schema.json"},
                    "url": canary_url,
                    "server_url": canary_url,
                }
            ],
            "metadata": {"callback": canary_url},
            "base_url": canary_url,
            "upstream": canary_url,
            "server_url": canary_url,
            "webhook_url": canary_url,
            "user": canary_url,
        }
        plain = await gw.http.post("/v1/responses", json=body)
        assert plain.status_code == 200, plain.text
        assert plain.json()["status"] == "completed"
        mcp = await gw.http.post(
            "/v1/responses",
            json={
                **body,
                "tools": [{"type": "mcp", "server_label": "x", "server_url": canary_url}],
            },
        )
        assert mcp.status_code == 400
        as_model = await gw.http.post("/v1/responses", json={**body, "model": canary_url})
        assert as_model.status_code == 200
        chat = await gw.http.post(
            "/v1/chat/completions",
            json={
                "model": canary_url,
                "messages": [{"role": "user", "content": canary_url}],
                "base_url": canary_url,
            },
        )
        assert chat.status_code == 200
    assert canary_hits == []
    # the tools were called at their configured URLs, with the model's arguments
    assert gw.tools.calls["weather"] == 1
    assert gw.tools.calls["stock"] == 1
    # a model name that looks like a URL is only a name, forwarded to the upstream
    names = {request.get("model") for request in gw.model.requests(canary_url)}
    assert names == {canary_url}
