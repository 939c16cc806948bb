"""MCP servers as tool sources, end to end: a real MCP server, stepline, the official SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from stepline._config import Settings
from stepline._server.app import create_app
from stepline.scripted import Script, ScriptedModel, create_scripted_app, serve_app
from tests.e2e.conftest import read_sse
from tests.mcp._servers import Recorder, build_server

EVENTS = TypeAdapter(ResponseStreamEvent)


class McpStack:
    def __init__(self, url: str, model: ScriptedModel, recorder: Recorder, mcp_url: str) -> None:
        self.client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="test", max_retries=0)
        self.http = httpx.AsyncClient(base_url=url, timeout=30)
        self.model = model
        self.recorder = recorder
        self.mcp_url = mcp_url

    def script(self, name: str, turns: list[dict[str, Any]]) -> None:
        self.model.register(name, Script.from_dict({"turns": turns}))


async def _stack(tmp_path: Path, approval: str) -> AsyncIterator[McpStack]:
    recorder = Recorder()
    model = ScriptedModel(demo_token_delay=0)
    async with AsyncExitStack() as exits:
        mcp_base = await exits.enter_async_context(
            serve_app(build_server(recorder).streamable_http_app())
        )
        mcp_url = f"{mcp_base}/mcp"
        upstream = await exits.enter_async_context(serve_app(create_scripted_app(model)))
        settings = Settings.model_validate(
            {
                "database_url": f"sqlite:///{tmp_path}/mcp.db",
                "upstreams": {"scripted": {"base_url": f"{upstream}/v1", "max_retries": 0}},
                "default_model": {"upstream": "scripted", "tools": ["calc"]},
                "mcp": {
                    "calc": {
                        "url": mcp_url,
                        "allowed_tools": ["add", "echo", "fail"],
                        "require_approval": approval,
                    }
                },
                "mcp_allowed_urls": [f"{mcp_base}/*"],
            }
        )
        url = await exits.enter_async_context(serve_app(create_app(settings)))
        stack = McpStack(url, model, recorder, mcp_url)
        exits.push_async_callback(stack.client.close)
        exits.push_async_callback(stack.http.aclose)
        yield stack


@pytest.fixture
async def mcp_stack(tmp_path: Path) -> AsyncIterator[McpStack]:
    async for stack in _stack(tmp_path, "never"):
        yield stack


@pytest.fixture
async def approving_stack(tmp_path: Path) -> AsyncIterator[McpStack]:
    async for stack in _stack(tmp_path, "always"):
        yield stack


async def test_mcp_tools_are_listed_and_called_in_parallel_in_a_loop(mcp_stack: McpStack) -> None:
    mcp_stack.script(
        "mcp",
        [
            {
                "tool_calls": [
                    {"name": "calc__add", "arguments": {"a": 2, "b": 3}},
                    {"name": "calc__echo", "arguments": {"text": "hi"}},
                ]
            },
            {"content": "Two plus three is five."},
        ],
    )

    async with mcp_stack.http.stream(
        "POST", "/v1/responses", json={"model": "mcp", "input": "go", "stream": True}
    ) as reply:
        events = await read_sse(reply)

    for event in events:
        EVENTS.validate_python(event)
    final = events[-1]["response"]
    assert [(i["type"], i.get("name"), i.get("status")) for i in final["output"]] == [
        ("mcp_list_tools", None, None),
        ("mcp_call", "add", "completed"),
        ("mcp_call", "echo", "completed"),
        ("message", None, "completed"),
    ]
    listing, add, echo, _ = final["output"]
    assert listing["server_label"] == add["server_label"] == "calc"
    assert [tool["name"] for tool in listing["tools"]] == ["add", "echo", "fail"]
    listed_add = listing["tools"][0]
    assert (listed_add["description"], listed_add["annotations"]) == ("Add two integers", None)
    assert listed_add["input_schema"]["type"] == "object"
    assert set(listed_add["input_schema"]["properties"]) == {"a", "b"}
    assert (add["output"], echo["output"]) == ("5", "hi")
    listing_events = [e["type"] for e in events if "mcp_list_tools" in e["type"]]
    assert listing_events == [
        "response.mcp_list_tools.in_progress",
        "response.mcp_list_tools.completed",
    ]
    assert mcp_stack.recorder.calls == {"add": 1, "echo": 1}
    offered = [t["function"]["name"] for t in mcp_stack.model.requests("mcp")[0]["tools"]]
    assert offered == ["calc__add", "calc__echo", "calc__fail"]


async def test_an_mcp_tool_error_goes_back_to_the_model(mcp_stack: McpStack) -> None:
    mcp_stack.script(
        "mcp-fail",
        [
            {"tool_calls": [{"name": "calc__fail", "arguments": {}}]},
            {"content": "It failed, sorry."},
        ],
    )

    response = await mcp_stack.client.responses.create(model="mcp-fail", input="go")

    failed = response.output[1]
    assert failed.type == "mcp_call" and failed.status == "failed"
    assert failed.error is not None
    sent = mcp_stack.model.requests("mcp-fail")[1]["messages"][-1]
    assert sent["role"] == "tool"
    assert sent["content"].startswith("Error: ")
    assert "the fail tool always fails" in sent["content"]
    assert response.output_text == "It failed, sorry."


async def test_approval_round_trip_through_the_sdk(approving_stack: McpStack) -> None:
    stack = approving_stack
    stack.script(
        "approve",
        [
            {"tool_calls": [{"name": "calc__add", "arguments": {"a": 20, "b": 22}}]},
            {"content": "The answer is 42."},
        ],
    )

    first = await stack.client.responses.create(model="approve", input="add them")

    assert [item.type for item in first.output] == ["mcp_list_tools", "mcp_approval_request"]
    request = first.output[1]
    assert request.type == "mcp_approval_request"
    assert (request.name, request.server_label, request.arguments) == (
        "add",
        "calc",
        '{"a":20,"b":22}',
    )
    assert stack.recorder.calls == {}

    second = await stack.client.responses.create(
        model="approve",
        previous_response_id=first.id,
        input=[
            {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True}
        ],
    )

    assert second.output[0].type == "mcp_call"
    assert (second.output[0].name, second.output[0].output) == ("add", "42")
    assert second.output_text == "The answer is 42."
    assert stack.recorder.calls == {"add": 1}
    messages = stack.model.requests("approve")[1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[2] == {
        "role": "tool",
        "tool_call_id": messages[1]["tool_calls"][0]["id"],
        "content": "42",
    }


async def test_a_refused_call_goes_back_to_the_model_as_refused(
    approving_stack: McpStack,
) -> None:
    stack = approving_stack
    stack.script(
        "refuse",
        [
            {"tool_calls": [{"name": "calc__add", "arguments": {"a": 1, "b": 1}}]},
            {"content": "Understood, I will not add."},
        ],
    )
    first = await stack.client.responses.create(model="refuse", input="add")
    approval_id = first.output[1].id
    assert approval_id is not None

    second = await stack.client.responses.create(
        model="refuse",
        previous_response_id=first.id,
        input=[
            {
                "type": "mcp_approval_response",
                "approval_request_id": approval_id,
                "approve": False,
                "reason": "not now",
            }
        ],
    )

    assert second.output_text == "Understood, I will not add."
    assert stack.recorder.calls == {}
    last = stack.model.requests("refuse")[1]["messages"][-1]
    assert last["content"] == "The user refused this tool call. Reason: not now"


async def test_an_unknown_approval_id_is_a_400(approving_stack: McpStack) -> None:
    stack = approving_stack
    stack.script("unknown", [{"content": "hi"}])
    first = await stack.client.responses.create(model="unknown", input="hi")

    reply = await stack.http.post(
        "/v1/responses",
        json={
            "model": "unknown",
            "previous_response_id": first.id,
            "input": [
                {
                    "type": "mcp_approval_response",
                    "approval_request_id": "mcpr_nope",
                    "approve": True,
                }
            ],
        },
    )

    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "input[0].approval_request_id"


async def test_request_level_mcp_server_on_the_allow_list_is_used(mcp_stack: McpStack) -> None:
    mcp_stack.script(
        "own-mcp",
        [
            {"tool_calls": [{"name": "mine__echo", "arguments": {"text": "from the request"}}]},
            {"content": "echoed"},
        ],
    )

    response = await mcp_stack.client.responses.create(
        model="own-mcp",
        input="go",
        tools=[
            {
                "type": "mcp",
                "server_label": "mine",
                "server_url": mcp_stack.mcp_url,
                "require_approval": "never",
                "allowed_tools": ["echo"],
                "headers": {"Authorization": "Bearer request-secret"},
            }
        ],
    )

    call = next(
        item for item in response.output if item.type == "mcp_call" and item.server_label == "mine"
    )
    assert (call.name, call.output) == ("echo", "from the request")
    assert response.tools[0].model_dump(exclude_none=True).get("headers") is None
    assert "request-secret" not in response.model_dump_json()
    assert any(
        h.get("authorization") == "Bearer request-secret" for h in mcp_stack.recorder.headers
    )


async def test_request_level_mcp_server_off_the_allow_list_is_refused(
    mcp_stack: McpStack,
) -> None:
    reply = await mcp_stack.http.post(
        "/v1/responses",
        json={
            "model": "m",
            "input": "go",
            "tools": [
                {"type": "mcp", "server_label": "evil", "server_url": "http://169.254.169.254/mcp"}
            ],
        },
    )

    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "tools[0].server_url"
    assert "http://169.254.169.254/mcp" in error["message"]
