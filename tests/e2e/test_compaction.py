"""Compaction end to end: ``/v1/responses/compact``, compaction items as input, in-loop
compaction with ``context_management``, and ``truncation``, against real processes.

The scripted model writes the summaries; tests read what it was asked
(``stack.model.requests``) to check what the model saw before and after.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from agents import Agent, OpenAIResponsesModel, Runner, SQLiteSession, set_tracing_disabled
from agents.memory import OpenAIResponsesCompactionSession
from openai.types.responses import EasyInputMessageParam
from websockets.asyncio.client import connect

from stepline._chat.summary import SUMMARY_INSTRUCTIONS, SUMMARY_PREFIX
from stepline._protocol.sealing import Sealer
from stepline.scripted import Script
from tests.e2e.conftest import Stack, open_store_for, read_sse, serve_stack

SUMMARY = "The launch is on Tuesday and support hears first."
USER_TEXT = "We launch on Tuesday; tell support first."
USER: EasyInputMessageParam = {"type": "message", "role": "user", "content": USER_TEXT}
ASSISTANT: EasyInputMessageParam = {
    "type": "message",
    "role": "assistant",
    "content": "Understood: Tuesday, support first.",
}


def _user_message(content: str) -> EasyInputMessageParam:
    return {"role": "user", "content": content}


def _summary_seen(summary: str = SUMMARY) -> EasyInputMessageParam:
    return _user_message(SUMMARY_PREFIX + summary)


def _dumped(items: list[Any]) -> list[dict[str, Any]]:
    return [item.model_dump(exclude_none=True, warnings=False) for item in items]


async def test_compact_returns_the_user_messages_and_a_sealed_summary_the_model_wrote(
    stack: Stack,
) -> None:
    stack.script(
        "compactor", [{"content": SUMMARY, "usage": {"prompt_tokens": 40, "completion_tokens": 9}}]
    )

    compacted = await stack.client.responses.compact(
        model="compactor", input=[USER, ASSISTANT], prompt_cache_key="cache-1"
    )

    assert compacted.object == "response.compaction"
    assert [item.type for item in compacted.output] == ["message", "compaction"]
    user, item = _dumped(compacted.output)
    assert user["role"] == "user" and user["status"] == "completed"
    assert user["content"] == [{"type": "input_text", "text": USER["content"]}]
    assert item["id"].startswith("cmp_") and set(item) == {"id", "type", "encrypted_content"}
    assert (
        item["encrypted_content"].startswith("sl1.") and "Tuesday" not in item["encrypted_content"]
    )
    assert compacted.usage.input_tokens == 40 and compacted.usage.output_tokens == 9
    assert compacted.usage.total_tokens == 49
    (asked,) = stack.model.requests("compactor")
    assert asked["prompt_cache_key"] == "cache-1"
    assert asked["messages"] == [
        {"role": "system", "content": SUMMARY_INSTRUCTIONS},
        {
            "role": "user",
            "content": "The conversation to summarise:\n\n"
            f"[user]\n{USER['content']}\n\n[assistant]\n{ASSISTANT['content']}",
        },
    ]


async def test_a_compacted_window_resent_with_store_false_gives_the_model_the_summary(
    stack: Stack,
) -> None:
    stack.script("compactor", [{"content": SUMMARY}])
    stack.script("after", [{"content": "Tuesday it is."}])
    compacted = await stack.client.responses.compact(model="compactor", input=[USER, ASSISTANT])

    response = await stack.client.responses.create(
        model="after",
        store=False,
        input=[*_dumped(compacted.output), {"role": "user", "content": "When do we launch?"}],  # type: ignore[list-item]
    )

    assert response.status == "completed"
    assert stack.model.requests("after")[-1]["messages"] == [
        _user_message(USER_TEXT),
        _summary_seen(),
        _user_message("When do we launch?"),
    ]


async def test_a_resent_history_with_a_compaction_item_drops_what_it_summarised(
    stack: Stack,
) -> None:
    stack.script("compactor", [{"content": SUMMARY}])
    stack.script("after", [{"content": "Tuesday."}])
    compacted = await stack.client.responses.compact(model="compactor", input=[USER, ASSISTANT])
    item = _dumped(compacted.output)[-1]

    await stack.client.responses.create(
        model="after",
        store=False,
        input=[USER, ASSISTANT, item, {"role": "user", "content": "When?"}],  # type: ignore[list-item]
    )

    assert stack.model.requests("after")[-1]["messages"] == [
        _user_message(USER_TEXT),
        _summary_seen(),
        _user_message("When?"),
    ]


async def test_compact_by_previous_response_id_and_continue_from_the_item(stack: Stack) -> None:
    stack.script("chat", [{"content": "Noted, the code word is slate."}, {"content": "slate"}])
    stack.script("compactor", [{"content": "The code word is slate."}])
    first = await stack.client.responses.create(model="chat", input="Remember the code word slate.")

    compacted = await stack.client.responses.compact(
        model="compactor", previous_response_id=first.id
    )

    assert [item.type for item in compacted.output] == ["message", "compaction"]
    transcript = stack.model.requests("compactor")[-1]["messages"][1]["content"]
    assert transcript == (
        "The conversation to summarise:\n\n[user]\nRemember the code word slate.\n\n"
        "[assistant]\nNoted, the code word is slate."
    )
    # the item travels into a stored response, and on through previous_response_id
    stored = await stack.client.responses.create(
        model="chat",
        input=[_dumped(compacted.output)[-1], {"role": "user", "content": "Say nothing."}],  # type: ignore[list-item]
    )
    stack.script("later", [{"content": "slate"}])
    await stack.client.responses.create(
        model="later", previous_response_id=stored.id, input="What is the code word?"
    )
    assert stack.model.requests("later")[-1]["messages"] == [
        _summary_seen("The code word is slate."),
        _user_message("Say nothing."),
        {"role": "assistant", "content": "Noted, the code word is slate."},
        _user_message("What is the code word?"),
    ]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": "Compact this."}, "model", None),
        ({"model": "nowhere-model", "input": [{"type": "compaction_trigger"}]}, "input[0]", None),
        (
            {"model": "nowhere-model", "input": [{"type": "compaction", "encrypted_content": ""}]},
            "input[0].encrypted_content",
            None,
        ),
        ({"model": "nowhere-model", "input": [{"id": "msg_unknown"}]}, "input[0].id", None),
    ],
)
async def test_compact_refuses_bad_requests(
    stack: Stack, body: dict[str, Any], param: str, code: str | None
) -> None:
    reply = await stack.http.post("/v1/responses/compact", json=body)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == param and error["code"] == code
    assert error["type"] == "invalid_request_error" and error["message"]
    assert stack.model.requests("nowhere-model") == []


@pytest.mark.parametrize("forgery", ["tampered", "foreign"])
async def test_a_tampered_or_foreign_compaction_item_is_a_400(stack: Stack, forgery: str) -> None:
    stack.script("compactor", [{"content": SUMMARY}])
    compacted = await stack.client.responses.compact(model="compactor", input=[USER])
    item = _dumped(compacted.output)[-1]
    token = str(item["encrypted_content"])
    if forgery == "tampered":
        token = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    else:
        token = Sealer.ephemeral().seal(SUMMARY, label="compaction")

    for path in ("/v1/responses", "/v1/responses/compact"):
        reply = await stack.http.post(
            path,
            json={"model": "after", "input": [{**item, "encrypted_content": token}, USER]},
        )
        assert reply.status_code == 400, path
        assert reply.json()["error"]["param"] == "input[0].encrypted_content"
        assert reply.json()["error"]["code"] == "invalid_encrypted_content"
    assert stack.model.requests("after") == []


def _weather_turn(prompt_tokens: int) -> dict[str, Any]:
    return {
        "tool_calls": [{"name": "weather", "arguments": {"city": "Paris"}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 10},
    }


async def test_context_management_compacts_inside_the_loop(stack: Stack) -> None:
    summary = "Asked for the weather in Paris; the weather tool said sunny."
    stack.model.register(
        "looper",
        Script.from_dict(
            {
                "turns": [
                    _weather_turn(500),
                    {"content": summary, "usage": {"prompt_tokens": 60, "completion_tokens": 12}},
                    {
                        "content": "Sunny in Paris.",
                        "usage": {"prompt_tokens": 30, "completion_tokens": 4},
                    },
                ]
            }
        ),
        turns="requests",
    )

    async with stack.http.stream(
        "POST",
        "/v1/responses",
        json={
            "model": "looper",
            "input": "What is the weather in Paris?",
            "stream": True,
            "context_management": [{"type": "compaction", "compact_threshold": 400}],
        },
    ) as reply:
        assert reply.status_code == 200
        events = await read_sse(reply)

    kinds = [event["type"] for event in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.mcp_call_arguments.delta"] * 4,
        "response.mcp_call_arguments.done",
        "response.mcp_call.in_progress",
        "response.mcp_call.completed",
        "response.output_item.done",
        "response.output_item.added",
        "response.compaction.compacting",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    added, compacting, done = events[11:14]
    item_id = added["item"]["id"]
    assert added["output_index"] == compacting["output_index"] == done["output_index"] == 1
    assert added["item"] == {"id": item_id, "type": "compaction", "encrypted_content": ""}
    assert compacting["item_id"] == item_id
    assert done["item"]["id"] == item_id and done["item"]["encrypted_content"].startswith("sl1.")
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["mcp_call", "compaction", "message"]
    assert final["output"][1] == done["item"]
    assert final["usage"]["input_tokens"] == 500 + 60 + 30
    assert final["usage"]["output_tokens"] == 10 + 12 + 4

    first, summarising, after = stack.model.requests("looper")
    assert [m["role"] for m in first["messages"]] == ["user"]
    assert [m["role"] for m in summarising["messages"]] == ["system", "user"]
    assert "[tool result" in summarising["messages"][1]["content"]
    assert after["messages"] == [
        _user_message("What is the weather in Paris?"),
        _summary_seen(summary),
    ]

    store = await open_store_for(stack)
    try:
        steps = await store.load_steps(final["id"])
    finally:
        await store.close()
    assert [(step.kind.value, step.state.value) for step in steps] == [
        ("model_call", "completed"),
        ("tool_call", "completed"),
        ("compaction", "completed"),
        ("model_call", "completed"),
    ]
    assert steps[2].response is not None and steps[2].response["summary"] == summary

    # the next turn continues from the summary, not from the compacted history
    stack.script("next", [{"content": "Still sunny."}])
    await stack.client.responses.create(
        model="next", previous_response_id=final["id"], input="And tomorrow?"
    )
    assert stack.model.requests("next")[-1]["messages"] == [
        _user_message("What is the weather in Paris?"),
        _summary_seen(summary),
        {"role": "assistant", "content": "Sunny in Paris."},
        _user_message("And tomorrow?"),
    ]


async def test_below_the_threshold_nothing_is_compacted(stack: Stack) -> None:
    stack.script("calm", [_weather_turn(100), {"content": "Sunny."}])

    response = await stack.client.responses.create(
        model="calm",
        input="Weather in Paris?",
        extra_body={"context_management": [{"type": "compaction", "compact_threshold": 400}]},
    )

    assert [item.type for item in response.output] == ["mcp_call", "message"]
    assert len(stack.model.requests("calm")) == 2


async def test_a_failed_compaction_fails_the_response(stack: Stack) -> None:
    stack.model.register(
        "broken",
        Script.from_dict(
            {"turns": [_weather_turn(500), {"fault": {"status": 500, "message": "down"}}]}
        ),
        turns="requests",
    )

    response = await stack.client.responses.create(
        model="broken",
        input="Weather in Paris?",
        extra_body={"context_management": [{"type": "compaction", "compact_threshold": 10}]},
    )

    assert response.status == "failed"
    assert response.error is not None and "compaction failed" in response.error.message
    assert len(stack.model.requests("broken")) == 2


@pytest.mark.parametrize(
    ("entry", "param"),
    [
        ({"type": "compaction"}, "context_management[0].compact_threshold"),
        ({"type": "compaction", "compact_threshold": 0}, "context_management[0].compact_threshold"),
        ({"type": "summary", "compact_threshold": 10}, "context_management[0].type"),
    ],
)
async def test_bad_context_management_is_a_400(
    stack: Stack, entry: dict[str, Any], param: str
) -> None:
    reply = await stack.http.post(
        "/v1/responses",
        json={"model": "m", "input": "hi", "context_management": [entry]},
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == param


async def test_compacted_window_starts_a_new_chain_over_websocket(stack: Stack) -> None:
    stack.script("compactor", [{"content": SUMMARY}])
    stack.script("ws", [{"content": "compacted"}])
    compacted = await stack.client.responses.compact(model="compactor", input=[USER, ASSISTANT])

    url = stack.url.replace("http://", "ws://", 1) + "/v1/responses"
    async with connect(url, additional_headers={"Authorization": "Bearer test"}) as socket:
        await socket.send(
            orjson.dumps(
                {
                    "type": "response.create",
                    "model": "ws",
                    "store": False,
                    "input": [*_dumped(compacted.output), _user_message("Continue from here.")],
                }
            ).decode()
        )
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] not in ("response.completed", "response.failed"):
            async with asyncio.timeout(10):
                events.append(orjson.loads(await socket.recv()))

    assert events[-1]["type"] == "response.completed"
    assert stack.model.requests("ws")[-1]["messages"] == [
        _user_message(USER_TEXT),
        _summary_seen(),
        _user_message("Continue from here."),
    ]


async def test_the_agents_sdk_compaction_session_compacts_through_stepline(stack: Stack) -> None:
    set_tracing_disabled(True)
    summary = "The user's favourite colour is teal."
    stack.model.register(
        "gpt-4.1",
        Script.from_dict(
            {
                "turns": [
                    {"content": "Noted: teal."},
                    {"content": summary},
                    {"content": "Teal."},
                    {"content": summary + " They asked again."},
                ]
            }
        ),
        turns="requests",
    )
    agent = Agent(
        name="assistant",
        instructions="Be brief.",
        model=OpenAIResponsesModel(model="gpt-4.1", openai_client=stack.client),
    )
    session = OpenAIResponsesCompactionSession(
        session_id="s1",
        underlying_session=SQLiteSession("s1"),
        client=stack.client,
        model="gpt-4.1",
        should_trigger_compaction=lambda context: True,
    )

    await Runner.run(agent, "My favourite colour is teal.", session=session)
    items = await session.get_items()
    assert [item.get("type") for item in items] == ["message", "compaction"]
    result = await Runner.run(agent, "What is my favourite colour?", session=session)

    assert result.final_output == "Teal."
    _, summarising, after, again = stack.model.requests("gpt-4.1")
    assert again["messages"][0] == {"role": "system", "content": SUMMARY_INSTRUCTIONS}
    assert summarising["messages"][0] == {"role": "system", "content": SUMMARY_INSTRUCTIONS}
    assert after["messages"] == [
        {"role": "system", "content": "Be brief."},
        _user_message("My favourite colour is teal."),
        _summary_seen(summary),
        _user_message("What is my favourite colour?"),
    ]


# -- truncation ---------------------------------------------------------------------------


async def _truncation_stack(exits: AsyncExitStack, tmp_path: Path, **upstream: Any) -> Stack:
    def configure(data: dict[str, Any], tools_url: str) -> None:
        data["upstreams"]["scripted"].update(upstream)

    return await serve_stack(exits, "sqlite", tmp_path, configure=configure)


def _history(turns: int) -> list[EasyInputMessageParam]:
    items: list[EasyInputMessageParam] = []
    for number in range(turns):
        items.append(_user_message(f"question {number} " + "word " * 20))
        items.append({"role": "assistant", "content": f"answer {number} " + "word " * 20})
    return items


async def test_truncation_auto_drops_the_oldest_items_to_fit_the_context_window(
    tmp_path: Path,
) -> None:
    async with AsyncExitStack() as exits:
        stack = await _truncation_stack(exits, tmp_path, context_window=100, tokenize="vllm")
        stack.script("small", [{"content": "ok"}] * 8)
        history = _history(3)  # 22 words a message, 132 in all

        response = await stack.client.responses.create(
            model="small",
            input=[*history, _user_message("last question")],
            truncation="auto",
        )

        assert response.status == "completed" and response.truncation == "auto"
        sent = stack.model.requests("small")[-1]["messages"]
        assert sent == [*history[2:], _user_message("last question")]
        assert stack.model.tokenize_requests()[-1]["messages"] == sent


async def test_truncation_disabled_fails_before_calling_when_the_window_is_configured(
    tmp_path: Path,
) -> None:
    async with AsyncExitStack() as exits:
        stack = await _truncation_stack(exits, tmp_path, context_window=100, tokenize="vllm")
        stack.script("small", [{"content": "ok"}])

        response = await stack.client.responses.create(
            model="small",
            input=[*_history(3), _user_message("last")],
        )

        assert response.status == "failed" and response.error is not None
        assert response.error.code == "context_length_exceeded"  # type: ignore[comparison-overlap]
        assert "truncation: 'auto'" in response.error.message
        assert stack.model.requests("small") == []


async def test_an_upstream_context_overflow_is_context_length_exceeded(stack: Stack) -> None:
    stack.model.context_window = 50
    stack.script("tight", [{"content": "ok"}])

    async with stack.http.stream(
        "POST",
        "/v1/responses",
        json={"model": "tight", "input": "word " * 60, "stream": True, "truncation": "auto"},
    ) as reply:
        events = await read_sse(reply)

    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "error",
        "response.failed",
    ]
    error = events[-1]["response"]["error"]
    assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request"
    assert "maximum context length is 50 tokens" in error["message"]
    assert events[2]["code"] == "context_length_exceeded"


async def test_truncation_auto_is_echoed_and_unknown_values_are_refused(stack: Stack) -> None:
    reply = await stack.http.post(
        "/v1/responses", json={"model": "m", "input": "hi", "truncation": "sometimes"}
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "truncation"
    with pytest.raises(openai.BadRequestError):
        await stack.client.responses.compact(model="")
