"""The Vercel AI SDK drives stepline: ``ai`` 7, ``@ai-sdk/openai`` 4, ``@ai-sdk/open-responses`` 1.

Each test registers a script on the scripted upstream, runs
``tests/clients/ai_sdk/run.mjs`` under Node with one scenario, and checks what the
application saw (the JSON the script prints) and what the upstream received.

With ``store`` on (its default) ``@ai-sdk/openai`` sends the earlier step's
reasoning and text back as ``item_reference`` items, so stepline has to resolve
them from what it stored; it reads reasoning only from a reasoning item's
``summary`` (``response.reasoning_summary_text.delta`` when streaming).
``@ai-sdk/open-responses`` resends every item in full and reads reasoning from
``content`` (``response.reasoning_text.delta``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest

from tests._clients import CLIENTS, client_package, node_bin
from tests.e2e.conftest import Stack

SCRIPT = CLIENTS / "ai_sdk" / "run.mjs"
PROVIDERS = ["openai", "open-responses"]
#: the whole node run (about a second when all is well); run.mjs bounds each SDK call at 10 s
RUN_TIMEOUT = 30.0

#: the prompt run.mjs sends in the tool-loop scenarios
PROMPT = "What time is it in Lima?"
REASONING = "The user wants the time in Lima, so I ask the clock."
LEAD_IN = "Let me check the clock."
ANSWER = "It is 09:30 in Lima."
TOOL_TURNS: list[dict[str, Any]] = [
    {
        "reasoning": REASONING,
        "content": LEAD_IN,
        "tool_calls": [{"name": "local_time", "arguments": {"city": "Lima"}, "id": "call_lima"}],
    },
    {"content": ANSWER},
]
#: what the SDK's local_time tool returns, as the upstream sees it
TOOL_OUTPUT = '{"city":"Lima","time":"09:30"}'


#: the fullStream part types of the tool loop, repeats collapsed; @ai-sdk/openai also
#: streams the call's arguments (tool-input-*), open-responses only the whole call
_STEP_ONE = ["start-step", "reasoning-start", "reasoning-delta", "reasoning-end"]
_TEXT = ["text-start", "text-delta", "text-end"]
_STEP_TWO = ["start-step", *_TEXT, "finish-step"]
STREAM_PARTS = {
    "openai": [
        "start",
        *_STEP_ONE,
        *_TEXT,
        *("tool-input-start", "tool-input-delta", "tool-input-end"),
        *("tool-call", "tool-result", "finish-step"),
        *_STEP_TWO,
        "finish",
    ],
    "open-responses": [
        "start",
        *_STEP_ONE,
        *_TEXT,
        *("tool-call", "tool-result", "finish-step"),
        *_STEP_TWO,
        "finish",
    ],
}


def _runs(kinds: list[str]) -> list[str]:
    return [kind for index, kind in enumerate(kinds) if index == 0 or kinds[index - 1] != kind]


async def run_sdk(
    stack: Stack, model: str, scenario: str, provider: str, *, reasoning: str = "summary"
) -> dict[str, Any]:
    """Run one scenario of run.mjs against ``stack``; fail with the SDK's error if it raised."""
    node = node_bin()
    for package in ("ai", "@ai-sdk/openai", "@ai-sdk/open-responses"):
        client_package(package)
    process = await asyncio.create_subprocess_exec(
        *(node, str(SCRIPT), "--base-url", stack.url, "--model", model),
        *("--provider", provider, "--scenario", scenario, "--reasoning", reasoning),
        cwd=CLIENTS,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        pytest.fail(f"run.mjs {scenario} ({provider}) did not finish in {RUN_TIMEOUT:g} s")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines = stdout.decode().strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        pytest.fail(f"run.mjs exited {process.returncode} without JSON:\n{stderr.decode()}")
    if "error" in result:
        pytest.fail(_sdk_failure(result), pytrace=False)
    assert process.returncode == 0, stderr.decode()
    return result


def _sdk_failure(result: dict[str, Any]) -> str:
    error = result["error"]
    lines = [f"the AI SDK raised {error.get('name')}: {error.get('message')}"]
    if error.get("statusCode") is not None:
        lines.append(f"HTTP {error['statusCode']}: {error.get('responseBody')}")
    if result["http"]:
        last = result["http"][-1]
        sent = orjson.dumps(last.get("body", {}).get("input")).decode()
        lines.append(f"input of the last request (answered {last['status']}): {sent}")
    for number, step in enumerate(result["endedSteps"], 1):
        lines.append(f"step {number} ended: {orjson.dumps(step).decode()}")
    if "partTypes" in result:
        lines.append(f"stream parts: {_runs(result['partTypes'])}")
    return "\n".join(lines)


def _sent(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The bodies of the SDK's POST /v1/responses requests, in order."""
    return [x["body"] for x in result["http"] if x["url"].endswith("/v1/responses")]


def _input_kinds(body: dict[str, Any]) -> list[str]:
    # @ai-sdk/openai leaves `type` out of plain role messages
    return [item.get("type", "message") for item in body["input"]]


async def _output_ids(stack: Stack, response_id: str) -> dict[str, str]:
    """The stored response's output item ids by type (the first of each)."""
    stored = (await stack.http.get(f"/v1/responses/{response_id}")).json()
    ids: dict[str, str] = {}
    for item in stored["output"]:
        ids.setdefault(item["type"], item["id"])
    return ids


def _assert_tool_loop_upstream(stack: Stack, model: str) -> None:
    """The upstream's second call carries the step-1 text and the tool result by call id."""
    requests = stack.model.requests(model)
    assert len(requests) == 2
    messages = requests[1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assistant = messages[1]
    assert assistant["content"] == LEAD_IN
    assert [(c["id"], c["function"]["name"]) for c in assistant["tool_calls"]] == [
        ("call_lima", "local_time")
    ]
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Lima"}
    assert messages[2] == {"role": "tool", "tool_call_id": "call_lima", "content": TOOL_OUTPUT}


def _assert_tool_loop_result(result: dict[str, Any]) -> None:
    assert result["text"] == ANSWER
    assert result["finishReason"] == "stop"
    assert result["executed"] == [{"city": "Lima"}]
    first, second = result["steps"]
    assert first["toolCalls"] == [
        {"toolCallId": "call_lima", "toolName": "local_time", "input": {"city": "Lima"}}
    ]
    assert first["toolResults"] == [
        {
            "toolCallId": "call_lima",
            "toolName": "local_time",
            "output": {"city": "Lima", "time": "09:30"},
        }
    ]
    assert first["finishReason"] == "tool-calls"
    assert first["text"] == LEAD_IN
    assert first["reasoningText"] == REASONING
    assert second["text"] == ANSWER
    assert second["toolCalls"] == []


async def _assert_sent_tool_loop(stack: Stack, result: dict[str, Any], provider: str) -> None:
    """What the SDK sent: reasoning asked for, and step 2 built from step 1's output."""
    first, second = _sent(result)
    assert first["reasoning"] == {"summary": "auto"}
    assert first["tools"][0]["name"] == "local_time"
    if provider == "openai":
        ids = await _output_ids(stack, result["steps"][0]["responseId"])
        assert second["input"] == [
            {"role": "user", "content": [{"type": "input_text", "text": PROMPT}]},
            {"type": "item_reference", "id": ids["reasoning"]},
            {"type": "item_reference", "id": ids["message"]},
            {
                "type": "function_call",
                "call_id": "call_lima",
                "name": "local_time",
                "arguments": '{"city":"Lima"}',
            },
            {"type": "function_call_output", "call_id": "call_lima", "output": TOOL_OUTPUT},
        ]
    else:
        assert _input_kinds(second) == [
            "message",
            "message",
            "function_call",
            "function_call_output",
        ]
        assert second["input"][1]["content"] == [{"type": "output_text", "text": LEAD_IN}]
        assert second["input"][3] == {
            "type": "function_call_output",
            "call_id": "call_lima",
            "output": TOOL_OUTPUT,
        }


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_generate_text_runs_a_client_tool_loop(stack: Stack, provider: str) -> None:
    model = stack.script("ai-sdk-generate", TOOL_TURNS)

    result = await run_sdk(stack, model, "generate", provider)

    _assert_tool_loop_result(result)
    await _assert_sent_tool_loop(stack, result, provider)
    _assert_tool_loop_upstream(stack, model)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_stream_text_streams_reasoning_text_and_the_tool_loop(
    stack: Stack, provider: str
) -> None:
    model = stack.script("ai-sdk-stream", TOOL_TURNS)

    result = await run_sdk(stack, model, "stream", provider)

    _assert_tool_loop_result(result)
    assert result["reasoningDeltas"] == REASONING
    assert result["textDeltas"] == LEAD_IN + ANSWER
    # runs of one part type count once: how many deltas arrive is the model's business
    assert _runs(result["partTypes"]) == STREAM_PARTS[provider]
    await _assert_sent_tool_loop(stack, result, provider)
    _assert_tool_loop_upstream(stack, model)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_chat_feeds_response_messages_into_the_next_call(stack: Stack, provider: str) -> None:
    model = stack.script(
        "ai-sdk-chat",
        [
            {"reasoning": "Greet Ada by name.", "content": "Hello Ada."},
            {"content": "Your name is Ada."},
        ],
    )

    result = await run_sdk(stack, model, "chat", provider)

    first, second = result["turns"]
    assert first["text"] == "Hello Ada."
    assert first["reasoningText"] == "Greet Ada by name."
    assert second["text"] == "Your name is Ada."
    assert [m["role"] for m in first["responseMessages"]] == ["assistant"]
    sent = _sent(result)[1]["input"]
    if provider == "openai":
        ids = await _output_ids(stack, first["steps"][0]["responseId"])
        assert sent[1:3] == [
            {"type": "item_reference", "id": ids["reasoning"]},
            {"type": "item_reference", "id": ids["message"]},
        ]
    assert _input_kinds({"input": [sent[0], sent[-1]]}) == ["message", "message"]
    requests = stack.model.requests(model)
    assert len(requests) == 2
    assert requests[1]["messages"] == [
        {"role": "user", "content": "Hi, I am Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]


@pytest.mark.parametrize("reasoning", ["none", "summary-only"])
async def test_openai_provider_without_forced_reasoning_shows_no_reasoning(
    stack: Stack, reasoning: str
) -> None:
    """On a model id it does not know, @ai-sdk/openai sends ``reasoning`` only with
    ``forceReasoning``; ``reasoningSummary`` alone is dropped with a warning. Either
    way it reads no reasoning (``summary`` stays empty), and the loop still runs."""
    model = stack.script("ai-sdk-plain", TOOL_TURNS)

    result = await run_sdk(stack, model, "generate", "openai", reasoning=reasoning)

    assert result["text"] == ANSWER
    assert result["executed"] == [{"city": "Lima"}]
    first, second = _sent(result)
    assert "reasoning" not in first
    assert not result["steps"][0]["reasoningText"]
    dropped = {"type": "unsupported", "feature": "reasoningSummary"}
    warned = [{k: w.get(k) for k in dropped} for w in result["steps"][0]["warnings"]]
    assert warned == ([dropped] if reasoning == "summary-only" else [])
    assert _input_kinds(second) == [
        "message",
        "item_reference",
        "item_reference",
        "function_call",
        "function_call_output",
    ]
    _assert_tool_loop_upstream(stack, model)
